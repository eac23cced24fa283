"""Tests for memr1_jax.rl.losses and memr1_jax.rl.advantages against hand computations in numpy.

Every reference below loops over the valid tokens explicitly; masked tokens carry huge values
(HUGE, inf-producing under exp / square) so that any leak of padding into a result shows up.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memr1_jax.rl import advantages as adv_lib
from memr1_jax.rl import losses

B, T = 3, 5
HUGE = 1e30
# Row 0 full, row 1 with a hole and right padding, row 2 right-padded.
MASK_BT = np.array([[1, 1, 1, 1, 1],
                    [1, 1, 0, 1, 0],
                    [1, 1, 1, 0, 0]], dtype=bool)
MODES = losses.AGGREGATIONS

policy_gradient_loss = jax.jit(losses.policy_gradient_loss, static_argnames=("aggregation",))
ppo_policy_loss = jax.jit(losses.ppo_policy_loss, static_argnames=("aggregation",))
grpo_loss = jax.jit(losses.grpo_loss, static_argnames=("aggregation", "kl_kind"))
value_loss = jax.jit(losses.value_loss, static_argnames=("aggregation",))
kl_penalty = jax.jit(losses.kl_penalty, static_argnames=("kind",))
entropy_from_logits = jax.jit(losses.entropy_from_logits)
gae = jax.jit(adv_lib.gae)
whiten = jax.jit(adv_lib.whiten, static_argnames=("shift_mean",))
grpo_advantages = jax.jit(adv_lib.grpo_advantages, static_argnames=("group_size", "normalize_std"))


def _valid(mask_bt):
  """The (b, t) pairs of valid tokens, row-major."""
  return [(b, t) for b in range(mask_bt.shape[0]) for t in range(mask_bt.shape[1]) if mask_bt[b, t]]


def _pad(x_bt, mask_bt=MASK_BT):
  """x with HUGE written into the masked positions."""
  return np.where(mask_bt, x_bt, HUGE)


def _policy_inputs(seed=0):
  """Log-probs, behaviour log-probs (ratios on both sides of the clip) and per-token advantages."""
  rng = np.random.default_rng(seed)
  logprobs_bt = -rng.uniform(0.1, 3.0, (B, T))
  old_logprobs_bt = logprobs_bt + rng.choice([-0.5, -0.1, 0.05, 0.12, 0.4], (B, T))
  advantages_bt = rng.choice([-1.5, -0.4, 0.7, 1.2], (B, T))
  return _pad(logprobs_bt), _pad(old_logprobs_bt), _pad(advantages_bt)


def _hand_aggregate(token_values, mask_bt, mode):
  """token_values: {(b, t): value} over valid tokens, reduced by the named aggregation."""
  if mode == "token_mean":
    return sum(token_values.values()) / len(token_values)
  per_sequence = []
  for b in range(mask_bt.shape[0]):
    row = [token_values[b, t] for t in range(mask_bt.shape[1]) if mask_bt[b, t]]
    if row:
      per_sequence.append(sum(row) / len(row) if mode == "seq_mean_token_mean" else sum(row))
  return sum(per_sequence) / len(per_sequence)


def _hand_surrogate(logprobs_bt, old_logprobs_bt, advantages_bt, mask_bt, eps_low, eps_high):
  """{(b, t): -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)} over valid tokens."""
  token_losses = {}
  for b, t in _valid(mask_bt):
    ratio = math.exp(logprobs_bt[b, t] - old_logprobs_bt[b, t])
    clipped_ratio = min(max(ratio, 1.0 - eps_low), 1.0 + eps_high)
    a = advantages_bt[b, t]
    token_losses[b, t] = -min(ratio * a, clipped_ratio * a)
  return token_losses


def _hand_k3(logprobs_bt, ref_logprobs_bt, mask_bt):
  token_kl = {}
  for b, t in _valid(mask_bt):
    d = ref_logprobs_bt[b, t] - logprobs_bt[b, t]
    token_kl[b, t] = math.exp(d) - d - 1.0
  return token_kl


def _hand_entropy(logits_v):
  z = np.asarray(logits_v, np.float64)
  p = np.exp(z - z.max())
  p /= p.sum()
  return -sum(pi * math.log(pi) for pi in p if pi > 0)


# ----------------------------------------------------------------------------- masked reductions


def test_masked_sum_ignores_huge_masked_entries():
  """masked_sum equals the sum over valid entries even when masked ones are HUGE."""
  x_bt = _pad(np.arange(B * T, dtype=np.float64).reshape(B, T))
  expected = sum(x_bt[b, t] for b, t in _valid(MASK_BT))
  np.testing.assert_allclose(jax.jit(losses.masked_sum)(x_bt, MASK_BT), expected, rtol=1e-6)


def test_masked_mean_per_row_ignores_huge_masked_entries():
  """masked_mean over the token axis equals each row's mean over its valid entries."""
  x_bt = _pad(np.arange(B * T, dtype=np.float64).reshape(B, T))
  expected = [np.mean([x_bt[b, t] for t in range(T) if MASK_BT[b, t]]) for b in range(B)]
  np.testing.assert_allclose(jax.jit(losses.masked_mean, static_argnames=("axis",))(
      x_bt, MASK_BT, axis=-1), expected, rtol=1e-6)


