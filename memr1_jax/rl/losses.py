"""Policy-gradient, KL, entropy and value losses for GRPO and PPO, as pure jax.numpy functions.

Arrays in, arrays out: the model is called by the update step, which passes these functions the
per-token log-probs of the response tokens. All `[B, T]` arrays are over response tokens with a
mask `mask_bt` (bool or 0/1 float) that is true on the tokens to train on. Values at masked
positions are replaced before any arithmetic, so they may be anything (inf, nan) without reaching
the loss or its gradient. Computation is in float32 (or float64 when given float64).

Clipped surrogate (PPO, Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
arXiv 1707.06347, eq. 7). With rho_t = exp(logp_t - logp_old_t), the ratio against the behaviour
policy that sampled the tokens, and advantage A_t, the per-token loss is

    l_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t).

eps_high > eps_low is the asymmetric "clip-higher" of DAPO (Yu et al. 2025, arXiv 2503.14476,
eps_low 0.2, eps_high 0.28); by default eps_high = eps_low (PPO). A token counts as clipped when the
clipped term is the larger loss (its gradient is then zero), as in TRL and verl.

Aggregation of a per-token loss l_{b,t} over the valid tokens (m = mask):

    "token_mean":           sum_{b,t} m l / sum_{b,t} m                 (DAPO token-level loss)
    "seq_mean_token_mean":  mean_b [ sum_t m l / sum_t m ]              (GRPO, DeepSeekMath eq. 3)
    "seq_mean_token_sum":   mean_b [ sum_t m l ]

where mean_b runs over the sequences with at least one valid token. Each mode is
numerator / `aggregation_denominator`; an update step that splits a batch into micro-batches
reproduces the full-batch value by scaling each micro-batch's loss by its own denominator over the
full batch's denominator.

KL to the frozen reference policy, per token, from tokens sampled by the policy pi (Schulman 2020,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html), with d = logp_ref - logp:

    "k1": -d                 unbiased for KL(pi || ref), high variance, can be negative
    "k2": d^2 / 2            biased, low variance, >= 0
    "k3": exp(d) - d - 1     unbiased, low variance, >= 0 (and 0 iff logp == logp_ref)

GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 3-4) adds beta * k3 to the loss
(beta = 0.04); PPO for LLMs instead puts -kl_coef * KL into the per-token reward
(`advantages.outcome_token_rewards`), so `ppo_policy_loss` has no KL term.

Entropy bonus: loss -= entropy_coef * H, with H_t = -sum_v p_v log p_v of the policy's next-token
distribution. Value loss (PPO2 as in OpenAI baselines): 0.5 * max((V - R)^2, (V_clip - R)^2) with
V_clip = V_old + clip(V - V_old, -c, c).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
KL_KINDS = ("k1", "k2", "k3")


def _as_float(x: Array) -> Array:
  """Casts to a float type of at least float32 (bf16 / int -> f32, f64 kept)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _as_mask(mask_bt: Array, *arrays: tuple[str, Array]) -> Array:
  """Returns the mask as bool after checking that every named array has its shape."""
  mask_bt = jnp.asarray(mask_bt).astype(bool)
  for name, x in arrays:
    if jnp.shape(x) != mask_bt.shape:
      raise ValueError(f"losses.py: {name} has shape {jnp.shape(x)}, expected the mask's shape "
                       f"{mask_bt.shape} [B, T]")
  return mask_bt


def _check_aggregation(aggregation: str) -> None:
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"losses.py: aggregation={aggregation!r}, expected one of {AGGREGATIONS}")


