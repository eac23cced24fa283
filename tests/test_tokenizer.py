"""Tests for memr1_jax.models.tokenizer on tiny tokenizers trained offline: a byte-level BPE `tokenizer.json` with a
Qwen-style ChatML template, and a sentencepiece `tokenizer.model` (LlamaTokenizer) without a template.

References: the `tokenizers` / `sentencepiece` libraries read the same files directly, and transformers'
own `apply_chat_template` on the same directory.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import sentencepiece
import tokenizers
import transformers

from memr1_jax.models import CheckpointError
from memr1_jax.models.tokenizer import FALLBACK_CHAT_TEMPLATE, Tokenizer
from memr1_jax.testing import make_hf_checkpoint, write_tiny_tokenizer

TEXTS = (
    "Alice adopted a cat named Milo.",
    "Ünïcode ☃, emoji 🙂, tabs\tand   spaces\nnew lines.",
    "",
)
MESSAGES = (
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What did Alice adopt?"},
    {"role": "assistant", "content": "**Answer:** a cat"},
    {"role": "user", "content": "And Bob?"},
)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  """A Qwen-style checkpoint directory: tiny model, BPE tokenizer.json, ChatML template, generation_config."""
  return make_hf_checkpoint(str(tmp_path_factory.mktemp("tok") / "bpe"), family="qwen2", tokenizer="bpe")


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
  """An older-LLaMA-style checkpoint directory: tiny model and a sentencepiece tokenizer.model, no template."""
  return make_hf_checkpoint(str(tmp_path_factory.mktemp("tok") / "sp"), family="llama", tokenizer="sentencepiece")


@pytest.fixture(scope="module")
def bpe(bpe_dir):
  return Tokenizer.from_pretrained(bpe_dir)


@pytest.fixture(scope="module")
def sp(sp_dir):
  return Tokenizer.from_pretrained(sp_dir)


def test_bpe_encode_matches_tokenizers_library(bpe, bpe_dir):
  """encode() gives the ids of the `tokenizers` library reading tokenizer.json directly."""
  raw = tokenizers.Tokenizer.from_file(os.path.join(bpe_dir, "tokenizer.json"))
  for text in TEXTS:
    assert bpe.encode(text) == raw.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_round_trip(text, bpe):
  """decode(encode(text)) == text for any text, including unicode and whitespace runs."""
  assert bpe.decode(bpe.encode(text)) == text


def test_decode_skips_special_tokens_on_request(bpe):
  """decode drops <|im_end|> by default and keeps it with skip_special_tokens=False; numpy ids work."""
  ids = np.array(bpe.encode("a cat") + [bpe.eos_token_ids[0]])
  assert bpe.decode(ids) == "a cat"
  assert bpe.decode(ids, skip_special_tokens=False) == "a cat<|im_end|>"


def test_chat_template_matches_transformers(bpe, bpe_dir):
  """apply_chat_template equals transformers' apply_chat_template on the same directory, and the ChatML text."""
  hf = transformers.AutoTokenizer.from_pretrained(bpe_dir, local_files_only=True)
  for messages in (MESSAGES, MESSAGES[1:2]):  # with and without a system message
    for add_prompt in (True, False):
      assert bpe.apply_chat_template(messages, add_prompt) == hf.apply_chat_template(
          list(messages), tokenize=False, add_generation_prompt=add_prompt)
  expected = ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat did Alice adopt?<|im_end|>\n"
              "<|im_start|>assistant\n**Answer:** a cat<|im_end|>\n<|im_start|>user\nAnd Bob?<|im_end|>\n"
              "<|im_start|>assistant\n")
  assert bpe.apply_chat_template(MESSAGES) == expected


def test_encode_chat_matches_transformers(bpe, bpe_dir):
  """encode_chat equals transformers' tokenized apply_chat_template, with each ChatML marker one special token."""
  hf = transformers.AutoTokenizer.from_pretrained(bpe_dir, local_files_only=True)
  ids = bpe.encode_chat(MESSAGES)
  assert ids == list(hf.apply_chat_template(list(MESSAGES), tokenize=True, add_generation_prompt=True,
                                            return_dict=False))
  assert ids.count(hf.convert_tokens_to_ids("<|im_start|>")) == 5
  assert ids.count(hf.convert_tokens_to_ids("<|im_end|>")) == 4


