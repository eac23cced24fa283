"""Flax NNX decoder for the Qwen2 / Qwen2.5 and LLaMA-3.x families.

RMSNorm, RoPE (default or llama3 scaling), grouped-query attention through `jax.nn.dot_product_attention`
(decode steps over the [B, K, S, H] KV cache: `attention.cached_attention`; over a `CascadeCache`, the n samples of
a prompt sharing its KV: `attention.cascade_attention`), SwiGLU MLP, tied or untied embeddings.
Parameters carry `logical_axes` metadata that `memr1_jax.sharding` maps to mesh axes. Norms, softmax and RoPE run in
float32; matmuls in `cfg.dtype`.

Dimension letters in names: b batch, t query time, s key/cache slot, d model, n query heads, k kv heads,
h head dim, f MLP hidden, v vocab, l layers.
"""

from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from memr1_jax.models.attention import cached_attention, cascade_attention
from memr1_jax.models.config import ModelConfig, RopeScaling
from memr1_jax.models.lora import LoRA


@flax.struct.dataclass
class KVCache:
  """Per-layer key / value cache for left-padded batches.

  Slots are filled left to right; slot order is time order for every row, so causality is `key_slot <= query_slot`.
  """

  # Per layer [B, K, S, H]: (batch, kv head) major, so a decode step's attention is a batched matmul that reads the
  # cache in place (in [B, S, K, H] order XLA copies the whole cache into this order per layer per token).
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  valid_bs: jax.Array  # bool [B, S]: slot holds a real (non-pad) token.
  end: jax.Array  # int32 scalar: slots [0, end) are written.

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache of `max_len` slots for `batch` rows."""
    dtype = dtype or cfg.jnp_dtype
    shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return cls(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
               valid_bs=jnp.zeros((batch, max_len), bool), end=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.valid_bs.shape[1]


@flax.struct.dataclass
class CascadeCache:
  """KV cache of n samples per prompt: the prompts' KV once per prompt, each sample's generated tokens apart.

  Rows are prompt-major (row i * n + j is sample j of prompt i). Every prefix slot precedes every suffix slot.
  """

  prefix: KVCache  # B = prompts rows, P slots: the prefilled prompts (read-only while decoding).
  suffix: KVCache  # B * n rows, M slots: the generated tokens; `suffix.end` counts them.


def positions_from_mask(attention_mask_bt: jax.Array) -> jax.Array:
  """Position ids for a left-padded batch: cumsum(mask) - 1, clipped at 0 (HF convention). [B, T] int32."""
  return jnp.clip(jnp.cumsum(attention_mask_bt.astype(jnp.int32), axis=-1) - 1, 0).astype(jnp.int32)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
  """RoPE inverse frequencies [H/2] (float32), with LLaMA-3.1 scaling when given."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is None:
    return inv_freq
  low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
  high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x_btnh: jax.Array, positions_bt: jax.Array, inv_freq_h: jax.Array) -> jax.Array:
  """Rotates query or key heads by their positions (rotate-half convention of HF Qwen2 / LLaMA)."""
  freqs_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq_h
  cos = jnp.cos(jnp.concatenate([freqs_bth, freqs_bth], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([freqs_bth, freqs_bth], -1))[:, :, None, :]
  x = x_btnh.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_btnh.dtype)


