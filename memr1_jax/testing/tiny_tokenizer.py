"""A tiny tokenizer trained offline in milliseconds, saved the way real checkpoints ship theirs.

`kind="bpe"`: a byte-level BPE `tokenizer.json` with Qwen's special tokens and a ChatML chat template (like Qwen2.5).
`kind="sentencepiece"`: a sentencepiece `tokenizer.model` with `LlamaTokenizer` and no chat template (like LLaMA-2).
Both cover every byte, so any text round-trips through encode / decode.
"""

from __future__ import annotations

import io
import json
import os

# Qwen2.5-style ChatML (without Qwen's tool-calling branches).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Training text for the tiny vocabularies.
CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Alice moved to Paris in 2021 and adopted a cat named Milo.",
    "Bob likes hiking, jazz and strong coffee; he visited Alice last May.",
    "What did Alice adopt? **Answer:** a cat",
    "Memories are added, updated, deleted, or left unchanged.",
)

BPE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _write_bpe(path: str, vocab_size: int) -> dict[str, int]:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(CORPUS, trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 chat_template=CHATML_TEMPLATE)
  fast.save_pretrained(path)
  return {t: tok.token_to_id(t) for t in BPE_SPECIAL_TOKENS}


def _write_sentencepiece(path: str, vocab_size: int) -> dict[str, int]:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_writer=proto, vocab_size=vocab_size, model_type="bpe",
      byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      hard_vocab_limit=False, minloglevel=2)
  with open(os.path.join(path, "tokenizer.model"), "wb") as f:
    f.write(proto.getvalue())
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "add_bos_token": True, "add_eos_token": False}, f, indent=2)
  return {"<unk>": 0, "<s>": 1, "</s>": 2}


def write_tiny_tokenizer(path: str, kind: str = "bpe", vocab_size: int = 320) -> dict[str, int]:
  """Trains a tiny tokenizer of about `vocab_size` entries and saves it into directory `path` (created if needed).

  kind: "bpe" (tokenizer.json + ChatML template) or "sentencepiece" (tokenizer.model, no template).
  Returns the special tokens and their ids.
  """
  os.makedirs(path, exist_ok=True)
  if kind == "bpe":
    return _write_bpe(path, vocab_size)
  if kind == "sentencepiece":
    return _write_sentencepiece(path, vocab_size)
  raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'bpe' or 'sentencepiece')")
