"""Decode-step attention over KV caches: one [B, K, S, H] cache, or a shared prompt prefix plus per-sample suffixes.

`cached_attention`: a few query tokens of each row over that row's cache. `cascade_attention`: the n samples of a
prompt (rows prompt-major, row i * n + j is sample j of prompt i) attend to the prompt's KV, stored once per prompt
([B, K, P, H]), and to their own generated tokens ([B * n, K, M, H]); each part gives a softmax-normalised output and
its log-sum-exp, and the two are merged by their log-sum-exps (shared-prefix / cascade attention, as in FlashInfer).
The prompt part is one matmul per (prompt, kv head) over all n * G query heads, so every decode step reads a prompt's
KV once instead of n times. `decode_kv_bytes` gives the bytes either path reads per decode step.

Dimension letters: b prompts (or rows), r rows (b * n), t query time, s key slot, k kv heads, g query heads per kv
head, n query heads, h head dim, q grouped queries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = jnp.finfo(jnp.float32).min


def cached_attention(q_btnh: jax.Array, k_bksh: jax.Array, v_bksh: jax.Array, mask_bts: jax.Array,
                     scale: float) -> jax.Array:
  """Grouped-query attention of a few query tokens (a decode step) over a [B, K, S, H] KV cache.

  q_btnh: queries (N = K * G heads); mask_bts: bool, True where a query may attend. Returns out_btnh, what
  `jax.nn.dot_product_attention` gives on the same mask, as two matmuls batched over (b, k) that read the cache in
  place. Logits and softmax in float32; a row with no allowed slot gets uniform weights (finite; left padding).
  """
  b, t, n, h = q_btnh.shape
  kv = k_bksh.shape[1]
  q_bkgth = q_btnh.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)
  logits_bkgts = jnp.einsum("bkgth,bksh->bkgts", q_bkgth, k_bksh, preferred_element_type=jnp.float32) * scale
  logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, _NEG)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bksh.dtype)
  out_bkgth = jnp.einsum("bkgts,bksh->bkgth", probs_bkgts, v_bksh)
  return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _attention_part(q_bkqh: jax.Array, k_bksh: jax.Array, v_bksh: jax.Array, mask_bqs: jax.Array,
                    scale: float) -> tuple[jax.Array, jax.Array]:
  """Softmax attention of Q grouped queries per (b, k) over S slots: (out_bkqh float32, lse_bkq float32).

  mask_bqs: bool [B, Q or 1, S]. A query with no allowed slot gets lse = float32 min + log(S) (its weight in a merge
  underflows to 0) and the uniform average of the slots (finite).
  """
  logits_bkqs = jnp.einsum("bkqh,bksh->bkqs", q_bkqh, k_bksh, preferred_element_type=jnp.float32) * scale
  logits_bkqs = jnp.where(mask_bqs[:, None], logits_bkqs, _NEG)
  max_bkq = jnp.max(logits_bkqs, axis=-1)
  weights_bkqs = jnp.exp(logits_bkqs - max_bkq[..., None])
  sum_bkq = jnp.sum(weights_bkqs, axis=-1)
  out_bkqh = jnp.einsum("bkqs,bksh->bkqh", weights_bkqs.astype(v_bksh.dtype), v_bksh,
                        preferred_element_type=jnp.float32)
  return out_bkqh / sum_bkq[..., None], max_bkq + jnp.log(sum_bkq)


def merge_attention(out_a: jax.Array, lse_a: jax.Array, out_b: jax.Array, lse_b: jax.Array) -> jax.Array:
  """Attention over the union of two disjoint slot sets from each part's output [..., H] and log-sum-exp [...]."""
  lse = jnp.logaddexp(lse_a, lse_b)
  return jnp.exp(lse_a - lse)[..., None] * out_a + jnp.exp(lse_b - lse)[..., None] * out_b


def cascade_attention(q_rtnh: jax.Array, prefix_k_bksh: jax.Array, prefix_v_bksh: jax.Array,
                      prefix_valid_bs: jax.Array, k_rksh: jax.Array, v_rksh: jax.Array, mask_rts: jax.Array,
                      scale: float) -> jax.Array:
  """Grouped-query attention of R = B * n rows over their prompt's shared KV and their own suffix KV.

  Args:
    q_rtnh: [R, T, N, H] queries, rows prompt-major (row i * n + j belongs to prompt i).
    prefix_k_bksh, prefix_v_bksh: [B, K, P, H] the prompts' KV, once per prompt; every prefix slot precedes every
      query, so only prefix_valid_bs (bool [B, P], False at left padding) masks it.
    k_rksh, v_rksh: [R, K, M, H] each row's generated-token KV; mask_rts: bool [R, T, M] (validity and causality).
    scale: logit scale.
  Returns:
    out_rtnh [R, T, N, H] in v's dtype: softmax attention over the prompt's slots and the row's suffix slots together.
  """
  r, t, n_heads, h = q_rtnh.shape
  b, kv = prefix_k_bksh.shape[:2]
  n, g = r // b, n_heads // kv
  # Prompt part: the n samples' G heads of one kv head are one block of n * T * G queries over the prompt's slots.
  q_bkqh = q_rtnh.reshape(b, n, t, kv, g, h).transpose(0, 3, 1, 2, 4, 5).reshape(b, kv, n * t * g, h)
  pre_out_bkqh, pre_lse_bkq = _attention_part(q_bkqh, prefix_k_bksh, prefix_v_bksh, prefix_valid_bs[:, None],
                                              scale)
  to_rows = lambda x: x.reshape(b, kv, n, t, g, *x.shape[3:]).transpose(0, 2, 1, 4, 3, *range(5, x.ndim + 2))
  pre_out_rkgth = to_rows(pre_out_bkqh).reshape(r, kv, g, t, h)
  pre_lse_rkgt = to_rows(pre_lse_bkq).reshape(r, kv, g, t)
  # Suffix part: each row over its own slots, queries grouped as (g, t) per kv head.
  q_rkqh = q_rtnh.reshape(r, t, kv, g, h).transpose(0, 2, 3, 1, 4).reshape(r, kv, g * t, h)
  mask_rqs = jnp.broadcast_to(mask_rts[:, None], (r, g, t, mask_rts.shape[-1])).reshape(r, g * t, -1)
  suf_out_rkqh, suf_lse_rkq = _attention_part(q_rkqh, k_rksh, v_rksh, mask_rqs, scale)
  out_rkgth = merge_attention(pre_out_rkgth, pre_lse_rkgt, suf_out_rkqh.reshape(r, kv, g, t, h),
                              suf_lse_rkq.reshape(r, kv, g, t))
  return out_rkgth.transpose(0, 3, 1, 2, 4).reshape(r, t, n_heads, h).astype(v_rksh.dtype)


def decode_kv_bytes(*, num_layers: int, kv_heads: int, head_dim: int, itemsize: int, prompts: int, n: int,
                    prompt_slots: int, new_slots: int, shared_prefix: bool) -> int:
  """Bytes of K and V one decode step reads over all layers, with the whole cache read (as the engine does).

  Repeated cache (shared_prefix False): every one of the prompts * n rows reads prompt_slots + new_slots slots.
  Shared prefix: each prompt's prompt_slots are read once, each row's new_slots once.
  """
  slot_bytes = 2 * num_layers * kv_heads * head_dim * itemsize
  rows = prompts * n
  if shared_prefix:
    return slot_bytes * (prompts * prompt_slots + rows * new_slots)
  return slot_bytes * rows * (prompt_slots + new_slots)