def test_masked_mean_of_empty_mask_is_zero():
  """A mean over no valid entries is 0, not nan."""
  assert float(losses.masked_mean(np.full((2, 3), HUGE), np.zeros((2, 3), bool))) == 0.0


# ----------------------------------------------------------------------------- surrogate


@pytest.mark.parametrize("per_sequence_advantages", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_policy_gradient_loss_matches_hand_computation(mode, per_sequence_advantages):
  """The clipped surrogate (asymmetric clip) equals the hand loop for every aggregation mode."""
  logprobs_bt, old_logprobs_bt, advantages_bt = _policy_inputs()
  if per_sequence_advantages:
    advantages = np.array([0.8, -1.3, 0.25])
    hand_advantages_bt = np.repeat(advantages[:, None], T, axis=1)
  else:
    advantages = hand_advantages_bt = advantages_bt
  token_losses = _hand_surrogate(logprobs_bt, old_logprobs_bt, hand_advantages_bt, MASK_BT, 0.2, 0.28)
  loss, metrics = policy_gradient_loss(logprobs_bt, old_logprobs_bt, advantages, MASK_BT,
                                       0.2, 0.28, aggregation=mode)
  expected = _hand_aggregate(token_losses, MASK_BT, mode)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["pg_loss"], expected, rtol=1e-5)


def test_clip_fraction_matches_hand_count():
  """clip_fraction is the share of valid tokens whose clipped loss exceeds the unclipped one."""
  logprobs_bt, old_logprobs_bt, advantages_bt = _policy_inputs()
  clipped = 0
  for b, t in _valid(MASK_BT):
    ratio = math.exp(logprobs_bt[b, t] - old_logprobs_bt[b, t])
    a = advantages_bt[b, t]
    if (a > 0 and ratio > 1.0 + 0.28) or (a < 0 and ratio < 1.0 - 0.2):
      clipped += 1
  assert 0 < clipped < len(_valid(MASK_BT)), "fixture must clip some tokens and not others"
  _, metrics = policy_gradient_loss(logprobs_bt, old_logprobs_bt, advantages_bt, MASK_BT, 0.2, 0.28)
  np.testing.assert_allclose(metrics["clip_fraction"], clipped / len(_valid(MASK_BT)), rtol=1e-6)