def _param(rngs: nnx.Rngs, shape, axes, dtype, scale: float = 0.02) -> nnx.Param:
  return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
  """y = x / rms(x) * weight, computed in float32 and cast back to the input dtype before scaling."""

  def __init__(self, dim: int, eps: float, dtype):
    self.weight = nnx.Param(jnp.ones((dim,), dtype), logical_axes=("norm",))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * y.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE and an optional KV cache."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_param_dtype
    self.cfg = cfg
    self.q_dnh = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), pd)
    self.k_dkh = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
    self.v_dkh = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
    self.o_nhd = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), pd)
    if cfg.qkv_bias:
      self.q_bias_nh = nnx.Param(jnp.zeros((n, h), pd), logical_axes=("heads", "head_dim"))
      self.k_bias_kh = nnx.Param(jnp.zeros((k, h), pd), logical_axes=("kv_heads", "head_dim"))
      self.v_bias_kh = nnx.Param(jnp.zeros((k, h), pd), logical_axes=("kv_heads", "head_dim"))
    if cfg.lora_rank:
      self.q_lora, self.k_lora = LoRA(self.q_dnh, 1, cfg, rngs=rngs), LoRA(self.k_dkh, 1, cfg, rngs=rngs)
      self.v_lora, self.o_lora = LoRA(self.v_dkh, 1, cfg, rngs=rngs), LoRA(self.o_nhd, 2, cfg, rngs=rngs)

  def __call__(self, x_btd, positions_bt, inv_freq_h, mask_bts, kv_cache=None, cache_end=None, prefix=None):
    """Returns (out_btd, (k_bksh, v_bksh)): the attention output and this layer's updated cache (or None).

    prefix: None, or (k_bksh, v_bksh, valid_bs) of a `CascadeCache`'s shared prompt KV for this layer; kv_cache is
    then the rows' suffix cache and the queries attend to both (`cascade_attention`).
    """
    cfg, dt = self.cfg, self.cfg.jnp_dtype
    q = jnp.einsum("btd,dnh->btnh", x_btd, self.q_dnh[...].astype(dt))
    k = jnp.einsum("btd,dkh->btkh", x_btd, self.k_dkh[...].astype(dt))
    v = jnp.einsum("btd,dkh->btkh", x_btd, self.v_dkh[...].astype(dt))
    if cfg.lora_rank:
      q, k, v = q + self.q_lora(x_btd), k + self.k_lora(x_btd), v + self.v_lora(x_btd)
    if cfg.qkv_bias:
      q = q + self.q_bias_nh[...].astype(dt)
      k = k + self.k_bias_kh[...].astype(dt)
      v = v + self.v_bias_kh[...].astype(dt)
    q = apply_rope(q, positions_bt, inv_freq_h)
    k = apply_rope(k, positions_bt, inv_freq_h)
    new_cache = None
    if kv_cache is not None:
      k_cache, v_cache = kv_cache
      zero = jnp.zeros_like(cache_end)  # Indices of one dtype (also under jax_enable_x64).
      new_cache = tuple(jax.lax.dynamic_update_slice(c, x.transpose(0, 2, 1, 3).astype(c.dtype),
                                                     (zero, zero, cache_end, zero))
                        for c, x in ((k_cache, k), (v_cache, v)))
    if prefix is not None:
      out = cascade_attention(q, prefix[0].astype(dt), prefix[1].astype(dt), prefix[2], new_cache[0].astype(dt),
                              new_cache[1].astype(dt), mask_bts, cfg.head_dim ** -0.5)
    elif new_cache is not None and q.shape[1] == 1:
      out = cached_attention(q, new_cache[0].astype(dt), new_cache[1].astype(dt), mask_bts, cfg.head_dim ** -0.5)
    else:
      if new_cache is not None:  # Prefill into the cache: attend over all of it in [B, S, K, H] order.
        k, v = new_cache[0].transpose(0, 2, 1, 3), new_cache[1].transpose(0, 2, 1, 3)
      # mask_bts None: plain causal attention, which fused kernels (cuDNN flash attention) run without a bias.
      out = jax.nn.dot_product_attention(
          q, k.astype(dt), v.astype(dt), mask=None if mask_bts is None else mask_bts[:, None, :, :],
          is_causal=mask_bts is None, scale=cfg.head_dim ** -0.5, implementation=cfg.attention_impl)
    out_btd = jnp.einsum("btnh,nhd->btd", out, self.o_nhd[...].astype(dt))
    if cfg.lora_rank:
      out_btd = out_btd + self.o_lora(out)
    return out_btd, new_cache


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_param_dtype
    self.dt = cfg.jnp_dtype
    self.gate_df = _param(rngs, (d, f), ("embed", "mlp"), pd)
    self.up_df = _param(rngs, (d, f), ("embed", "mlp"), pd)
    self.down_fd = _param(rngs, (f, d), ("mlp", "embed"), pd)
    self.lora_rank = cfg.lora_rank
    if cfg.lora_rank:
      self.gate_lora, self.up_lora = LoRA(self.gate_df, 1, cfg, rngs=rngs), LoRA(self.up_df, 1, cfg, rngs=rngs)
      self.down_lora = LoRA(self.down_fd, 1, cfg, rngs=rngs)

  def __call__(self, x_btd):
    gate = jnp.einsum("btd,df->btf", x_btd, self.gate_df[...].astype(self.dt))
    up = jnp.einsum("btd,df->btf", x_btd, self.up_df[...].astype(self.dt))
    if self.lora_rank:
      gate, up = gate + self.gate_lora(x_btd), up + self.up_lora(x_btd)
    hidden_btf = jax.nn.silu(gate) * up
    out_btd = jnp.einsum("btf,fd->btd", hidden_btf, self.down_fd[...].astype(self.dt))
    return out_btd + self.down_lora(hidden_btf) if self.lora_rank else out_btd


