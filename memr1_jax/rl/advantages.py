"""Advantages and per-token rewards for GRPO and PPO, as pure jax.numpy functions.

All arrays are over response tokens: `[B, T]` with a mask `mask_bt` (bool or 0/1 float) that is true
on the tokens the policy generated and false on padding (and on any other token the learner must not
train on). Values at masked positions are never read: they may be anything, even inf or nan.

GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, sec. 4.1.2, outcome supervision). For
each prompt G responses are sampled; with rewards r_1..r_G of one group,

    A_i = (r_i - mean(r)) / (std(r) + eps)

and every token of response i gets A_i. `std` is the population standard deviation (ddof 0), so a
group whose rewards are all equal gets advantage 0 everywhere (no learning signal) and a group of one
is well defined. Dr. GRPO (Liu et al. 2025, arXiv 2503.20783) drops the division by std:
`normalize_std=False`.

PPO (Schulman et al. 2017, arXiv 1707.06347) with a value model uses generalised advantage
estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", arXiv 1506.02438):

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1}
    R_t     = A_t + V_t                  (the lambda-return, the value model's regression target)

with V and A zero after the last response token. Masked tokens are skipped, not treated as steps:
t+1 means the next *valid* token of the same row (so a masked hole inside a response, for example
tokens inserted by the environment, neither breaks the recursion nor counts as a discount step).
For LLM outcome rewards the reward sits on the last valid token (`outcome_token_rewards`); with the
PPO "KL in the reward" variant (Ziegler et al. 2019, arXiv 1909.08593; Ouyang et al. 2022) each token
also carries -kl_coef * KL_t.

Advantage whitening (`whiten`) normalises over all valid tokens of the batch, as in the PPO
implementations of OpenAI's lm-human-preferences and TRL.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _as_float(x: Array) -> Array:
  """Casts to a float type of at least float32 (bf16 / int -> f32, f64 kept)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_bt(name: str, x: Array, mask_bt: Array) -> None:
  if x.shape != mask_bt.shape:
    raise ValueError(
        f"advantages.py: {name} has shape {x.shape}, expected the mask's shape {mask_bt.shape} [B, T]")


def grpo_advantages(rewards_b: Array, group_size: int, *, normalize_std: bool = True,
                    eps: float = 1e-6) -> Array:
  """Group-normalised GRPO advantages.

  Args:
    rewards_b: [B] sequence rewards, B = n_prompts * group_size, prompt-major (the G samples of a
      prompt are contiguous).
    group_size: G, samples per prompt (static).
    normalize_std: divide by the group's population std (+ eps); False keeps reward - group mean.
    eps: added to the std before dividing.

  Returns:
    [B] advantages (float32 or wider).
  """
  rewards_b = _as_float(rewards_b)
  if rewards_b.ndim != 1:
    raise ValueError(f"advantages.py: rewards_b must be 1-D [B], got shape {rewards_b.shape}")
  if group_size < 1 or rewards_b.shape[0] % group_size:
    raise ValueError(
        f"advantages.py: group_size={group_size} must be >= 1 and divide the batch {rewards_b.shape[0]}")
  rewards_ng = rewards_b.reshape(-1, group_size)
  advantages_ng = rewards_ng - rewards_ng.mean(axis=1, keepdims=True)
  if normalize_std:
    advantages_ng = advantages_ng / (rewards_ng.std(axis=1, keepdims=True) + eps)
  # Equal finite rewards give exactly 0: their float mean can be an ulp off (8 x 0.1 in float32), which the division
  # by std + eps would blow up to advantages of a few hundredths, all of one sign. Non-finite rewards stay non-finite
  # (the update then skips the step).
  high_n1 = rewards_ng.max(axis=1, keepdims=True)
  flat_n1 = (high_n1 == rewards_ng.min(axis=1, keepdims=True)) & jnp.isfinite(high_n1)
  return jnp.where(flat_n1, 0.0, advantages_ng).reshape(-1)


