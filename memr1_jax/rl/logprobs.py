"""Per-token log-probs and entropies of response tokens under a decoder, with the vocabulary projection chunked.

A row is a left-padded prompt [P] followed by a right-padded response [T]. Each row is rotated left by its prompt
padding, so every pad sits at the end and the model runs once over [P + T] with plain causal attention (no mask
array: fused attention kernels such as cuDNN's run at full speed). The response token at t is predicted by the
hidden state at rotated position P - 1 + t - pad, and only those T positions are projected to the vocabulary. The projection, log-softmax and entropy run over time chunks of `chunk_size` in a `lax.scan`; with
`remat_chunks` each chunk's float32 logits [B, chunk, V] are recomputed in the backward pass instead of being
stored, so at most one chunk's logits are alive at once (152k-vocabulary models would otherwise hold [B, T, V]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memr1_jax.models.decoder import Decoder


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


def _chunk_logprobs(hidden_bcd, w_dv, targets_bc):
  """Log-prob of each target and the entropy of each position's distribution, both [B, C] float32."""
  logits_bcv = vocab_logits(hidden_bcd, w_dv)
  lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
  target_logits_bc = jnp.take_along_axis(logits_bcv, targets_bc[..., None], axis=-1)[..., 0]
  probs_bcv = jnp.exp(logits_bcv - lse_bc[..., None])
  entropy_bc = lse_bc - jnp.sum(probs_bcv * logits_bcv, axis=-1)
  return target_logits_bc - lse_bc, entropy_bc


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
  b, t, d = hidden_btd.shape
  targets_bt = targets_bt.astype(jnp.int32)
  if chunk_size is None or chunk_size >= t:
    return _chunk_logprobs(hidden_btd, w_dv, targets_bt)
  num_chunks = -(-t // chunk_size)
  pad = num_chunks * chunk_size - t
  hidden_nbcd = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0))).reshape(b, num_chunks, chunk_size, d).swapaxes(0, 1)
  targets_nbc = jnp.pad(targets_bt, ((0, 0), (0, pad))).reshape(b, num_chunks, chunk_size).swapaxes(0, 1)
  chunk_fn = jax.checkpoint(_chunk_logprobs, prevent_cse=False) if remat_chunks else _chunk_logprobs

  def body(_, xs):
    return None, chunk_fn(xs[0], w_dv, xs[1])

  _, (logprobs_nbc, entropy_nbc) = jax.lax.scan(body, None, (hidden_nbcd, targets_nbc))
  unchunk = lambda x_nbc: x_nbc.swapaxes(0, 1).reshape(b, num_chunks * chunk_size)[:, :t]  # noqa: E731
  return unchunk(logprobs_nbc), unchunk(entropy_nbc)


def response_logprobs(model: Decoder, prompt_ids_bp: jax.Array, prompt_mask_bp: jax.Array,
                      response_ids_bt: jax.Array, response_mask_bt: jax.Array, *, chunk_size: int | None = None,
                      remat_chunks: bool = True, seq_len: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Log-probs [B, T] of the response tokens given prompt + previous response tokens, and entropies [B, T].

  Arguments as in `response_hidden` and `token_logprobs`; values at padded response positions are finite garbage.
  """
  hidden_btd = response_hidden(model, prompt_ids_bp, prompt_mask_bp, response_ids_bt, response_mask_bt, seq_len)
  return token_logprobs(hidden_btd, unembedding(model), response_ids_bt, chunk_size=chunk_size,
                        remat_chunks=remat_chunks)