class DecoderLayer(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_param_dtype)
    self.attn = Attention(cfg, rngs=rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_param_dtype)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_btd, positions_bt, inv_freq_h, mask_bts, kv_cache=None, cache_end=None, prefix=None):
    h, new_cache = self.attn(self.input_norm(x_btd), positions_bt, inv_freq_h, mask_bts, kv_cache, cache_end, prefix)
    x_btd = x_btd + h
    return x_btd + self.mlp(self.post_attn_norm(x_btd)), new_cache


class Decoder(nnx.Module):
  """A causal language model. `model(input_ids_bt, attention_mask_bt)` returns float32 logits [B, T, V]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = cfg.jnp_param_dtype
    self.embed_vd = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    if not cfg.tie_word_embeddings:
      self.lm_head_dv = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd)

  def __call__(self, input_ids_bt, attention_mask_bt=None, positions_bt=None):
    """Teacher-forced forward pass. input_ids_bt [B, T] int, attention_mask_bt [B, T] (1 = token, 0 = left pad).

    Returns logits [B, T, V] float32; pad positions hold finite garbage.
    """
    hidden_btd, _ = self.forward_hidden(input_ids_bt, attention_mask_bt, positions_bt)
    return self.logits(hidden_btd)

  def logits(self, hidden_btd: jax.Array) -> jax.Array:
    """Final-norm hidden states [..., D] -> float32 logits [..., V]."""
    dt = self.cfg.jnp_dtype
    w_dv = self.embed_vd[...].T if self.cfg.tie_word_embeddings else self.lm_head_dv[...]
    return jnp.einsum("...d,dv->...v", hidden_btd.astype(dt), w_dv.astype(dt),
                      preferred_element_type=jnp.float32)

  def forward_hidden(self, input_ids_bt, attention_mask_bt=None, positions_bt=None,
                     cache: KVCache | CascadeCache | None = None, remat: bool | None = None):
    """Runs the layers and the final norm. Returns (hidden_btd, updated cache or None).

    Without a cache the attention is causal over this chunk; with no attention_mask_bt either, it is plain causal
    attention with no mask array (right padding is harmless then: no real token attends to a later position).
    With a cache, the chunk's keys / values are written at slots [cache.end, cache.end + T) and each query attends
    every valid slot at or before its own. With a `CascadeCache` the chunk goes into the suffix and each query also
    attends every valid slot of its prompt's shared prefix.
    remat: rematerialise each layer in the backward pass; None: cfg.remat without a cache (a decode step's loop
    cannot be traced through `nnx.remat`; a training forward through a fresh cache can, and passes cfg.remat).
    """
    cfg = self.cfg
    b, t = input_ids_bt.shape
    prefix = None
    if isinstance(cache, CascadeCache):
      prefix, cache = cache.prefix, cache.suffix
    causal_only = attention_mask_bt is None and cache is None
    if attention_mask_bt is None:
      attention_mask_bt = jnp.ones((b, t), bool)
    attention_mask_bt = attention_mask_bt.astype(bool)
    if positions_bt is None:
      positions_bt = positions_from_mask(attention_mask_bt)
    inv_freq_h = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    x = self.embed_vd[...][input_ids_bt].astype(cfg.jnp_dtype)

    if causal_only:
      mask_bts, cache_end, valid_bs = None, None, None
    elif cache is None:
      causal_tt = jnp.tril(jnp.ones((t, t), bool))
      mask_bts = causal_tt[None] & attention_mask_bt[:, None, :]
      cache_end, valid_bs = None, None
    else:
      cache_end = cache.end
      valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, attention_mask_bt, (jnp.zeros_like(cache_end), cache_end))
      slot_s = jnp.arange(cache.max_len)
      query_slot_t = cache_end + jnp.arange(t)
      mask_bts = (slot_s[None, :] <= query_slot_t[:, None])[None] & valid_bs[:, None, :]

    layer_fn = DecoderLayer.__call__
    if remat is None:
      remat = cfg.remat and cache is None
    if remat:  # Only a gradient needs it.
      layer_fn = nnx.remat(layer_fn, prevent_cse=False)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.k[i], cache.v[i])
      prefix_kv = None if prefix is None else (prefix.k[i], prefix.v[i], prefix.valid_bs)
      x, layer_cache = layer_fn(layer, x, positions_bt, inv_freq_h, mask_bts, kv, cache_end, prefix_kv)
      if layer_cache is not None:
        new_k.append(layer_cache[0])
        new_v.append(layer_cache[1])
    hidden = self.final_norm(x)
    if cache is None:
      return hidden, None
    cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid_bs=valid_bs, end=cache_end + t)
    return hidden, cache if prefix is None else CascadeCache(prefix=prefix, suffix=cache)
