"""Next-token samplers: greedy, temperature, top-k and top-p, with the parameters as traced arrays.

`SamplingParams` is a pytree of 0-d arrays, so a jitted decode loop that takes it as an argument compiles once for
every temperature / top-p / top-k. The sampling distribution for temperature T > 0 is

    q = softmax(filter(logits / T)),

where `filter` keeps the top-k tokens (top_k > 0), then, renormalised over those, the smallest prefix of tokens in
descending order whose probability mass reaches top_p (a token is kept while the mass of the tokens before it is
< top_p; the most likely token is always kept), and sets the rest to -inf. This is the order of Hugging Face's
`TopKLogitsWarper` then `TopPLogitsWarper` after the temperature. Tokens tied with the last kept logit are kept too.
T == 0 is greedy decoding (argmax, first index on ties).

Every random draw uses its row's own key, so a row's samples do not depend on which other rows share its batch.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class SamplingParams:
  """Traced sampling parameters (0-d arrays): temperature (0 = greedy), top_p (1 = off), top_k (0 = off)."""

  temperature: jax.Array
  top_p: jax.Array
  top_k: jax.Array

  @classmethod
  def make(cls, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> SamplingParams:
    """Validated parameters: temperature >= 0, 0 < top_p <= 1, top_k >= 0 (ValueError naming the field)."""
    if not temperature >= 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if int(top_k) != top_k or top_k < 0:
      raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k}")
    return cls(temperature=jnp.asarray(temperature, jnp.float32), top_p=jnp.asarray(top_p, jnp.float32),
               top_k=jnp.asarray(top_k, jnp.int32))


def filter_top_k_top_p(logits_bv: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Sets every token outside the top-k / top-p set of each row to -inf. [B, V] float32 -> [B, V] float32.

  top_k (int, 0 = off) and top_p (float, 1 = off) are traced scalars; one sort of each row finds both cut-offs.
  """
  v = logits_bv.shape[-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  rank_v = jnp.arange(v)
  sorted_bv = -jnp.sort(-logits_bv, axis=-1)
  sorted_bv = jnp.where(rank_v < k, sorted_bv, -jnp.inf)
  probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
  mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
  keep_bv = (rank_v < k) & ((mass_before_bv < top_p) | (top_p >= 1.0))
  num_keep_b = jnp.maximum(jnp.sum(keep_bv, axis=-1), 1)
  threshold_b1 = jnp.take_along_axis(sorted_bv, num_keep_b[:, None] - 1, axis=-1)
  return jnp.where(logits_bv >= threshold_b1, logits_bv, -jnp.inf)


def sampling_logits(logits_bv: jax.Array, params: SamplingParams) -> jax.Array:
  """Unnormalised log-probs of the sampling distribution for T > 0: filter(logits / T). [B, V] float32.

  The sort behind top-k / top-p runs only when one of them is switched on (a `lax.cond` on the traced values).
  """
  scaled_bv = logits_bv.astype(jnp.float32) / jnp.where(params.temperature > 0, params.temperature, 1.0)
  needs_filter = (params.top_k > 0) | (params.top_p < 1.0)
  return jax.lax.cond(needs_filter, filter_top_k_top_p, lambda x, k, p: x, scaled_bv, params.top_k, params.top_p)


def sample(logits_bv: jax.Array, keys_b: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row. logits_bv [B, V] raw model logits, keys_b [B] PRNG keys (one per row).

  Returns (tokens_b int32, sampling_logprob_b float32): the token and its log-probability under the sampling
  distribution (0 for greedy, whose distribution is a point mass). Greedy rows draw no random numbers.
  """

  def greedy(_):
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32), jnp.zeros(logits_bv.shape[:1], jnp.float32)

  def draw(_):
    logq_bv = jax.nn.log_softmax(sampling_logits(logits_bv, params), axis=-1)
    tokens_b = jax.vmap(jax.random.categorical)(keys_b, logq_bv).astype(jnp.int32)
    return tokens_b, jnp.take_along_axis(logq_bv, tokens_b[:, None], axis=-1)[:, 0]

  return jax.lax.cond(params.temperature > 0, draw, greedy, None)


def token_logprobs(logits_bv: jax.Array, tokens_b: jax.Array) -> jax.Array:
  """log_softmax(logits)[token] per row, under the raw (untempered, unfiltered) model logits. [B] float32."""
  logp_bv = jax.nn.log_softmax(logits_bv.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_bv, tokens_b[:, None], axis=-1)[:, 0]