def masked_sum(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
  """Sum of x over the entries where mask is true (masked entries may be inf / nan).

  Args:
    x: values, any shape.
    mask: bool or 0/1 array of x's shape.
    axis: axes to reduce (None: all).

  Returns:
    the sum, with `axis` reduced.
  """
  mask = _as_mask(mask, ("x", x))
  return jnp.where(mask, _as_float(x), 0.0).sum(axis=axis)


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
  """Mean of x over the entries where mask is true; 0 where nothing is valid.

  Args:
    x: values, any shape.
    mask: bool or 0/1 array of x's shape.
    axis: axes to reduce (None: all).

  Returns:
    the mean, with `axis` reduced.
  """
  mask = _as_mask(mask, ("x", x))
  return masked_sum(x, mask, axis) / jnp.maximum(mask.sum(axis=axis), 1)


def aggregation_denominator(mask_bt: Array, aggregation: str) -> Array:
  """The count an aggregation divides by: valid tokens, or sequences with a valid token.

  Args:
    mask_bt: [B, T] response mask.
    aggregation: one of AGGREGATIONS.

  Returns:
    scalar float32 count (0 when the mask is empty).
  """
  _check_aggregation(aggregation)
  mask_bt = jnp.asarray(mask_bt).astype(bool)
  if aggregation == "token_mean":
    return mask_bt.sum().astype(jnp.float32)
  return mask_bt.any(axis=-1).sum().astype(jnp.float32)


def aggregate_loss(loss_bt: Array, mask_bt: Array, aggregation: str) -> Array:
  """Reduces a per-token loss to a scalar over the valid tokens (see the module docstring).

  Args:
    loss_bt: [B, T] per-token loss (masked entries ignored).
    mask_bt: [B, T] response mask.
    aggregation: "token_mean", "seq_mean_token_mean" or "seq_mean_token_sum".

  Returns:
    scalar loss; 0 when the mask is empty.
  """
  _check_aggregation(aggregation)
  mask_bt = _as_mask(mask_bt, ("loss_bt", loss_bt))
  if aggregation == "seq_mean_token_mean":
    numerator = masked_mean(loss_bt, mask_bt, axis=-1).sum()
  else:
    numerator = masked_sum(loss_bt, mask_bt)
  return numerator / jnp.maximum(aggregation_denominator(mask_bt, aggregation), 1.0)


def kl_penalty(logprobs_bt: Array, ref_logprobs_bt: Array, kind: str = "k3") -> Array:
  """Per-token estimate of KL(policy || reference) from tokens sampled by the policy.

  Args:
    logprobs_bt: [B, T] policy log-probs of the sampled tokens.
    ref_logprobs_bt: [B, T] reference-model log-probs of the same tokens.
    kind: "k1" (logp - logp_ref), "k2" (0.5 (logp - logp_ref)^2) or
      "k3" (exp(logp_ref - logp) - (logp_ref - logp) - 1).

  Returns:
    [B, T] per-token KL estimates (not masked; see `masked_mean` / `aggregate_loss`).
  """
  log_ratio_bt = _as_float(ref_logprobs_bt) - _as_float(logprobs_bt)
  if kind == "k1":
    return -log_ratio_bt
  if kind == "k2":
    return 0.5 * jnp.square(log_ratio_bt)
  if kind == "k3":
    return jnp.expm1(log_ratio_bt) - log_ratio_bt
  raise ValueError(f"losses.py: kl kind={kind!r}, expected one of {KL_KINDS}")


def entropy_from_logits(logits_btv: Array) -> Array:
  """Entropy of softmax(logits) over the last axis, in float32 (stable for large and -inf logits).

  Args:
    logits_btv: [B, T, V] logits (any float dtype).

  Returns:
    [B, T] entropies in nats.
  """
  log_probs_btv = jax.nn.log_softmax(_as_float(logits_btv), axis=-1)
  probs_btv = jnp.exp(log_probs_btv)
  safe_log_probs_btv = jnp.where(probs_btv > 0, log_probs_btv, 0.0)
  return -(probs_btv * safe_log_probs_btv).sum(axis=-1)


def _broadcast_advantages(advantages: Array, mask_bt: Array) -> Array:
  advantages = _as_float(advantages)
  if advantages.shape == mask_bt.shape[:1]:
    advantages = advantages[:, None]
  if advantages.ndim != 2 or advantages.shape[0] != mask_bt.shape[0]:
    raise ValueError(f"losses.py: advantages have shape {advantages.shape}, expected [B] or [B, T] "
                     f"with B, T = {mask_bt.shape}")
  return jnp.broadcast_to(advantages, mask_bt.shape)


def policy_gradient_loss(logprobs_bt: Array, old_logprobs_bt: Array, advantages: Array,
                         mask_bt: Array, clip_eps_low: float = 0.2,
                         clip_eps_high: float | None = None,
                         aggregation: str = "token_mean") -> tuple[Array, dict[str, Array]]:
  """The clipped PPO surrogate, aggregated over the valid tokens.

  Args:
    logprobs_bt: [B, T] log-probs of the sampled tokens under the policy being trained.
    old_logprobs_bt: [B, T] log-probs under the behaviour policy that sampled them.
    advantages: [B, T] per-token, or [B] per-sequence (broadcast over tokens).
    mask_bt: [B, T] response mask.
    clip_eps_low: the ratio is clipped below at 1 - clip_eps_low.
    clip_eps_high: the ratio is clipped above at 1 + clip_eps_high (None: clip_eps_low).
    aggregation: "token_mean", "seq_mean_token_mean" or "seq_mean_token_sum".

  Returns:
    (loss, metrics): scalar loss and scalar arrays "pg_loss", "clip_fraction" (share of valid
    tokens whose gradient the clip removes), "approx_kl" (token mean of the k3 estimate of
    KL(old || new)), "ratio_mean".
  """
  mask_bt = _as_mask(mask_bt, ("logprobs_bt", logprobs_bt), ("old_logprobs_bt", old_logprobs_bt))
  if clip_eps_high is None:
    clip_eps_high = clip_eps_low
  advantages_bt = jnp.where(mask_bt, _broadcast_advantages(advantages, mask_bt), 0.0)
  log_ratio_bt = (jnp.where(mask_bt, _as_float(logprobs_bt), 0.0)
                  - jnp.where(mask_bt, _as_float(old_logprobs_bt), 0.0))
  ratio_bt = jnp.exp(log_ratio_bt)
  unclipped_loss_bt = -advantages_bt * ratio_bt
  clipped_loss_bt = -advantages_bt * jnp.clip(ratio_bt, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
  loss = aggregate_loss(jnp.maximum(unclipped_loss_bt, clipped_loss_bt), mask_bt, aggregation)
  metrics = {
      "pg_loss": loss,
      "clip_fraction": masked_mean(clipped_loss_bt > unclipped_loss_bt, mask_bt),
      "approx_kl": masked_mean(jnp.expm1(log_ratio_bt) - log_ratio_bt, mask_bt),
      "ratio_mean": masked_mean(ratio_bt, mask_bt),
  }
  return loss, metrics


def ppo_policy_loss(logprobs_bt: Array, old_logprobs_bt: Array, advantages: Array, mask_bt: Array,
                    *, clip_eps_low: float = 0.2, clip_eps_high: float | None = None,
                    entropy_bt: Array | None = None, entropy_coef: float | Array = 0.0,
                    aggregation: str = "token_mean") -> tuple[Array, dict[str, Array]]:
  """PPO actor loss: clipped surrogate - entropy_coef * entropy (KL, if any, is in the rewards).

  Args:
    logprobs_bt, old_logprobs_bt, advantages, mask_bt, clip_eps_low, clip_eps_high, aggregation:
      as in `policy_gradient_loss` (advantages typically from `advantages.gae`, whitened).
    entropy_bt: optional [B, T] policy entropies (`entropy_from_logits`), aggregated like the loss.
    entropy_coef: weight of the entropy bonus.

  Returns:
    (loss, metrics): metrics of `policy_gradient_loss` plus "loss" and, with entropy_bt, "entropy".
  """
  loss, metrics = policy_gradient_loss(logprobs_bt, old_logprobs_bt, advantages, mask_bt,
                                       clip_eps_low, clip_eps_high, aggregation)
  if entropy_bt is not None:
    entropy = aggregate_loss(entropy_bt, _as_mask(mask_bt, ("entropy_bt", entropy_bt)), aggregation)
    loss = loss - entropy_coef * entropy
    metrics["entropy"] = entropy
  metrics["loss"] = loss
  return loss, metrics


def grpo_loss(logprobs_bt: Array, old_logprobs_bt: Array, ref_logprobs_bt: Array | None,
              advantages: Array, mask_bt: Array, *, clip_eps_low: float = 0.2,
              clip_eps_high: float | None = None, kl_coef: float | Array = 0.04,
              kl_kind: str = "k3", entropy_bt: Array | None = None,
              entropy_coef: float | Array = 0.0,
              aggregation: str = "seq_mean_token_mean") -> tuple[Array, dict[str, Array]]:
  """GRPO loss: clipped surrogate + kl_coef * KL(policy || reference) - entropy_coef * entropy.

  Args:
    logprobs_bt, old_logprobs_bt, advantages, mask_bt, clip_eps_low, clip_eps_high, aggregation:
      as in `policy_gradient_loss` (advantages typically [B] from `advantages.grpo_advantages`).
    ref_logprobs_bt: [B, T] frozen reference-model log-probs, or None for no KL term.
    kl_coef: beta, the weight of the KL term.
    kl_kind: "k1", "k2" or "k3" (`kl_penalty`).
    entropy_bt: optional [B, T] policy entropies (`entropy_from_logits`).
    entropy_coef: weight of the entropy bonus.

  Returns:
    (loss, metrics): metrics of `ppo_policy_loss` plus, with a reference, "kl" (the aggregated KL).
  """
  loss, metrics = ppo_policy_loss(logprobs_bt, old_logprobs_bt, advantages, mask_bt,
                                  clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                                  entropy_bt=entropy_bt, entropy_coef=entropy_coef,
                                  aggregation=aggregation)
  if ref_logprobs_bt is not None:
    mask_bt = _as_mask(mask_bt, ("ref_logprobs_bt", ref_logprobs_bt))
    kl_bt = kl_penalty(jnp.where(mask_bt, _as_float(logprobs_bt), 0.0),
                       jnp.where(mask_bt, _as_float(ref_logprobs_bt), 0.0), kl_kind)
    kl = aggregate_loss(kl_bt, mask_bt, aggregation)
    loss = loss + kl_coef * kl
    metrics["kl"] = kl
    metrics["loss"] = loss
  return loss, metrics


def value_loss(values_bt: Array, old_values_bt: Array, returns_bt: Array, mask_bt: Array,
               clip_range: float | None = 0.2,
               aggregation: str = "token_mean") -> tuple[Array, dict[str, Array]]:
  """Clipped value loss 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).

  Args:
    values_bt: [B, T] values from the value model being trained.
    old_values_bt: [B, T] values at rollout time (the ones GAE used).
    returns_bt: [B, T] regression targets (`advantages.gae` returns).
    mask_bt: [B, T] response mask.
    clip_range: c; None for the unclipped 0.5 * (V - R)^2.
    aggregation: as in `aggregate_loss`.

  Returns:
    (loss, metrics): scalar loss and scalar arrays "value_loss", "value_clip_fraction" (share of
    valid tokens where the clipped error is the larger).
  """
  mask_bt = _as_mask(mask_bt, ("values_bt", values_bt), ("old_values_bt", old_values_bt),
                     ("returns_bt", returns_bt))
  values_bt = jnp.where(mask_bt, _as_float(values_bt), 0.0)
  returns_bt = jnp.where(mask_bt, _as_float(returns_bt), 0.0)
  error_bt = jnp.square(values_bt - returns_bt)
  if clip_range is None:
    clipped_error_bt = error_bt
  else:
    old_values_bt = jnp.where(mask_bt, _as_float(old_values_bt), 0.0)
    clipped_values_bt = old_values_bt + jnp.clip(values_bt - old_values_bt, -clip_range, clip_range)
    clipped_error_bt = jnp.square(clipped_values_bt - returns_bt)
  loss = aggregate_loss(0.5 * jnp.maximum(error_bt, clipped_error_bt), mask_bt, aggregation)
  metrics = {
      "value_loss": loss,
      "value_clip_fraction": masked_mean(clipped_error_bt > error_bt, mask_bt),
  }
  return loss, metrics


def explained_variance(values_bt: Array, returns_bt: Array, mask_bt: Array) -> Array:
  """1 - Var[R - V] / Var[R] over the valid tokens (population variances).

  Args:
    values_bt: [B, T] value predictions.
    returns_bt: [B, T] targets.
    mask_bt: [B, T] response mask.

  Returns:
    scalar; 1 is a perfect fit, 0 no better than a constant, nan when Var[R] is 0.
  """
  mask_bt = _as_mask(mask_bt, ("values_bt", values_bt), ("returns_bt", returns_bt))

  def variance(x_bt):
    x_bt = jnp.where(mask_bt, _as_float(x_bt), 0.0)
    return masked_mean(jnp.square(x_bt - masked_mean(x_bt, mask_bt)), mask_bt)

  returns_variance = variance(returns_bt)
  residual_variance = variance(jnp.where(mask_bt, _as_float(returns_bt), 0.0)
                               - jnp.where(mask_bt, _as_float(values_bt), 0.0))
  return jnp.where(returns_variance > 0, 1.0 - residual_variance / returns_variance, jnp.nan)