def gae(rewards_bt: Array, values_bt: Array, mask_bt: Array, gamma: float | Array,
        lam: float | Array) -> tuple[Array, Array]:
  """Generalised advantage estimation over the valid tokens of each row.

  Args:
    rewards_bt: [B, T] per-token rewards (masked entries ignored).
    values_bt: [B, T] value estimates V_t (masked entries ignored).
    mask_bt: [B, T] true on response tokens.
    gamma: discount per valid token.
    lam: GAE lambda.

  Returns:
    (advantages_bt, returns_bt), both [B, T], zero at masked positions; returns = advantages + values.
  """
  mask_bt = jnp.asarray(mask_bt).astype(bool)
  _check_bt("rewards_bt", rewards_bt, mask_bt)
  _check_bt("values_bt", values_bt, mask_bt)
  rewards_bt = jnp.where(mask_bt, _as_float(rewards_bt), 0.0)
  values_bt = jnp.where(mask_bt, _as_float(values_bt), 0.0)
  dtype = jnp.result_type(rewards_bt, values_bt)
  rewards_bt, values_bt = rewards_bt.astype(dtype), values_bt.astype(dtype)
  gamma = jnp.asarray(gamma, dtype)
  lam = jnp.asarray(lam, dtype)

  def step(carry, xs):
    next_value_b, next_advantage_b = carry
    reward_b, value_b, valid_b = xs
    delta_b = reward_b + gamma * next_value_b - value_b
    advantage_b = delta_b + gamma * lam * next_advantage_b
    carry = (jnp.where(valid_b, value_b, next_value_b),
             jnp.where(valid_b, advantage_b, next_advantage_b))
    return carry, jnp.where(valid_b, advantage_b, 0.0)

  zeros_b = jnp.zeros(rewards_bt.shape[:1], dtype)
  _, advantages_tb = lax.scan(step, (zeros_b, zeros_b), (rewards_bt.T, values_bt.T, mask_bt.T),
                              reverse=True)
  advantages_bt = advantages_tb.T
  returns_bt = jnp.where(mask_bt, advantages_bt + values_bt, 0.0)
  return advantages_bt, returns_bt


def whiten(x_bt: Array, mask_bt: Array, shift_mean: bool = True, *, eps: float = 1e-8) -> Array:
  """Normalises x over all valid entries to zero mean and unit (population) variance.

  Args:
    x_bt: [B, T] values (masked entries ignored).
    mask_bt: [B, T] true on valid entries.
    shift_mean: if False the mean is added back (only the scale changes), as PPO does for returns.
    eps: added to the variance.

  Returns:
    [B, T] whitened values, zero at masked positions.
  """
  mask_bt = jnp.asarray(mask_bt).astype(bool)
  _check_bt("x_bt", x_bt, mask_bt)
  x_bt = jnp.where(mask_bt, _as_float(x_bt), 0.0)
  count = jnp.maximum(mask_bt.sum(), 1)
  mean = x_bt.sum() / count
  centred_bt = jnp.where(mask_bt, x_bt - mean, 0.0)
  variance = jnp.square(centred_bt).sum() / count
  whitened_bt = centred_bt * lax.rsqrt(variance + eps)
  if not shift_mean:
    whitened_bt = whitened_bt + mean
  return jnp.where(mask_bt, whitened_bt, 0.0)


def outcome_token_rewards(scores_b: Array, mask_bt: Array, kl_bt: Array | None = None,
                          kl_coef: float | Array = 0.0) -> Array:
  """Per-token rewards from sequence scores: the score on each row's last valid token.

  Args:
    scores_b: [B] sequence rewards (e.g. exact match of the final answer).
    mask_bt: [B, T] true on response tokens; a row with no valid token gets no reward.
    kl_bt: optional [B, T] per-token KL estimate to the reference policy (see `losses.kl_penalty`).
    kl_coef: weight of the KL penalty: reward_t -= kl_coef * kl_t on every valid token.

  Returns:
    [B, T] rewards, zero at masked positions.
  """
  mask_bt = jnp.asarray(mask_bt).astype(bool)
  scores_b = _as_float(scores_b)
  if scores_b.shape != mask_bt.shape[:1]:
    raise ValueError(f"advantages.py: scores_b has shape {scores_b.shape}, expected [{mask_bt.shape[0]}]")
  num_tokens = mask_bt.shape[1]
  last_index_b = num_tokens - 1 - jnp.argmax(mask_bt[:, ::-1], axis=1)
  is_last_bt = (jnp.arange(num_tokens)[None, :] == last_index_b[:, None]) & mask_bt
  rewards_bt = jnp.where(is_last_bt, scores_b[:, None], 0.0)
  if kl_bt is not None:
    _check_bt("kl_bt", kl_bt, mask_bt)
    rewards_bt = rewards_bt - kl_coef * jnp.where(mask_bt, _as_float(kl_bt), 0.0)
  return jnp.where(mask_bt, rewards_bt, 0.0)