def test_policy_metrics_approx_kl_and_ratio_mean_match_hand_computation():
  """approx_kl is the token mean of (r - 1) - log r and ratio_mean the token mean of r."""
  logprobs_bt, old_logprobs_bt, advantages_bt = _policy_inputs()
  ratios = [math.exp(logprobs_bt[b, t] - old_logprobs_bt[b, t]) for b, t in _valid(MASK_BT)]
  _, metrics = policy_gradient_loss(logprobs_bt, old_logprobs_bt, advantages_bt, MASK_BT)
  np.testing.assert_allclose(metrics["approx_kl"], np.mean([r - 1 - math.log(r) for r in ratios]),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["ratio_mean"], np.mean(ratios), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_surrogate_gradient_matches_finite_differences(mode):
  """jax.grad of the surrogate w.r.t. log-probs equals a numpy central difference; 0 on padding."""
  logprobs_bt, old_logprobs_bt, advantages_bt = _policy_inputs()

  def hand_loss(lp_bt):
    return _hand_aggregate(_hand_surrogate(lp_bt, old_logprobs_bt, advantages_bt, MASK_BT, 0.2, 0.28),
                           MASK_BT, mode)

  step = 1e-6
  expected_bt = np.zeros((B, T))
  for b, t in _valid(MASK_BT):
    plus, minus = logprobs_bt.copy(), logprobs_bt.copy()
    plus[b, t] += step
    minus[b, t] -= step
    expected_bt[b, t] = (hand_loss(plus) - hand_loss(minus)) / (2 * step)
  with jax.enable_x64(True):
    grad_bt = jax.grad(lambda lp: losses.policy_gradient_loss(
        lp, old_logprobs_bt, advantages_bt, MASK_BT, 0.2, 0.28, aggregation=mode)[0])(
            jnp.asarray(logprobs_bt, jnp.float64))
  assert np.abs(expected_bt).max() > 0.05, "fixture must have unclipped tokens with a gradient"
  np.testing.assert_allclose(grad_bt, expected_bt, rtol=1e-6, atol=1e-9)


def _tiny_policy_inputs():
  """A log-linear policy logits = x @ W over a 4-token vocabulary, with sampled actions."""
  rng = np.random.default_rng(3)
  features_btd = rng.normal(size=(B, T, 3))
  weights_dv = rng.normal(size=(3, 4)) * 0.5
  actions_bt = rng.integers(0, 4, (B, T))
  return features_btd, weights_dv, actions_bt


def test_grpo_loss_gradient_on_tiny_model_matches_finite_differences():
  """The gradient of grpo_loss (+ KL + entropy) w.r.t. a tiny model's weights equals a numpy FD."""
  features_btd, weights_dv, actions_bt = _tiny_policy_inputs()
  old_logprobs_bt = _pad(np.log(np.full((B, T), 0.25)) + 0.3 * np.sin(np.arange(B * T)).reshape(B, T))
  ref_logprobs_bt = _pad(np.full((B, T), np.log(0.25)))
  advantages_b = np.array([1.0, -0.5, 0.75])
  kl_coef, entropy_coef = 0.1, 0.01

  def hand_loss(w_dv):
    logits_btv = features_btd @ w_dv
    token_losses = {}
    for b, t in _valid(MASK_BT):
      z = logits_btv[b, t]
      log_probs = z - z.max() - math.log(np.exp(z - z.max()).sum())
      logp = log_probs[actions_bt[b, t]]
      ratio = math.exp(logp - old_logprobs_bt[b, t])
      a = advantages_b[b]
      surrogate = -min(ratio * a, min(max(ratio, 0.8), 1.2) * a)
      d = ref_logprobs_bt[b, t] - logp
      token_losses[b, t] = (surrogate + kl_coef * (math.exp(d) - d - 1)
                            - entropy_coef * _hand_entropy(z))
    return _hand_aggregate(token_losses, MASK_BT, "seq_mean_token_mean")

  step = 1e-6
  expected_dv = np.zeros_like(weights_dv)
  for index in np.ndindex(*weights_dv.shape):
    plus, minus = weights_dv.copy(), weights_dv.copy()
    plus[index] += step
    minus[index] -= step
    expected_dv[index] = (hand_loss(plus) - hand_loss(minus)) / (2 * step)

  def jax_loss(w_dv):
    logits_btv = jnp.asarray(features_btd) @ w_dv
    log_probs_btv = jax.nn.log_softmax(logits_btv, axis=-1)
    logprobs_bt = jnp.take_along_axis(log_probs_btv, jnp.asarray(actions_bt)[..., None], -1)[..., 0]
    return losses.grpo_loss(logprobs_bt, old_logprobs_bt, ref_logprobs_bt, advantages_b, MASK_BT,
                            kl_coef=kl_coef, entropy_bt=losses.entropy_from_logits(logits_btv),
                            entropy_coef=entropy_coef)[0]

  with jax.enable_x64(True):
    grad_dv = jax.grad(jax_loss)(jnp.asarray(weights_dv, jnp.float64))
    np.testing.assert_allclose(jax_loss(jnp.asarray(weights_dv)), hand_loss(weights_dv), rtol=1e-10)
  np.testing.assert_allclose(grad_dv, expected_dv, rtol=1e-5, atol=1e-9)


def test_surrogate_gradient_is_zero_and_finite_on_padding():
  """Padding with HUGE log-probs gets exactly zero gradient (no inf / nan leaks back)."""
  logprobs_bt, old_logprobs_bt, advantages_bt = _policy_inputs()
  grad_bt = jax.grad(lambda lp: losses.policy_gradient_loss(lp, old_logprobs_bt, advantages_bt,
                                                            MASK_BT)[0])(jnp.asarray(logprobs_bt))
  assert np.isfinite(grad_bt).all()
  assert (np.asarray(grad_bt)[~MASK_BT] == 0).all()


# ----------------------------------------------------------------------------- KL and entropy


@pytest.mark.parametrize("kind", losses.KL_KINDS)
def test_kl_penalty_matches_hand_formula(kind):
  """k1 = logp - ref, k2 = (logp - ref)^2 / 2, k3 = exp(ref - logp) - (ref - logp) - 1 per token."""
  rng = np.random.default_rng(1)
  logprobs_bt = -rng.uniform(0.1, 3.0, (B, T))
  ref_logprobs_bt = -rng.uniform(0.1, 3.0, (B, T))
  expected_bt = np.zeros((B, T))
  for b in range(B):
    for t in range(T):
      d = ref_logprobs_bt[b, t] - logprobs_bt[b, t]
      expected_bt[b, t] = {"k1": -d, "k2": 0.5 * d * d, "k3": math.exp(d) - d - 1}[kind]
  np.testing.assert_allclose(kl_penalty(logprobs_bt, ref_logprobs_bt, kind=kind), expected_bt,
                             rtol=1e-5, atol=1e-7)


def test_k3_is_nonnegative_and_zero_when_equal():
  """k3 >= 0 on random log-probs and exactly 0 where policy and reference agree."""
  rng = np.random.default_rng(2)
  logprobs_n = -rng.uniform(0.0, 10.0, 1000).astype(np.float32)
  ref_logprobs_n = -rng.uniform(0.0, 10.0, 1000).astype(np.float32)
  assert (np.asarray(kl_penalty(logprobs_n, ref_logprobs_n, kind="k3")) >= 0).all()
  assert (np.asarray(kl_penalty(logprobs_n, logprobs_n, kind="k3")) == 0).all()


def test_kl_penalty_rejects_unknown_kind():
  """An unknown KL kind raises a ValueError naming the kinds."""
  with pytest.raises(ValueError, match="k3"):
    losses.kl_penalty(np.zeros((1, 1)), np.zeros((1, 1)), "k4")


def test_entropy_matches_numpy_for_small_and_large_logits():
  """Entropy equals a float64 numpy computation, also for logits of magnitude 1e4 and bf16 input."""
  rng = np.random.default_rng(4)
  logits_btv = rng.normal(size=(B, T, 7)) * np.array([1.0, 30.0, 1e4])[:, None, None]
  expected_bt = np.array([[_hand_entropy(logits_btv[b, t]) for t in range(T)] for b in range(B)])
  np.testing.assert_allclose(entropy_from_logits(logits_btv.astype(np.float32)), expected_bt,
                             rtol=1e-4, atol=1e-5)
  bf16_logits_btv = jnp.asarray(logits_btv[:1], jnp.bfloat16)
  bf16_entropy_bt = entropy_from_logits(bf16_logits_btv)
  assert bf16_entropy_bt.dtype == jnp.float32
  expected_bf16_bt = [[_hand_entropy(np.asarray(bf16_logits_btv[0, t], np.float64)) for t in range(T)]]
  np.testing.assert_allclose(bf16_entropy_bt, expected_bf16_bt, rtol=1e-4, atol=1e-5)


def test_entropy_with_minus_inf_logits_is_finite_with_finite_gradient():
  """Logits of -inf (excluded tokens) contribute nothing: H([0, -inf, 0]) = log 2, finite gradient."""
  logits_btv = jnp.array([[[0.0, -jnp.inf, 0.0]]])
  np.testing.assert_allclose(entropy_from_logits(logits_btv), [[math.log(2)]], rtol=1e-6)
  assert np.isfinite(jax.grad(lambda z: losses.entropy_from_logits(z).sum())(logits_btv)).all()


# ----------------------------------------------------------------------------- compositions


def test_grpo_loss_matches_hand_composition():
  """grpo_loss = seq-mean-token-mean of (surrogate + beta k3 - c H), with each part reported."""
  logprobs_bt, old_logprobs_bt, _ = _policy_inputs()
  rng = np.random.default_rng(5)
  ref_logprobs_bt = _pad(np.asarray(logprobs_bt) + rng.normal(0, 0.3, (B, T)))
  entropy_bt = _pad(rng.uniform(0.5, 2.0, (B, T)))
  advantages_b = np.array([0.9, -1.1, 0.3])
  surrogate = _hand_surrogate(logprobs_bt, old_logprobs_bt, np.repeat(advantages_b[:, None], T, 1),
                              MASK_BT, 0.2, 0.2)
  kl = _hand_k3(logprobs_bt, ref_logprobs_bt, MASK_BT)
  entropy = {(b, t): entropy_bt[b, t] for b, t in _valid(MASK_BT)}
  mode = "seq_mean_token_mean"
  expected = {name: _hand_aggregate(values, MASK_BT, mode)
              for name, values in [("pg_loss", surrogate), ("kl", kl), ("entropy", entropy)]}
  expected["loss"] = expected["pg_loss"] + 0.04 * expected["kl"] - 0.01 * expected["entropy"]
  loss, metrics = grpo_loss(logprobs_bt, old_logprobs_bt, ref_logprobs_bt, advantages_b, MASK_BT,
                            kl_coef=0.04, entropy_bt=entropy_bt, entropy_coef=0.01)
  np.testing.assert_allclose(loss, expected["loss"], rtol=1e-5)
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)


