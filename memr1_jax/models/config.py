"""Decoder configuration: one dataclass for the Qwen2 / Qwen2.5 and LLaMA-3.x families, presets, HF parsing."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from memr1_jax import errors

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "llama3")


class CheckpointError(errors.Error, ValueError):
  """A checkpoint directory is missing a file, has an unsupported config field or a tensor of the wrong shape."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """LLaMA-3.1 style frequency-dependent RoPE scaling (`rope_type: llama3`)."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only transformer (RMSNorm, RoPE, GQA, SwiGLU)."""

  model_type: str  # "qwen2" or "llama": selects the HF weight names and defaults.
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2 has biases on q/k/v projections; LLaMA has none.
  max_position_embeddings: int = 32768
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  param_dtype: str = "float32"  # Storage dtype of the parameters ("bfloat16" on accelerators).
  dtype: str = "float32"  # Compute dtype of matmuls; norms, softmax and RoPE always run in float32.
  attention_impl: str | None = None  # jax.nn.dot_product_attention implementation: None (auto), "xla", "cudnn".
  remat: bool = False  # Rematerialise each layer in the backward pass (training memory).
  lora_rank: int = 0  # LoRA adapters of this rank on the attention and MLP projections (0: none).
  lora_alpha: float = 16.0  # LoRA scaling numerator: delta W = lora_alpha / lora_rank * A B.

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self) -> int:
    """Number of parameters (embeddings counted once when tied)."""
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.qkv_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    layer = attn + 3 * d * f + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
    return self.num_layers * layer + emb + d

  def replace(self, **kwargs) -> ModelConfig:
    return dataclasses.replace(self, **kwargs)


def _qwen(vocab, d, f, layers, heads, kv, tie, max_pos=32768, theta=1000000.0) -> ModelConfig:
  return ModelConfig(
      model_type="qwen2", vocab_size=vocab, hidden_size=d, intermediate_size=f, num_layers=layers,
      num_heads=heads, num_kv_heads=kv, head_dim=d // heads, rope_theta=theta, tie_word_embeddings=tie,
      qkv_bias=True, max_position_embeddings=max_pos, eos_token_ids=(151645, 151643), pad_token_id=151643,
      bos_token_id=151643)


# Architecture presets (shapes of the public checkpoints; weights come from `load_pretrained`).
PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-0.5b": _qwen(151936, 896, 4864, 24, 14, 2, True),
    "qwen2.5-1.5b": _qwen(151936, 1536, 8960, 28, 12, 2, True),
    "qwen2.5-3b": _qwen(151936, 2048, 11008, 36, 16, 2, True),
    "qwen2.5-7b": _qwen(152064, 3584, 18944, 28, 28, 4, False),
    "qwen2.5-14b": _qwen(152064, 5120, 13824, 48, 40, 8, False),
    "llama3.1-8b": ModelConfig(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5, max_position_embeddings=131072,
        bos_token_id=128000, eos_token_ids=(128009, 128001, 128008), pad_token_id=128004),
    # A tiny shape for tests and the CPU demo.
    "tiny": ModelConfig(
        model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=2048),
    # The CPU demo's base model: "tiny" twice as wide (copying from a 250-token prompt is learned much faster).
    "small": ModelConfig(
        model_type="qwen2", vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=32, qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=2048),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  """Returns the preset `name` with `overrides` applied; raises KeyError listing the known presets."""
  if name not in PRESETS:
    raise KeyError(f"Unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def _as_tuple(x) -> tuple[int, ...]:
  if x is None:
    return ()
  return tuple(x) if isinstance(x, (list, tuple)) else (int(x),)


def config_from_hf(hf: dict[str, Any], *, source: str = "config.json", **overrides) -> ModelConfig:
  """Builds a `ModelConfig` from a Hugging Face `config.json` dict (transformers 4.x or 5.x layout).

  Raises CheckpointError naming `source` and the field for anything this model does not implement.
  """

  def need(key):
    if key not in hf:
      raise CheckpointError(f"{source}: required field {key!r} is missing")
    return hf[key]

  model_type = need("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(f"{source}: model_type={model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise CheckpointError(f"{source}: hidden_act={act!r} is not supported (only 'silu')")
  if hf.get("use_sliding_window"):
    raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
  if hf.get("mlp_bias"):
    raise CheckpointError(f"{source}: mlp_bias=true is not supported")
  if model_type == "llama" and hf.get("attention_bias"):
    raise CheckpointError(f"{source}: attention_bias=true is not supported for llama")
  if hf.get("pretraining_tp", 1) not in (1, None):
    raise CheckpointError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported")
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    raise CheckpointError(f"{source}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported")

  # transformers 5 writes `rope_parameters` (with rope_theta inside); 4.x writes `rope_theta` + `rope_scaling`.
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise CheckpointError(f"{source}: rope_type={rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")
  scaling = None
  if rope_type == "llama3":
    try:
      scaling = RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                            int(rope["original_max_position_embeddings"]))
    except KeyError as e:
      raise CheckpointError(f"{source}: llama3 rope scaling is missing field {e.args[0]!r}") from None

  heads = int(need("num_attention_heads"))
  hidden = int(need("hidden_size"))
  eos = _as_tuple(hf.get("eos_token_id"))
  cfg = ModelConfig(
      model_type=model_type,
      vocab_size=int(need("vocab_size")),
      hidden_size=hidden,
      intermediate_size=int(need("intermediate_size")),
      num_layers=int(need("num_hidden_layers")),
      num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or hidden // heads),
      rope_theta=theta,
      rope_scaling=scaling,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=model_type == "qwen2",
      max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=eos,
      pad_token_id=hf.get("pad_token_id"),
  )
  if cfg.num_heads % cfg.num_kv_heads:
    raise CheckpointError(f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads")
  return cfg.replace(**overrides)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The Hugging Face `config.json` dict for `cfg` (transformers 5 layout, readable by 4.x too)."""
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  if cfg.rope_scaling is not None:
    rope.update(rope_type="llama3", **dataclasses.asdict(cfg.rope_scaling))
  hf = {
      "architectures": ["Qwen2ForCausalLM" if cfg.model_type == "qwen2" else "LlamaForCausalLM"],
      "model_type": cfg.model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "rms_norm_eps": cfg.rms_norm_eps,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "rope_parameters": rope,
      "rope_theta": cfg.rope_theta,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) != 1 else cfg.eos_token_ids[0],
      "pad_token_id": cfg.pad_token_id,
      "torch_dtype": cfg.param_dtype,
  }
  if cfg.rope_scaling is not None:
    hf["rope_scaling"] = dict(rope)
  if cfg.model_type == "llama":
    hf.update(attention_bias=False, mlp_bias=False)
  return hf


def read_hf_config(path: str, **overrides) -> ModelConfig:
  """Reads `<path>/config.json` into a ModelConfig (CheckpointError when missing or malformed)."""
  fname = os.path.join(path, "config.json")
  if not os.path.exists(fname):
    raise CheckpointError(f"{fname}: file not found (is {path!r} a Hugging Face checkpoint directory?)")
  try:
    with open(fname) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{fname}: not valid JSON ({e})") from None
  return config_from_hf(hf, source=fname, **overrides)
