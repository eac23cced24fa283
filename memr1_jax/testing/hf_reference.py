"""Tiny random-init Hugging Face checkpoints and the PyTorch reference forward pass they are tested against.

torch and transformers are test-only dependencies, so they are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from memr1_jax.testing import tiny_tokenizer

# A llama3 rope scaling whose three frequency bands are all populated for head_dim 8 and rope_theta 1e4
# (wavelengths 6.3 < 16 = 64 / 4 high, 62.8 in [16, 64] medium, 628 and 6283 > 64 low).
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}


def _randomize(model, seed: int) -> None:
  """Overwrites every parameter: norms 1 + 0.1 N(0, 1), biases 0.1 N(0, 1), matrices N(0, 1 / fan_in)."""
  import torch  # pylint: disable=g-import-not-at-top

  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      else:
        p.copy_(noise * p.shape[-1] ** -0.5)


def make_hf_checkpoint(path: str, *, family: str = "qwen2", tie: bool = False, hidden: int = 32,
                       intermediate: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                       head_dim: int | None = None, vocab: int = 384, rope_theta: float = 10000.0,
                       rope_scaling: dict[str, Any] | None = None, max_position_embeddings: int = 512,
                       seed: int = 0, max_shard_size: str | int | None = None, tokenizer: str | None = None) -> str:
  """Builds a tiny random-init `Qwen2ForCausalLM` ("qwen2") or `LlamaForCausalLM` ("llama") and `save_pretrained`s it.

  Every weight, bias and norm scale is random (so a mis-mapped tensor changes the logits). `rope_scaling` holds the
  extra `rope_parameters` (e.g. `LLAMA3_SCALING`); `max_shard_size` (e.g. "20KB") writes several shards and an index;
  `tokenizer` ("bpe" or "sentencepiece") also writes a tiny tokenizer and sets the config's special token ids.
  Returns `path`.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  if family not in ("qwen2", "llama"):
    raise ValueError(f"unknown family {family!r} (expected 'qwen2' or 'llama')")
  special: dict[str, int] = {}
  if tokenizer is not None:
    special = tiny_tokenizer.write_tiny_tokenizer(path, tokenizer)
  token_ids: dict[str, Any] = {}
  generation_eos = None
  if tokenizer == "bpe":  # Like Qwen2.5-Instruct: <|endoftext|> in config.json, both stop tokens in generation_config.
    token_ids = dict(bos_token_id=None, eos_token_id=special["<|endoftext|>"], pad_token_id=special["<|endoftext|>"])
    generation_eos = [special["<|im_end|>"], special["<|endoftext|>"]]
  elif tokenizer == "sentencepiece":
    token_ids = dict(bos_token_id=special["<s>"], eos_token_id=special["</s>"], pad_token_id=None)
  rope = {"rope_theta": rope_theta, "rope_type": "default", **(rope_scaling or {})}
  kwargs = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim or hidden // heads,
                max_position_embeddings=max_position_embeddings, rope_parameters=rope, tie_word_embeddings=tie,
                rms_norm_eps=1e-6, **token_ids)
  if family == "qwen2":
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
  model = model.to(torch.float32).eval()
  _randomize(model, seed)
  if generation_eos is not None:
    model.generation_config.eos_token_id = generation_eos
  save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(path, **save_kwargs)
  return path


def left_padded_batch(lengths: Sequence[int], vocab: int, *, seed: int = 0,
                      pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random token ids for rows of the given lengths, left-padded to max(lengths).

  Returns (input_ids_bt int32, attention_mask_bt int32) with 1 on real tokens and `pad_id` / 0 on padding.
  """
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids_bt = np.full((len(lengths), t), pad_id, np.int32)
  mask_bt = np.zeros((len(lengths), t), np.int32)
  for row, n in enumerate(lengths):
    ids_bt[row, t - n:] = rng.integers(0, vocab, n)
    mask_bt[row, t - n:] = 1
  return ids_bt, mask_bt


def load_hf_model(path: str):
  """`transformers.AutoModelForCausalLM` from a local directory, float32, eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


def hf_logits(model_or_path, input_ids_bt: np.ndarray, attention_mask_bt: np.ndarray) -> np.ndarray:
  """Reference logits [B, T, V] (float32 numpy) from a transformers model (or a checkpoint directory).

  Passes the attention mask and HF position ids clip(cumsum(mask) - 1, 0), the left-padding convention of
  `memr1_jax.models.positions_from_mask`. Pad positions hold garbage.
  """
  import torch  # pylint: disable=g-import-not-at-top

  model = load_hf_model(model_or_path) if isinstance(model_or_path, str) else model_or_path
  mask = torch.as_tensor(np.asarray(attention_mask_bt), dtype=torch.long)
  positions = torch.clamp(torch.cumsum(mask, -1) - 1, min=0)
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(np.asarray(input_ids_bt), dtype=torch.long), attention_mask=mask,
                position_ids=positions)
  return out.logits.float().numpy()