def test_bpe_stop_and_pad_ids(bpe):
  """EOS ids come from generation_config.json (<|im_end|>, <|endoftext|>); pad is the tokenizer's <|endoftext|>."""
  im_end, endoftext = bpe.hf_tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
  assert bpe.eos_token_ids == (im_end, endoftext)
  assert bpe.pad_token_id == endoftext


def test_tokenizer_fits_the_model_vocab(bpe, bpe_dir):
  """Every id the tokenizer can produce is inside the checkpoint's embedding table."""
  from memr1_jax.models import read_hf_config  # pylint: disable=g-import-not-at-top
  assert bpe.vocab_size <= read_hf_config(bpe_dir).vocab_size


def test_sentencepiece_encode_matches_sentencepiece_library(sp, sp_dir):
  """On plain single-spaced text, encode() gives sentencepiece's own ids; BOS only with add_special_tokens."""
  raw = sentencepiece.SentencePieceProcessor(model_file=os.path.join(sp_dir, "tokenizer.model"))
  text = TEXTS[0]
  assert sp.encode(text) == raw.encode(text)
  assert sp.encode(text, add_special_tokens=True) == [raw.bos_id()] + raw.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_round_trip(text, sp):
  """decode(encode(text)) == text with the sentencepiece tokenizer (byte fallback covers every character)."""
  assert sp.decode(sp.encode(text)) == text


def test_fallback_chat_template_without_checkpoint_template(sp):
  """Without a checkpoint template the documented fallback is used: BOS, 'Role: content' blocks, 'Assistant:'."""
  assert sp.chat_template == FALLBACK_CHAT_TEMPLATE
  text = sp.apply_chat_template(MESSAGES[:2])
  assert text == "<s>System: Answer briefly.\n\nUser: What did Alice adopt?\n\nAssistant:"
  assert sp.encode_chat(MESSAGES[:2])[0] == 1 and sp.encode_chat(MESSAGES[:2]).count(1) == 1


def test_sentencepiece_stop_and_pad_ids(sp):
  """LLaMA-style ids: EOS </s> (2) from the configs; no pad token anywhere, so pad falls back to EOS."""
  assert sp.eos_token_ids == (2,)
  assert sp.pad_token_id == 2


def test_bare_tokenizer_directory(tmp_path):
  """A directory with only tokenizer files (no config.json) takes EOS and pad from the tokenizer itself."""
  special = write_tiny_tokenizer(str(tmp_path))
  tok = Tokenizer.from_pretrained(str(tmp_path))
  assert tok.eos_token_ids == (special["<|im_end|>"],)
  assert tok.pad_token_id == special["<|endoftext|>"]


def test_missing_tokenizer_is_named(tmp_path):
  """A directory without tokenizer files, or no directory at all, raises CheckpointError naming the path."""
  with pytest.raises(CheckpointError, match="no tokenizer file") as e:
    Tokenizer.from_pretrained(str(tmp_path))
  assert str(tmp_path) in str(e.value)
  with pytest.raises(CheckpointError, match="not found"):
    Tokenizer.from_pretrained(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("corruption", ["not json", "vocab not a map"])
def test_corrupt_tokenizer_json_is_named(corruption, tmp_path):
  """A malformed tokenizer.json raises CheckpointError naming the directory, not a library exception."""
  write_tiny_tokenizer(str(tmp_path))
  fname = os.path.join(tmp_path, "tokenizer.json")
  with open(fname) as f:
    spec = json.load(f)
  spec["model"]["vocab"] = 3
  with open(fname, "w") as f:
    f.write("{not json" if corruption == "not json" else json.dumps(spec))
  with pytest.raises(CheckpointError) as e:
    Tokenizer.from_pretrained(str(tmp_path))
  assert str(tmp_path) in str(e.value)
