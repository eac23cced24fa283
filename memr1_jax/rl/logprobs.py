"""Per-token log-probs and entropies of response tokens under a decoder, with the vocabulary projection chunked.

A row is a left-padded prompt [P] followed by a right-padded response [T]. Each row is rotated left by its prompt
padding, so every pad sits at the end and the model runs once over [P + T] with plain causal attention (no mask
array: fused attention kernels such as cuDNN's run at full speed). The response token at t is predicted by the
hidden state at rotated position P - 1 + t - pad, and only those T positions are projected to the vocabulary. The
projection, log-softmax and entropy run over time chunks of `chunk_size` in a `lax.scan`; with `remat_chunks` each
chunk's float32 logits [B, chunk, V] are recomputed in the backward pass instead of being stored, so at most one
chunk's logits are alive at once (152k-vocabulary models would otherwise hold [B, T, V]).

`fused=True` runs the same chunks through one `jax.custom_vjp` (`fused_token_logprobs`): the forward keeps only the
per-position log-sum-exp and entropy, and the backward recomputes each chunk's logits once and forms their gradient
in closed form (d logp / dz = onehot - p, d entropy / dz = -p (log p + entropy)), instead of differentiating through
log-softmax, gather and entropy pass by pass; the unembedding gradient is accumulated over chunks in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memr1_jax.models.decoder import CascadeCache, Decoder, KVCache, positions_from_mask


def response_hidden(model: Decoder, prompt_ids_bp: jax.Array, prompt_mask_bp: jax.Array,
                    response_ids_bt: jax.Array, response_mask_bt: jax.Array, seq_len: int | None = None) -> jax.Array:
  """Final-norm hidden states at the positions that predict each response token.

  Args:
    model: the decoder (policy, reference, or a value model's backbone).
    prompt_ids_bp, prompt_mask_bp: [B, P] left-padded prompts (P >= 1) and their mask.
    response_ids_bt, response_mask_bt: [B, T] right-padded responses and their mask.
    seq_len: (static) run the model over only the first `seq_len` rotated positions, when no row's prompt + response
      is longer (the rest is every row's trailing padding, which causal attention makes exact to drop: prompt and
      response buckets are maxima of different rows). None: all P + T.

  Returns:
    hidden_btd [B, T, D] in the model's compute dtype (garbage where the response is padding).
  """
  p, t = prompt_ids_bp.shape[1], response_ids_bt.shape[1]
  if p < 1:
    raise ValueError("logprobs.py: prompts need at least one position (P >= 1) to predict the first response token")
  s = p + t
  ids_bs = jnp.concatenate([prompt_ids_bp, response_ids_bt], axis=1)
  pad_b = p - jnp.sum(prompt_mask_bp.astype(jnp.int32), axis=1)
  ids_bs = jnp.take_along_axis(ids_bs, (jnp.arange(s)[None, :] + pad_b[:, None]) % s, axis=1)
  if seq_len is not None and seq_len < s:
    ids_bs, s = ids_bs[:, :seq_len], seq_len
  hidden_bsd, _ = model.forward_hidden(ids_bs)
  index_bt = jnp.clip(jnp.arange(p - 1, p + t - 1)[None, :] - pad_b[:, None], 0, s - 1)
  return jnp.take_along_axis(hidden_bsd, index_bt[..., None], axis=1)


def shared_prefix_hidden(model: Decoder, prompt_ids_bp: jax.Array, prompt_mask_bp: jax.Array,
                         response_ids_bt: jax.Array, group_size: int) -> jax.Array:
  """`response_hidden` for rows in groups of `group_size` that share one prompt, running each prompt once.

  Rows are prompt-major (row i * n + j is sample j of prompt i, every row of a group holding the same prompt). Each
  group's prompt runs once into a KV cache ([B / n, K, P, H] per layer) and its n responses attend to it and to
  themselves (`attention.cascade_attention`), so a group costs P + n * T positions instead of n * (P + T); the
  gradient of the shared prompt sums its n responses'. The same values as `response_hidden` up to rounding.

  Args:
    prompt_ids_bp, prompt_mask_bp: [B, P] left-padded prompts (only row 0 of each group is read) and their mask.
    response_ids_bt: [B, T] right-padded responses (right padding is harmless: causal attention).
    group_size: n, rows per prompt (B divides by it).

  Returns:
    hidden_btd [B, T, D] in the model's compute dtype (garbage where the response is padding).
  """
  b, t = response_ids_bt.shape
  n, p = group_size, prompt_ids_bp.shape[1]
  if b % n:
    raise ValueError(f"logprobs.py: {b} rows are not whole groups of {n}")
  prompt_mask_gp = prompt_mask_bp[::n].astype(bool)
  remat = model.cfg.remat
  prompt_hidden_gpd, prefix = model.forward_hidden(prompt_ids_bp[::n], prompt_mask_gp,
                                                   positions_from_mask(prompt_mask_gp),
                                                   KVCache.init(model.cfg, b // n, p), remat=remat)
  prompt_len_b = jnp.repeat(jnp.sum(prompt_mask_gp, axis=1, dtype=jnp.int32), n)
  # The last response token predicts nothing: the suffix runs over T - 1 positions.
  suffix = CascadeCache(prefix=prefix, suffix=KVCache.init(model.cfg, b, max(t - 1, 1)))
  ids_bt = response_ids_bt[:, :max(t - 1, 1)]
  response_hidden_btd, _ = model.forward_hidden(ids_bt, jnp.ones(ids_bt.shape, bool),
                                                prompt_len_b[:, None] + jnp.arange(ids_bt.shape[1])[None], suffix,
                                                remat=remat)
  first_b1d = jnp.repeat(prompt_hidden_gpd[:, -1:], n, axis=0)  # The prompt's last token predicts response token 0.
  return jnp.concatenate([first_b1d, response_hidden_btd[:, :t - 1]], axis=1)


def unembedding(model: Decoder) -> jax.Array:
  """The output projection [D, V] in the model's compute dtype (the transposed embedding when tied)."""
  w_dv = model.embed_vd[...].T if model.cfg.tie_word_embeddings else model.lm_head_dv[...]
  return w_dv.astype(model.cfg.jnp_dtype)


@jax.custom_vjp
def vocab_logits(hidden_bcd: jax.Array, w_dv: jax.Array) -> jax.Array:
  """hidden @ w accumulated and returned in float32, for log-probs precise enough for PPO ratios.

  The backward pass casts the float32 cotangent to the inputs' dtype before its two matmuls (as mixed precision
  does for any other layer), so under bfloat16 they run on bf16 tensor cores rather than in float32.
  """
  return jnp.einsum("bcd,dv->bcv", hidden_bcd, w_dv, preferred_element_type=jnp.float32)


def _vocab_logits_fwd(hidden_bcd, w_dv):
  return vocab_logits(hidden_bcd, w_dv), (hidden_bcd, w_dv)


def _vocab_logits_bwd(residuals, dlogits_bcv):
  hidden_bcd, w_dv = residuals
  dlogits_bcv = dlogits_bcv.astype(hidden_bcd.dtype)
  dhidden_bcd = jnp.einsum("bcv,dv->bcd", dlogits_bcv, w_dv, preferred_element_type=jnp.float32)
  dw_dv = jnp.einsum("bcd,bcv->dv", hidden_bcd, dlogits_bcv, preferred_element_type=jnp.float32)
  return dhidden_bcd.astype(hidden_bcd.dtype), dw_dv.astype(w_dv.dtype)


vocab_logits.defvjp(_vocab_logits_fwd, _vocab_logits_bwd)


def _logit_stats(logits_bcv, targets_bc):
  """(log-prob of each target, entropy, log-sum-exp) of float32 logits [B, C, V], each [B, C]."""
  lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
  target_logits_bc = jnp.take_along_axis(logits_bcv, targets_bc[..., None], axis=-1)[..., 0]
  entropy_bc = lse_bc - jnp.sum(jnp.exp(logits_bcv - lse_bc[..., None]) * logits_bcv, axis=-1)
  return target_logits_bc - lse_bc, entropy_bc, lse_bc


def _chunk_logprobs(hidden_bcd, w_dv, targets_bc):
  """Log-prob of each target and the entropy of each position's distribution, both [B, C] float32."""
  return _logit_stats(vocab_logits(hidden_bcd, w_dv), targets_bc)[:2]


@jax.custom_vjp
def _fused_chunks(hidden_nbcd, w_dv, targets_nbc):
  """(logprobs_nbc, entropy_nbc) float32 of N time chunks; see `fused_token_logprobs`."""
  return _fused_chunks_fwd(hidden_nbcd, w_dv, targets_nbc)[0]


def _fused_chunks_fwd(hidden_nbcd, w_dv, targets_nbc):
  def body(_, xs):
    logits_bcv = jnp.einsum("bcd,dv->bcv", xs[0], w_dv, preferred_element_type=jnp.float32)
    return None, _logit_stats(logits_bcv, xs[1])

  _, (logprobs_nbc, entropy_nbc, lse_nbc) = jax.lax.scan(body, None, (hidden_nbcd, targets_nbc))
  return (logprobs_nbc, entropy_nbc), (hidden_nbcd, w_dv, targets_nbc, lse_nbc, entropy_nbc)


def _fused_chunks_bwd(residuals, cotangents):
  hidden_nbcd, w_dv, targets_nbc, lse_nbc, entropy_nbc = residuals
  dlogprobs_nbc, dentropy_nbc = cotangents

  def body(dw_dv, xs):
    hidden_bcd, targets_bc, lse_bc, entropy_bc, dlogp_bc, dent_bc = xs
    logits_bcv = jnp.einsum("bcd,dv->bcv", hidden_bcd, w_dv, preferred_element_type=jnp.float32)
    logp_bcv = logits_bcv - lse_bc[..., None]
    probs_bcv = jnp.exp(logp_bcv)
    onehot_bcv = jnp.arange(logits_bcv.shape[-1])[None, None, :] == targets_bc[..., None]
    dlogits_bcv = (jnp.where(onehot_bcv, dlogp_bc[..., None], 0.0) - probs_bcv * (
        dlogp_bc[..., None] + dent_bc[..., None] * (logp_bcv + entropy_bc[..., None])))
    # Cast to the inputs' dtype before the two matmuls, as `vocab_logits` does (bf16 tensor cores under bf16).
    dlogits_bcv = dlogits_bcv.astype(hidden_bcd.dtype)
    dhidden_bcd = jnp.einsum("bcv,dv->bcd", dlogits_bcv, w_dv, preferred_element_type=jnp.float32)
    dw_dv = dw_dv + jnp.einsum("bcd,bcv->dv", hidden_bcd, dlogits_bcv, preferred_element_type=jnp.float32)
    return dw_dv, dhidden_bcd.astype(hidden_bcd.dtype)

  xs = (hidden_nbcd, targets_nbc, lse_nbc, entropy_nbc, dlogprobs_nbc, dentropy_nbc)
  dw_dv, dhidden_nbcd = jax.lax.scan(body, jnp.zeros(w_dv.shape, jnp.float32), xs)
  return dhidden_nbcd, dw_dv.astype(w_dv.dtype), None


_fused_chunks.defvjp(_fused_chunks_fwd, _fused_chunks_bwd)


def _to_chunks(x_bt, chunk_size: int):
  """[B, T, ...] zero-padded to whole chunks -> [N, B, C, ...] (time chunks leading, for a scan)."""
  b, t = x_bt.shape[:2]
  num_chunks = -(-t // chunk_size)
  pad = [(0, 0), (0, num_chunks * chunk_size - t)] + [(0, 0)] * (x_bt.ndim - 2)
  return jnp.pad(x_bt, pad).reshape(b, num_chunks, chunk_size, *x_bt.shape[2:]).swapaxes(0, 1)


def _from_chunks(x_nbc, t: int):
  """[N, B, C] -> [B, T] (the padding dropped)."""
  n, b, c = x_nbc.shape
  return x_nbc.swapaxes(0, 1).reshape(b, n * c)[:, :t]


def fused_token_logprobs(hidden_btd: jax.Array, w_dv: jax.Array, targets_bt: jax.Array, *,
                         chunk_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """`token_logprobs` as one custom-VJP op: same values, same gradients, fewer passes over the chunk logits.

  Args and returns as in `token_logprobs` (chunk_size None: one chunk). Only [B, T] log-sum-exps and entropies are
  kept for the backward pass, which recomputes each chunk's logits [B, C, V] once.
  """
  t = hidden_btd.shape[1]
  chunk_size = t if chunk_size is None else min(chunk_size, t)
  logprobs_nbc, entropy_nbc = _fused_chunks(_to_chunks(hidden_btd, chunk_size), w_dv,
                                            _to_chunks(targets_bt.astype(jnp.int32), chunk_size))
  return _from_chunks(logprobs_nbc, t), _from_chunks(entropy_nbc, t)


def token_logprobs(hidden_btd: jax.Array, w_dv: jax.Array, targets_bt: jax.Array, *,
                   chunk_size: int | None = None, remat_chunks: bool = True) -> tuple[jax.Array, jax.Array]:
  """log softmax(hidden W)[target] and the entropy of softmax(hidden W), chunked over time.

  Args:
    hidden_btd: [B, T, D] hidden states (compute dtype).
    w_dv: [D, V] output projection (compute dtype); logits are accumulated in float32.
    targets_bt: [B, T] int token ids (any id in [0, V) at padding).
    chunk_size: time steps per chunk (None or >= T: one chunk, no scan).
    remat_chunks: recompute each chunk's logits in the backward pass (memory) instead of storing them (speed).

  Returns:
    (logprobs_bt, entropy_bt), both [B, T] float32.
  """
  t = hidden_btd.shape[1]
  targets_bt = targets_bt.astype(jnp.int32)
  if chunk_size is None or chunk_size >= t:
    return _chunk_logprobs(hidden_btd, w_dv, targets_bt)
  chunk_fn = jax.checkpoint(_chunk_logprobs, prevent_cse=False) if remat_chunks else _chunk_logprobs

  def body(_, xs):
    return None, chunk_fn(xs[0], w_dv, xs[1])

  _, (logprobs_nbc, entropy_nbc) = jax.lax.scan(body, None, (_to_chunks(hidden_btd, chunk_size),
                                                             _to_chunks(targets_bt, chunk_size)))
  return _from_chunks(logprobs_nbc, t), _from_chunks(entropy_nbc, t)


def response_logprobs(model: Decoder, prompt_ids_bp: jax.Array, prompt_mask_bp: jax.Array,
                      response_ids_bt: jax.Array, response_mask_bt: jax.Array, *, chunk_size: int | None = None,
                      remat_chunks: bool = True, seq_len: int | None = None,
                      fused: bool = False, group_size: int = 1) -> tuple[jax.Array, jax.Array]:
  """Log-probs [B, T] of the response tokens given prompt + previous response tokens, and entropies [B, T].

  Arguments as in `response_hidden` and `token_logprobs`; `fused`: use `fused_token_logprobs` (remat_chunks is then
  moot: the fused backward always recomputes); `group_size` > 1: rows come in prompt-major groups of that many
  sharing one prompt, which runs once per group (`shared_prefix_hidden`; seq_len is then unused). Values at padded
  response positions are finite garbage.
  """
  if group_size > 1:
    hidden_btd = shared_prefix_hidden(model, prompt_ids_bp, prompt_mask_bp, response_ids_bt, group_size)
  else:
    hidden_btd = response_hidden(model, prompt_ids_bp, prompt_mask_bp, response_ids_bt, response_mask_bt, seq_len)
  if fused:
    return fused_token_logprobs(hidden_btd, unembedding(model), response_ids_bt, chunk_size=chunk_size)
  return token_logprobs(hidden_btd, unembedding(model), response_ids_bt, chunk_size=chunk_size,
                        remat_chunks=remat_chunks)