def test_grpo_loss_without_reference_is_the_surrogate():
  """With no reference model grpo_loss is the plain surrogate and reports no kl."""
  logprobs_bt, old_logprobs_bt, advantages_bt = _policy_inputs()
  loss, metrics = grpo_loss(logprobs_bt, old_logprobs_bt, None, advantages_bt, MASK_BT)
  expected = _hand_aggregate(_hand_surrogate(logprobs_bt, old_logprobs_bt, advantages_bt, MASK_BT,
                                             0.2, 0.2), MASK_BT, "seq_mean_token_mean")
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert "kl" not in metrics


@pytest.mark.parametrize("mode", MODES)
def test_ppo_policy_loss_matches_hand_composition(mode):
  """ppo_policy_loss = aggregated surrogate - entropy_coef * aggregated entropy."""
  logprobs_bt, old_logprobs_bt, advantages_bt = _policy_inputs()
  entropy_bt = _pad(np.random.default_rng(6).uniform(0.5, 2.0, (B, T)))
  pg = _hand_aggregate(_hand_surrogate(logprobs_bt, old_logprobs_bt, advantages_bt, MASK_BT, 0.1, 0.3),
                       MASK_BT, mode)
  entropy = _hand_aggregate({(b, t): entropy_bt[b, t] for b, t in _valid(MASK_BT)}, MASK_BT, mode)
  loss, metrics = ppo_policy_loss(logprobs_bt, old_logprobs_bt, advantages_bt, MASK_BT,
                                  clip_eps_low=0.1, clip_eps_high=0.3, entropy_bt=entropy_bt,
                                  entropy_coef=0.05, aggregation=mode)
  np.testing.assert_allclose(loss, pg - 0.05 * entropy, rtol=1e-5)
  np.testing.assert_allclose(metrics["entropy"], entropy, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_aggregation_denominators_recombine_micro_batches(mode):
  """Micro-batch losses scaled by denominator / full denominator sum to the full-batch loss."""
  loss_bt = _pad(np.random.default_rng(7).normal(size=(B, T)))
  full = losses.aggregate_loss(loss_bt, MASK_BT, mode)
  total = losses.aggregation_denominator(MASK_BT, mode)
  recombined = sum(losses.aggregate_loss(loss_bt[rows], MASK_BT[rows], mode)
                   * losses.aggregation_denominator(MASK_BT[rows], mode) / total
                   for rows in (slice(0, 2), slice(2, 3)))
  np.testing.assert_allclose(recombined, full, rtol=1e-6)


def test_sequence_aggregation_skips_empty_rows():
  """A row with no valid token does not count as a sequence in the sequence-mean modes."""
  mask_bt = np.array([[1, 1, 0], [0, 0, 0]], bool)
  loss_bt = np.array([[1.0, 3.0, HUGE], [HUGE, HUGE, HUGE]])
  np.testing.assert_allclose(losses.aggregate_loss(loss_bt, mask_bt, "seq_mean_token_mean"), 2.0)
  np.testing.assert_allclose(losses.aggregate_loss(loss_bt, mask_bt, "seq_mean_token_sum"), 4.0)


def test_unknown_aggregation_and_bad_shapes_raise():
  """An unknown aggregation or a log-prob array of the wrong shape raises a ValueError."""
  with pytest.raises(ValueError, match="aggregation"):
    losses.aggregate_loss(np.zeros((B, T)), MASK_BT, "sum")
  with pytest.raises(ValueError, match="logprobs_bt"):
    losses.policy_gradient_loss(np.zeros((B, T + 1)), np.zeros((B, T)), np.zeros(B), MASK_BT)


# ----------------------------------------------------------------------------- value model


def _value_inputs():
  rng = np.random.default_rng(8)
  old_values_bt = rng.normal(size=(B, T))
  values_bt = old_values_bt + rng.choice([-0.5, -0.1, 0.05, 0.3], (B, T))
  returns_bt = old_values_bt + rng.choice([-0.8, -0.2, 0.6], (B, T)) + rng.normal(0, 0.05, (B, T))
  return _pad(values_bt), _pad(old_values_bt), _pad(returns_bt)


def _hand_value_losses(values_bt, old_values_bt, returns_bt, clip_range):
  token_losses, clipped = {}, 0
  for b, t in _valid(MASK_BT):
    v, v_old, r = values_bt[b, t], old_values_bt[b, t], returns_bt[b, t]
    v_clipped = v_old + min(max(v - v_old, -clip_range), clip_range)
    token_losses[b, t] = 0.5 * max((v - r) ** 2, (v_clipped - r) ** 2)
    clipped += (v_clipped - r) ** 2 > (v - r) ** 2
  return token_losses, clipped


@pytest.mark.parametrize("mode", MODES)
def test_value_loss_matches_hand_computation(mode):
  """The clipped value loss equals 0.5 max((V - R)^2, (V_clip - R)^2) aggregated by hand."""
  values_bt, old_values_bt, returns_bt = _value_inputs()
  token_losses, _ = _hand_value_losses(values_bt, old_values_bt, returns_bt, 0.2)
  loss, metrics = value_loss(values_bt, old_values_bt, returns_bt, MASK_BT, 0.2, aggregation=mode)
  np.testing.assert_allclose(loss, _hand_aggregate(token_losses, MASK_BT, mode), rtol=1e-5)
  np.testing.assert_allclose(metrics["value_loss"], loss, rtol=1e-7)


def test_value_clip_fraction_matches_hand_count():
  """value_clip_fraction is the share of valid tokens where the clipped error is larger."""
  values_bt, old_values_bt, returns_bt = _value_inputs()
  _, clipped = _hand_value_losses(values_bt, old_values_bt, returns_bt, 0.2)
  assert 0 < clipped < len(_valid(MASK_BT)), "fixture must clip some tokens and not others"
  _, metrics = value_loss(values_bt, old_values_bt, returns_bt, MASK_BT, 0.2)
  np.testing.assert_allclose(metrics["value_clip_fraction"], clipped / len(_valid(MASK_BT)), rtol=1e-6)


def test_value_loss_without_clip_is_half_squared_error():
  """With clip_range None the value loss is the token mean of 0.5 (V - R)^2."""
  values_bt, old_values_bt, returns_bt = _value_inputs()
  expected = np.mean([0.5 * (values_bt[b, t] - returns_bt[b, t]) ** 2 for b, t in _valid(MASK_BT)])
  loss, _ = value_loss(values_bt, old_values_bt, returns_bt, MASK_BT, None)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_explained_variance_matches_hand_computation():
  """explained_variance = 1 - Var[R - V] / Var[R] over valid tokens; nan when Var[R] = 0."""
  values_bt, _, returns_bt = _value_inputs()
  valid = _valid(MASK_BT)
  returns = np.array([returns_bt[b, t] for b, t in valid])
  residuals = np.array([returns_bt[b, t] - values_bt[b, t] for b, t in valid])
  expected = 1.0 - residuals.var() / returns.var()
  np.testing.assert_allclose(jax.jit(losses.explained_variance)(values_bt, returns_bt, MASK_BT),
                             expected, rtol=1e-5)
  assert np.isnan(losses.explained_variance(values_bt, _pad(np.ones((B, T))), MASK_BT))


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("normalize_std", [True, False])
def test_grpo_advantages_match_hand_computation(normalize_std):
  """Each sample's advantage is reward - group mean (divided by group std + eps), prompt-major."""
  rewards_b = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5, 0.25])
  group_size = 3
  expected_b = []
  for start in range(0, len(rewards_b), group_size):
    group = rewards_b[start:start + group_size]
    mean = sum(group) / group_size
    std = math.sqrt(sum((r - mean) ** 2 for r in group) / group_size)
    for r in group:
      expected_b.append((r - mean) / (std + 1e-6) if normalize_std else r - mean)
  np.testing.assert_allclose(grpo_advantages(rewards_b, group_size=group_size,
                                             normalize_std=normalize_std),
                             expected_b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reward", [0.1, 1 / 3, 0.9428571, 1.0])
def test_grpo_advantages_are_exactly_zero_for_equal_rewards(reward):
  """A group of 8 equal rewards gets advantage exactly 0, also where their float32 mean is an ulp off (0.1)."""
  rewards_b = np.concatenate([np.full(8, reward, np.float32), np.array([0, 1, 0, 1, 0, 1, 0, 1], np.float32)])
  advantages_b = np.asarray(grpo_advantages(rewards_b, group_size=8, normalize_std=True))
  np.testing.assert_array_equal(advantages_b[:8], 0.0)
  np.testing.assert_allclose(advantages_b[8:], [-1, 1] * 4, rtol=1e-5)
  assert not np.isfinite(np.asarray(grpo_advantages(np.full(8, np.inf, np.float32), group_size=8))).any()


def test_grpo_advantages_reject_group_size_not_dividing_batch():
  """A group size that does not divide the batch raises a ValueError."""
  with pytest.raises(ValueError, match="group_size"):
    adv_lib.grpo_advantages(np.zeros(7), 3)


def test_gae_matches_numpy_backward_loop():
  """GAE (gamma 0.9, lambda 0.8) equals a backwards loop over each row's valid tokens."""
  rng = np.random.default_rng(9)
  rewards_bt = _pad(rng.normal(size=(B, T)))
  values_bt = _pad(rng.normal(size=(B, T)))
  gamma, lam = 0.9, 0.8
  expected_advantages_bt = np.zeros((B, T))
  expected_returns_bt = np.zeros((B, T))
  for b in range(B):
    next_value, next_advantage = 0.0, 0.0
    for t in reversed(range(T)):
      if not MASK_BT[b, t]:
        continue
      delta = rewards_bt[b, t] + gamma * next_value - values_bt[b, t]
      next_advantage = delta + gamma * lam * next_advantage
      next_value = values_bt[b, t]
      expected_advantages_bt[b, t] = next_advantage
      expected_returns_bt[b, t] = next_advantage + values_bt[b, t]
  advantages_bt, returns_bt = gae(rewards_bt, values_bt, MASK_BT, gamma, lam)
  np.testing.assert_allclose(advantages_bt, expected_advantages_bt, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(returns_bt, expected_returns_bt, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_hand_computation(shift_mean):
  """whiten = (x - mean) / sqrt(var + eps) over valid entries (+ mean back if not shift_mean)."""
  x_bt = _pad(np.random.default_rng(10).normal(3.0, 2.0, (B, T)))
  values = [x_bt[b, t] for b, t in _valid(MASK_BT)]
  mean = sum(values) / len(values)
  variance = sum((v - mean) ** 2 for v in values) / len(values)
  expected_bt = np.zeros((B, T))
  for b, t in _valid(MASK_BT):
    expected_bt[b, t] = (x_bt[b, t] - mean) / math.sqrt(variance + 1e-8) + (0.0 if shift_mean else mean)
  np.testing.assert_allclose(whiten(x_bt, MASK_BT, shift_mean=shift_mean), expected_bt,
                             rtol=1e-5, atol=1e-6)


def test_outcome_token_rewards_put_score_on_last_valid_token_minus_kl():
  """Each row's score lands on its last valid token; every valid token pays kl_coef * kl."""
  mask_bt = np.concatenate([MASK_BT, np.zeros((1, T), bool)])
  scores_b = np.array([1.0, 0.5, -2.0, 7.0])
  kl_bt = _pad(np.random.default_rng(11).uniform(0, 0.5, (B + 1, T)), mask_bt)
  expected_bt = np.zeros((B + 1, T))
  for b in range(B + 1):
    valid_t = [t for t in range(T) if mask_bt[b, t]]
    for t in valid_t:
      expected_bt[b, t] = -0.1 * kl_bt[b, t]
    if valid_t:
      expected_bt[b, valid_t[-1]] += scores_b[b]
  rewards_bt = jax.jit(adv_lib.outcome_token_rewards)(scores_b, mask_bt, kl_bt, 0.1)
  np.testing.assert_allclose(rewards_bt, expected_bt, rtol=1e-6, atol=1e-7)
