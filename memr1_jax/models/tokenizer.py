"""The checkpoint's own tokenizer and chat template, loaded offline from a Hugging Face checkpoint directory.

`tokenizer.json` (Qwen2.5, LLaMA-3) and sentencepiece `tokenizer.model` (older LLaMA) are both read through
`transformers.AutoTokenizer` with `local_files_only=True`; no remote code is run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from memr1_jax.models.config import CheckpointError

# Used when the checkpoint has no chat template: "<bos>User: ...\n\nAssistant: ...\n\nAssistant:" (the role
# capitalised, a blank line after each message, the BOS token first when the tokenizer has one).
FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def _ids(value) -> tuple[int, ...]:
  if value is None:
    return ()
  return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def _read_json(path: str, fname: str) -> dict:
  full = os.path.join(path, fname)
  if not os.path.exists(full):
    return {}
  try:
    with open(full) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{full}: not valid JSON ({e})") from None


class Tokenizer:
  """A checkpoint's tokenizer: text <-> token ids, chat template, stop and pad ids."""

  def __init__(self, hf_tokenizer, eos_token_ids: Sequence[int], pad_token_id: int):
    self.hf_tokenizer = hf_tokenizer
    self._eos_token_ids = tuple(eos_token_ids)
    self._pad_token_id = int(pad_token_id)

  @classmethod
  def from_pretrained(cls, path: str) -> Tokenizer:
    """Loads the tokenizer of checkpoint directory `path` offline.

    EOS ids are the union, in this order, of generation_config.json's `eos_token_id`, config.json's and the
    tokenizer's own EOS token (a chat model stops on any of them). The pad id is the tokenizer's pad token, else
    generation_config's or config's `pad_token_id`, else the first EOS id, else 0 (pad positions are masked, so any
    id is safe). Raises CheckpointError naming the directory or file when no tokenizer can be loaded.
    """
    import transformers  # pylint: disable=g-import-not-at-top

    if not os.path.isdir(path):
      raise CheckpointError(f"{path}: tokenizer directory not found")
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
      raise CheckpointError(f"{path}: no tokenizer file (expected one of {TOKENIZER_FILES})")
    if "auto_map" in _read_json(path, "tokenizer_config.json"):
      raise CheckpointError(f"{os.path.join(path, 'tokenizer_config.json')}: the tokenizer asks for custom code "
                            "(auto_map); remote / custom code is never run (trust_remote_code=False)")
    try:
      if os.path.exists(os.path.join(path, "tokenizer.json")):
        # The checkpoint's own tokenizer.json, exactly: AutoTokenizer would pick a class from config.json's
        # model_type (e.g. Qwen2Tokenizer), which may rebuild the pre-tokenizer differently.
        hf_tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
      else:
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                                  trust_remote_code=False)
    except Exception as e:  # pylint: disable=broad-except: `tokenizers` raises a bare Exception on a bad file.
      raise CheckpointError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    generation = _read_json(path, "generation_config.json")
    config = _read_json(path, "config.json")
    eos: list[int] = []
    for i in _ids(generation.get("eos_token_id")) + _ids(config.get("eos_token_id")) + _ids(
        hf_tokenizer.eos_token_id):
      if i not in eos:
        eos.append(i)
    pad_candidates = _ids(hf_tokenizer.pad_token_id) + _ids(generation.get("pad_token_id")) + _ids(
        config.get("pad_token_id")) + tuple(eos) + (0,)
    return cls(hf_tokenizer, eos, pad_candidates[0])

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    """Token ids that end a generation (may be empty for a bare tokenizer)."""
    return self._eos_token_ids

  @property
  def pad_token_id(self) -> int:
    """The id written at padded positions."""
    return self._pad_token_id

  @property
  def vocab_size(self) -> int:
    """Number of token ids the tokenizer can produce (added tokens included); at most the model's vocab."""
    return len(self.hf_tokenizer)

  @property
  def chat_template(self) -> str:
    """The checkpoint's chat template (Jinja), or FALLBACK_CHAT_TEMPLATE when it has none."""
    return self.hf_tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`; special tokens (e.g. LLaMA's BOS) only when `add_special_tokens`."""
    return list(self.hf_tokenizer.encode(text, add_special_tokens=add_special_tokens))

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids` (a list or a 1-D array)."""
    return self.hf_tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt text of `messages` ([{"role": ..., "content": ...}]) under the checkpoint's chat template.

    With `add_generation_prompt` the text ends where the assistant's reply begins.
    """
    return self.hf_tokenizer.apply_chat_template(
        list(messages), chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt)

  def encode_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `apply_chat_template(messages)`; the template itself supplies any BOS / special tokens."""
    return self.encode(self.apply_chat_template(messages, add_generation_prompt))
