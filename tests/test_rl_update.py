"""Tests for the jitted GRPO / PPO update step, chunked log-probs, LoRA and the value model on tiny decoders."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memr1_jax import sharding
from memr1_jax.models import lora
from memr1_jax.models import value as value_lib
from memr1_jax.models.config import get_preset
from memr1_jax.models.decoder import Decoder
from memr1_jax.rl import logprobs as logprobs_lib
from memr1_jax.rl import losses
from memr1_jax.rl import train_state as ts
from memr1_jax.rl import update as up

VOCAB = 64
# Every sharded dimension divides by 2, so a (2, 2, 2) mesh really splits each weight.
CFG = get_preset("tiny", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                 num_kv_heads=2, head_dim=8)
B, P, T, G = 8, 4, 5, 4
LR = 1e-2
# Adam's eps is large enough that the first step is smooth in the gradient (not lr * sign(g)), so that
# float reassociation between two equivalent computations cannot flip the update of a near-zero gradient.
ADAM_EPS = 1e-3


def _batch(seed=0, vocab=VOCAB, behaviour_logprobs=False) -> up.RolloutBatch:
  """B rows in GRPO groups of G sharing a left-padded prompt (group 0's padded), right-padded responses of lengths
  1..T (one with a hole), 0/1 scores, and optionally behaviour log-probs (else the step recomputes them)."""
  rng = np.random.default_rng(seed)
  prompt_mask = np.ones((B, P), bool)
  prompt_mask[:G, :2] = False
  response_mask = np.arange(T)[None, :] < rng.integers(1, T + 1, B)[:, None]
  response_mask[1, 1] = False
  scores = rng.integers(0, 2, B).astype(np.float32)
  scores[:G] = [1.0, 0.0, 0.0, 1.0]
  batch = up.RolloutBatch(
      prompt_ids_bp=np.repeat(rng.integers(0, vocab, (B, P))[::G], G, axis=0).astype(np.int32),
      prompt_mask_bp=prompt_mask,
      response_ids_bt=rng.integers(0, vocab, (B, T)).astype(np.int32), response_mask_bt=response_mask,
      scores_b=scores)
  if behaviour_logprobs:
    batch = batch.replace(old_logprobs_bt=(-np.log(vocab) + rng.uniform(-0.3, 0.3, (B, T))).astype(np.float32))
  return batch


def _learner(*, seed=0, algorithm="grpo", lora_rank=0, mesh=None, reference=True, cfg=CFG, master_dtype="float32",
             reference_memory="device", optimizer_memory="device"):
  """(state, frozen, spec) of a freshly initialised tiny learner (same weights for the same seed)."""
  policy = Decoder(cfg, rngs=nnx.Rngs(seed))
  if lora_rank:
    policy = lora.add_lora(policy, lora_rank, 8.0, seed=seed + 1)
  schedule = ts.learning_rate_schedule(LR)
  value_model = critic_tx = critic_lr = None
  if algorithm == "ppo":
    value_model = value_lib.value_model_from_decoder(policy, copy=not lora_rank)
    critic_tx, critic_lr = ts.make_optimizer(schedule, eps=ADAM_EPS), schedule
  return ts.init_train_state(policy, ts.make_optimizer(schedule, eps=ADAM_EPS), actor_lr=schedule,
                             value_model=value_model, critic_tx=critic_tx, critic_lr=critic_lr, reference=reference,
                             mesh=mesh, master_dtype=master_dtype, reference_memory=reference_memory,
                             optimizer_memory=optimizer_memory)


_STEPS = {}


def _step(spec, config, **learner_kw):
  """The jitted update step for learners built by `_learner(**learner_kw)`, compiled once per test module."""
  key = (config, tuple(sorted(learner_kw.items())))
  if key not in _STEPS:
    _STEPS[key] = up.make_update_step(spec, config)
  return _STEPS[key]


def _config(**overrides) -> up.UpdateConfig:
  kw = dict(algorithm="grpo", micro_batch_size=4, group_size=G, kl_coef=0.05, entropy_coef=0.01,
            aggregation="seq_mean_token_mean", logprob_chunk=3, shuffle=False)
  kw.update(overrides)
  return up.UpdateConfig(**kw)


# PPO, 2 shuffled epochs, 2 micro-batches of 4 rows (4 divides the (2, 2, 2) mesh's data x fsdp).
PPO_CONFIG = _config(algorithm="ppo", micro_batch_size=4, epochs=2, shuffle=True)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), _host(a), _host(b))


def test_chunked_logprobs_match_full_log_softmax():
  """Chunked response log-probs and entropies equal log_softmax / entropy of the full forward's shifted logits
  (response holes are scored out but stay in context, as they were when the response was sampled)."""
  model = Decoder(CFG, rngs=nnx.Rngs(0))
  batch = _batch()
  logprobs_bt, entropy_bt = jax.jit(lambda m: logprobs_lib.response_logprobs(
      m, batch.prompt_ids_bp, batch.prompt_mask_bp, batch.response_ids_bt, batch.response_mask_bt,
      chunk_size=2))(model)
  ids = np.concatenate([batch.prompt_ids_bp, batch.response_ids_bt], 1)
  mask = np.concatenate([batch.prompt_mask_bp, np.ones_like(batch.response_mask_bt)], 1)
  logits_btv = np.asarray(jax.jit(lambda m: m(ids, mask))(model))[:, P - 1:P + T - 1]
  log_probs_btv = np.asarray(jax.nn.log_softmax(logits_btv))
  expected = np.take_along_axis(log_probs_btv, batch.response_ids_bt[..., None], -1)[..., 0]
  valid = batch.response_mask_bt
  np.testing.assert_allclose(np.asarray(logprobs_bt)[valid], expected[valid], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(entropy_bt)[valid],
                             np.asarray(losses.entropy_from_logits(logits_btv))[valid], rtol=1e-5, atol=1e-5)


def test_chunked_logprob_gradient_matches_unchunked():
  """The gradient through rematerialised logits chunks equals the gradient of the one-chunk computation."""
  model = Decoder(CFG, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(model)
  batch = _batch(1)
  weights_bt = np.random.default_rng(0).normal(size=(B, T)).astype(np.float32) * batch.response_mask_bt

  def objective(params, chunk):
    logprobs_bt, entropy_bt = logprobs_lib.response_logprobs(
        nnx.merge(graphdef, params), batch.prompt_ids_bp, batch.prompt_mask_bp, batch.response_ids_bt,
        batch.response_mask_bt, chunk_size=chunk)
    return jnp.sum(weights_bt * (logprobs_bt + 0.3 * entropy_bt))

  chunked = jax.jit(jax.grad(lambda p: objective(p, 2)))(params)
  whole = jax.jit(jax.grad(lambda p: objective(p, None)))(params)
  _assert_trees_close(chunked, whole, rtol=1e-4, atol=1e-6)


def _weighted_logprobs(graphdef, batch, seed, **kwargs):
  """Jitted value_and_grad of params -> (sum(a * log-probs + b * entropies), (log-probs, entropies)) of `batch`'s
  responses, random weights a, b on their tokens (from `seed`); kwargs go to `response_logprobs`."""
  rng = np.random.default_rng(seed)
  a_bt, b_bt = (rng.normal(size=(B, T)).astype(np.float32) * batch.response_mask_bt for _ in range(2))

  def objective(params):
    logprobs_bt, entropy_bt = logprobs_lib.response_logprobs(
        nnx.merge(graphdef, params), batch.prompt_ids_bp, batch.prompt_mask_bp, batch.response_ids_bt,
        batch.response_mask_bt, **kwargs)
    return jnp.sum(a_bt * logprobs_bt + b_bt * entropy_bt), (logprobs_bt, entropy_bt)

  return jax.jit(jax.value_and_grad(objective, has_aux=True))


@pytest.mark.parametrize("chunk", [3, None])
def test_fused_logprobs_values_and_gradients_equal_the_plain_path(chunk):
  """The custom-VJP fused log-softmax / gather / entropy gives the plain path's values and parameter gradients."""
  graphdef, params = nnx.split(Decoder(CFG, rngs=nnx.Rngs(2)))
  batch = _batch(2)
  (_, fused_out), fused_grad = _weighted_logprobs(graphdef, batch, 1, chunk_size=chunk, fused=True)(params)
  (_, plain_out), plain_grad = _weighted_logprobs(graphdef, batch, 1, chunk_size=chunk, fused=False)(params)
  _assert_trees_close(fused_out, plain_out, rtol=1e-5, atol=1e-5)
  _assert_trees_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(fused_grad["embed_vd"])).max() > 1e-3  # the tied unembedding does get a gradient


@pytest.mark.parametrize("fused,remat", [(False, False), (True, True)])
def test_shared_prefix_logprobs_and_gradients_equal_the_per_row_path(fused, remat):
  """Log-probs, entropies and parameter gradients with each group's prompt run once (group_size=G) equal those of
  every row run whole (left-padded and unpadded prompts, ragged responses; layers rematerialised or not)."""
  graphdef, params = nnx.split(Decoder(CFG.replace(num_layers=2, remat=remat), rngs=nnx.Rngs(4)))
  batch = _batch(4)
  hidden_grad = jax.grad(lambda p: jnp.sum(logprobs_lib.shared_prefix_hidden(
      nnx.merge(graphdef, p), batch.prompt_ids_bp, batch.prompt_mask_bp, batch.response_ids_bt, G)))
  assert ("remat" in str(jax.make_jaxpr(hidden_grad)(params))) == remat  # Layers rematerialised as configured.
  (_, shared), shared_grad = _weighted_logprobs(graphdef, batch, 2, chunk_size=3, fused=fused, group_size=G)(params)
  (_, rows), rows_grad = _weighted_logprobs(graphdef, batch, 2, chunk_size=3, fused=fused, group_size=1)(params)
  valid = batch.response_mask_bt
  for x, y in zip(shared, rows):
    np.testing.assert_allclose(np.asarray(x)[valid], np.asarray(y)[valid], rtol=1e-5, atol=1e-5)
  _assert_trees_close(shared_grad, rows_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["whole_groups", "half_groups_shuffled", "dead_groups_skipped", "mesh"])
def test_grpo_update_with_shared_prefix_equals_the_per_row_update(kind):
  """A GRPO step whose groups' prompts run once per micro-batch (whole groups, half-groups with shuffled rows, the
  skip of equal-reward groups, a (2, 2, 2) mesh) gives the weights and metrics of the per-row step."""
  batch = jax.tree.map(lambda a, b: np.concatenate([a, b]), _batch(5, behaviour_logprobs=True),
                       _batch(6, behaviour_logprobs=True))
  config = _config(micro_batch_size=G)
  mesh = None
  if kind == "half_groups_shuffled":
    config = _config(micro_batch_size=2, shuffle=True)
  elif kind == "dead_groups_skipped":
    batch.scores_b[4:8] = 1.0  # Group 1 of 4 has equal rewards: its micro-batch is not run.
    config = _config(micro_batch_size=G, kl_coef=0.0, entropy_coef=0.0, shuffle=True)
  elif kind == "mesh":
    mesh = sharding.make_mesh((2, 2, 2))
    config = _config(micro_batch_size=2 * G, shuffle=True)
  assert config.prefix_unit == min(config.micro_batch_size, G)
  results = []
  for shared in (True, False):
    state, frozen, spec = _learner(mesh=mesh)
    step = up.make_update_step(spec, dataclasses.replace(config, shared_prefix=shared))
    state, metrics = step(state, frozen, batch, jax.random.key(1))
    results.append((_host(state.policy), _host(metrics)))
  _assert_trees_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
  for name in ("loss", "pg_loss", "grad_norm", "entropy"):
    np.testing.assert_allclose(results[0][1][name], results[1][1][name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("master_dtype", ["float32", "bfloat16"])
def test_a_1e6_update_is_kept_by_float32_master_weights_and_rounded_away_in_bfloat16(master_dtype):
  """One GRPO step at lr 1e-6 moves float32 master weights of size >= 1e-3 by ~1e-6; bfloat16 ones stay put."""
  policy = Decoder(CFG, rngs=nnx.Rngs(3))
  schedule = ts.learning_rate_schedule(1e-6)
  state, frozen, spec = ts.init_train_state(policy, ts.make_optimizer(schedule), actor_lr=schedule,
                                            reference=False, master_dtype=master_dtype)
  before = _host(state.policy)
  step = up.make_update_step(spec, up.UpdateConfig(kl_coef=0.0, group_size=G, shuffle=False))
  state, _ = step(state, frozen, _batch(), jax.random.key(0))
  moved = []
  for w0, w1 in zip(jax.tree.leaves(before), jax.tree.leaves(_host(state.policy))):
    w0, w1 = np.asarray(w0, np.float64), np.asarray(w1, np.float64)
    moved.append(np.abs(w1 - w0)[np.abs(w0) >= 1e-3])
  moved = np.concatenate(moved)
  if master_dtype == "float32":
    assert np.mean(moved > 5e-7) > 0.5 and moved.max() < 1.1e-6
  else:
    assert moved.max() == 0.0


def test_bfloat16_adam_moments_are_stored_in_bfloat16_and_track_float32_ones():
  """make_optimizer(mu_dtype, nu_dtype=bfloat16) keeps bf16 moments whose updates stay within 2% of float32 ones."""
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 16)), jnp.float32)}
  grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1)), params) for i in range(5)]
  results = {}
  for dtype in ("float32", "bfloat16"):
    tx = ts.make_optimizer(1e-3, max_grad_norm=None, mu_dtype=dtype, nu_dtype=dtype, b2=0.99)
    opt = tx.init(params)
    for g in grads:
      updates, opt = tx.update(g, opt, params)
    results[dtype] = (updates["w"], [x.dtype for x in jax.tree.leaves(opt) if x.ndim == 2])
  assert results["bfloat16"][1] == [jnp.bfloat16, jnp.bfloat16]
  assert results["float32"][1] == [jnp.float32, jnp.float32]
  np.testing.assert_allclose(results["bfloat16"][0], results["float32"][0], rtol=2e-2, atol=1e-5)


def test_surrogate_gradient_matches_finite_differences():
  """d(loss)/d(params) of the update's micro-batch loss (clip, k3 KL, entropy) equals central differences."""
  with jax.enable_x64(True):
    cfg64 = CFG.replace(param_dtype="float64", dtype="float64")
    state, frozen, spec = _learner(cfg=cfg64, master_dtype="float64")
    # A reference that differs from the policy, so the KL term has a gradient.
    frozen = frozen.replace(reference=_host(_learner(seed=7, cfg=cfg64, master_dtype="float64")[1].reference))
    config = _config(micro_batch_size=B)
    batch = _batch()
    rows, _ = jax.jit(lambda s, f, b: up.prepare_rows(spec, config, s, f, b))(state, frozen, batch)
    # Behaviour log-probs a little off the current policy: ratios in (0.9, 1.1), inside the clip range.
    noise_bt = np.random.default_rng(3).uniform(-0.1, 0.1, (B, T))
    rows["old_logprobs_bt"] = rows["old_logprobs_bt"] + noise_bt * batch.response_mask_bt
    loss_fn = jax.jit(lambda p: up.microbatch_loss(spec, config, (p, None), frozen, rows)[0])
    grads = jax.jit(jax.grad(lambda p: up.microbatch_loss(spec, config, (p, None), frozen, rows)[0]))(state.policy)
    leaves, treedef = jax.tree.flatten(state.policy)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    direction = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(keys, leaves)])
    # RoPE and RMSNorm run in float32 even here, which puts a noise floor of ~1e-8 under the loss: h balances
    # that against the O(h^2) truncation error (both measured below 3e-4 relative for these directions).
    h = 4e-4
    for part in ("layers", "embed_vd"):
      along = {k: (v if k == part else jax.tree.map(jnp.zeros_like, v)) for k, v in direction.items()}
      shifted = lambda sign: jax.tree.map(lambda p, d: p + sign * h * d, state.policy, along)  # noqa: E731
      numeric = (float(loss_fn(shifted(1.0))) - float(loss_fn(shifted(-1.0)))) / (2 * h)
      analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(along)))
      assert abs(analytic) > 1e-2, part
      np.testing.assert_allclose(analytic, numeric, rtol=2e-3, err_msg=part)


def test_ppo_whiten_rewards_gives_every_response_token_its_rows_whitened_score_as_return():
  """PPO (gamma = lambda = 1) with whiten_rewards: each response token's return is its row's score minus the batch's
  mean, over the batch's std; without it, the raw score."""
  state, frozen, spec = _learner(algorithm="ppo")
  batch = _batch()
  scores_b = np.asarray(batch.scores_b, np.float64)
  mask_bt = np.asarray(batch.response_mask_bt)
  assert 0 < scores_b.mean() < 1  # Whitening moves both 0 and 1 scores.
  whitened_b = (scores_b - scores_b.mean()) / np.sqrt(scores_b.var() + 1e-8)
  for whiten_rewards, expected_b in ((True, whitened_b), (False, scores_b)):
    config = _config(algorithm="ppo", whiten_rewards=whiten_rewards)
    rows, _ = jax.jit(lambda s, f, b, c=config: up.prepare_rows(spec, c, s, f, b))(state, frozen, batch)
    np.testing.assert_allclose(np.asarray(rows["returns_bt"])[mask_bt],
                               np.broadcast_to(expected_b[:, None], mask_bt.shape)[mask_bt], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_gradient_accumulation_equals_full_batch(aggregation):
  """Accumulating 4 micro-batches of 2 rows gives the gradient and metrics of one batch of 8 rows."""
  state, frozen, spec = _learner()
  config = _config(aggregation=aggregation, micro_batch_size=2)  # Half-groups: each pair shares its prompt run.
  rows, _ = jax.jit(lambda s, f, b: up.prepare_rows(spec, config, s, f, b))(state, frozen, _batch())
  grads_fn = jax.jit(lambda r: up.minibatch_gradients(spec, config, (state.policy, None), frozen, r))
  full = grads_fn(jax.tree.map(lambda x: x[None], rows))
  accumulated = grads_fn(up.split_unit_rows(rows, config.prefix_unit, 4))
  _assert_trees_close(accumulated, full, rtol=1e-4, atol=1e-7)


def test_update_with_micro_batches_equals_one_big_batch():
  """The whole PPO update (2 shuffled epochs) gives the same weights with 2 micro-batches as with 1."""
  results = []
  for config in (dataclasses.replace(PPO_CONFIG, micro_batch_size=B), PPO_CONFIG):
    state, frozen, spec = _learner(algorithm="ppo")
    state, metrics = _step(spec, config, algorithm="ppo")(state, frozen, _batch(behaviour_logprobs=True),
                                                          jax.random.key(0))
    results.append((_host(state), _host(metrics)))
  _assert_trees_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
  for name in ("loss", "value_loss", "kl", "grad_norm", "explained_variance"):
    np.testing.assert_allclose(results[0][1][name], results[1][1][name], rtol=1e-4, err_msg=name)


def test_grpo_update_skips_rows_without_advantage_and_keeps_the_full_batch_gradient():
  """GRPO without KL / entropy terms: micro-batches of equal-reward groups are not run (NaN behaviour log-probs there
  do not reach the loss), and the weights equal those of one micro-batch holding every row (also on 8 devices)."""
  batch = jax.tree.map(lambda a, b: np.concatenate([a, b]), _batch(0, behaviour_logprobs=True),
                       _batch(1, behaviour_logprobs=True))
  batch.scores_b[4:8] = 0.1  # Groups 1 and 3 (of 4) have equal rewards: advantage 0, no gradient.
  batch.scores_b[12:16] = 1.0
  config = _config(kl_coef=0.0, entropy_coef=0.0, micro_batch_size=4, shuffle=True)
  assert up.skips_dead_rows(_learner()[2], config) and not up.skips_dead_rows(_learner()[2], _config())
  results = []
  for micro, mesh in ((2 * B, None), (4, None), (4, sharding.make_mesh((2, 2, 2)))):
    state, frozen, spec = _learner(mesh=mesh)
    step = up.make_update_step(spec, dataclasses.replace(config, micro_batch_size=micro))
    state, metrics = step(state, frozen, batch, jax.random.key(3))
    results.append((_host(state.policy), _host(metrics)))
  _assert_trees_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
  _assert_trees_close(results[2][0], results[1][0], rtol=1e-4, atol=1e-6)
  for name in ("loss", "pg_loss", "grad_norm"):  # (Averages such as clip_fraction are over the rows run.)
    np.testing.assert_allclose(results[0][1][name], results[1][1][name], rtol=1e-4, err_msg=name)
  poisoned = jax.tree.map(np.copy, batch)
  poisoned.old_logprobs_bt[4:8] = np.nan
  poisoned.old_logprobs_bt[12:16] = np.nan
  state, frozen, spec = _learner()
  _, metrics = _step(spec, config)(state, frozen, poisoned, jax.random.key(3))
  assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))


def test_update_changes_weights_and_reports_metrics():
  """A finite GRPO step changes the policy, counts one update and reports finite loss parts, KL and entropy."""
  state, frozen, spec = _learner()
  before = _host(state.policy)
  state, metrics = _step(spec, _config())(state, frozen, _batch(behaviour_logprobs=True), jax.random.key(0))
  metrics = _host(metrics)
  assert int(state.updates) == 1 and metrics["skipped"] == 0.0
  for name in ("loss", "pg_loss", "kl", "entropy", "clip_fraction", "grad_norm", "rollout_kl", "reward_mean"):
    assert np.isfinite(metrics[name]), name
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, _host(state.policy))
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("optimizer_memory", ["device", "host"])
def test_update_of_a_model_on_a_one_device_mesh_compiles_once(optimizer_memory):
  """A model placed on a 1-device mesh, learner without a mesh (what mode=train does on one device): the second step
  reuses the first step's program (its counters start where the step returns them); host optimizer states stay in
  host memory."""
  policy = sharding.shard_model(Decoder(CFG, rngs=nnx.Rngs(0)), sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
  schedule = ts.learning_rate_schedule(LR)
  state, frozen, spec = ts.init_train_state(policy, ts.make_optimizer(schedule, eps=ADAM_EPS), actor_lr=schedule,
                                            optimizer_memory=optimizer_memory)
  step = up.make_update_step(spec, _config())
  batch = _batch(behaviour_logprobs=True)
  for seed in range(2):
    state, _ = step(state, frozen, batch, jax.random.key(seed))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  kind = "pinned_host" if optimizer_memory == "host" else "device"
  assert {x.sharding.memory_kind for x in jax.tree.leaves(state.policy_opt)} == {kind}


def test_nonfinite_reward_skips_update():
  """A NaN score leaves parameters and optimizer state untouched and sets metrics['skipped']."""
  state, frozen, spec = _learner()
  before = _host(state)
  batch = _batch(behaviour_logprobs=True)
  batch.scores_b[2] = np.nan
  state, metrics = _step(spec, _config())(state, frozen, batch, jax.random.key(0))
  assert float(metrics["skipped"]) == 1.0 and float(metrics["skipped_updates"]) == 1.0
  jax.tree.map(np.testing.assert_array_equal, _host(state), before)


def test_nan_behaviour_logprob_at_padding_is_ignored():
  """A NaN old log-prob on a padded response position does not skip the update."""
  state, frozen, spec = _learner()
  batch = _batch(behaviour_logprobs=True)
  batch.old_logprobs_bt[~batch.response_mask_bt] = np.nan
  _, metrics = _step(spec, _config())(state, frozen, batch, jax.random.key(0))
  assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))


def test_lora_with_zero_b_equals_base_model():
  """Fresh adapters (B = 0) leave the logits unchanged."""
  base = Decoder(CFG, rngs=nnx.Rngs(0))
  batch = _batch()
  expected = np.asarray(base(batch.prompt_ids_bp, batch.prompt_mask_bp))
  adapted = lora.add_lora(base, 4, 8.0)
  np.testing.assert_array_equal(np.asarray(adapted(batch.prompt_ids_bp, batch.prompt_mask_bp)), expected)


def test_lora_step_trains_only_adapters():
  """Under LoRA only adapter weights have optimizer state and change; the base (= reference) is untouched."""
  state, frozen, spec = _learner(lora_rank=4)
  base_before = _host(frozen.policy)
  adapters_before = _host(state.policy)
  assert {p[-1].key for p, _ in jax.tree_util.tree_flatten_with_path(state.policy)[0]} == {"a", "b"}
  num_adapter = sum(x.size for x in jax.tree.leaves(state.policy))
  # Adam keeps two moments per trained weight, plus step counters.
  opt_sizes = sum(x.size for x in jax.tree.leaves(state.policy_opt))
  assert 2 * num_adapter <= opt_sizes < 2 * num_adapter + 8
  state, metrics = _step(spec, _config(), lora_rank=4)(state, frozen, _batch(behaviour_logprobs=True),
                                                       jax.random.key(0))
  assert float(metrics["skipped"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, _host(frozen.policy), base_before)
  b_weights = [v for p, v in jax.tree_util.tree_flatten_with_path(_host(state.policy))[0] if p[-1].key == "b"]
  assert all(np.abs(b).max() > 0 for b in b_weights)
  assert not np.array_equal(adapters_before["layers"][0]["mlp"]["up_lora"]["b"],
                            _host(state.policy)["layers"][0]["mlp"]["up_lora"]["b"])


def test_lora_reference_is_base_model():
  """The LoRA learner's reference model gives the base model's logits, after the adapters have been trained."""
  base = Decoder(CFG, rngs=nnx.Rngs(0))
  batch = _batch(behaviour_logprobs=True)
  expected = np.asarray(base(batch.prompt_ids_bp, batch.prompt_mask_bp))
  state, frozen, spec = _learner(lora_rank=4)
  state, _ = _step(spec, _config(), lora_rank=4)(state, frozen, batch, jax.random.key(0))
  reference = ts.reference_model(spec, frozen)
  np.testing.assert_array_equal(np.asarray(reference(batch.prompt_ids_bp, batch.prompt_mask_bp)), expected)
  policy = ts.policy_model(spec, state, frozen)
  assert np.abs(np.asarray(policy(batch.prompt_ids_bp, batch.prompt_mask_bp)) - expected).max() > 1e-4


def test_merged_lora_equals_lora_forward():
  """merge_lora folds trained adapters into the base weights: same logits, no adapters left."""
  state, frozen, spec = _learner(lora_rank=4)
  batch = _batch(behaviour_logprobs=True)
  state, _ = _step(spec, _config(), lora_rank=4)(state, frozen, batch, jax.random.key(0))
  policy = ts.policy_model(spec, state, frozen)
  merged = lora.merge_lora(policy)
  assert merged.cfg.lora_rank == 0 and not jax.tree.leaves(nnx.state(merged, nnx.LoRAParam))
  np.testing.assert_allclose(np.asarray(merged(batch.prompt_ids_bp, batch.prompt_mask_bp)),
                             np.asarray(policy(batch.prompt_ids_bp, batch.prompt_mask_bp)), rtol=1e-5, atol=1e-5)


def test_lora_adapters_carry_logical_axes():
  """Adapter weights are annotated with the base weight's axes plus 'lora_rank', so they shard by the rules."""
  model = lora.add_lora(Decoder(CFG, rngs=nnx.Rngs(0)), 4)
  attn = model.layers[0].attn
  assert attn.q_lora.a.get_metadata()["logical_axes"] == ("embed", "lora_rank")
  assert attn.q_lora.b.get_metadata()["logical_axes"] == ("lora_rank", "heads", "head_dim")
  assert attn.o_lora.a.get_metadata()["logical_axes"] == ("heads", "head_dim", "lora_rank")


def test_value_model_starts_at_zero_and_shares_policy_weights():
  """A value model built from the policy has the policy's backbone weights and predicts 0 at start."""
  policy = Decoder(CFG, rngs=nnx.Rngs(0))
  value_model = value_lib.value_model_from_decoder(policy)
  np.testing.assert_array_equal(np.asarray(value_model.backbone.embed_vd[...]), np.asarray(policy.embed_vd[...]))
  batch = _batch()
  np.testing.assert_array_equal(np.asarray(value_model(batch.prompt_ids_bp, batch.prompt_mask_bp)), 0.0)


def test_sharded_update_matches_single_device():
  """PPO with a reference on a (2, 2, 2) mesh of 8 CPU devices gives the single-device weights and metrics."""
  state, frozen, spec = _learner(algorithm="ppo")
  batch = _batch(behaviour_logprobs=True)
  expected_state, expected_metrics = _step(spec, PPO_CONFIG, algorithm="ppo")(state, frozen, batch,
                                                                              jax.random.key(0))
  state, frozen, spec = _learner(algorithm="ppo", mesh=sharding.make_mesh((2, 2, 2)))
  embed = state.policy["embed_vd"]
  assert len(embed.sharding.device_set) == 8 and embed.addressable_shards[0].data.shape == (VOCAB // 2, 32 // 2)
  new_state, metrics = up.make_update_step(spec, PPO_CONFIG)(state, frozen, batch, jax.random.key(0))
  assert new_state.policy["embed_vd"].sharding == embed.sharding
  _assert_trees_close(new_state, expected_state, rtol=1e-4, atol=1e-6)
  for name in ("loss", "value_loss", "kl", "grad_norm", "entropy", "explained_variance"):
    np.testing.assert_allclose(float(metrics[name]), float(expected_metrics[name]), rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_reference_in_host_memory_scores_apart_and_gives_the_device_reference_update(mesh_shape):
  """A reference in pinned host memory, scored in its own program, gives the update of a reference on the device
  (PPO, KL in the loss; no mesh and a (2, 2, 2) mesh); the update step then takes no reference weights."""
  batch = _batch(behaviour_logprobs=True)
  state, device_frozen, device_spec = _learner(algorithm="ppo")
  expected_state, expected_metrics = _step(device_spec, PPO_CONFIG, algorithm="ppo")(state, device_frozen, batch,
                                                                                     jax.random.key(0))
  mesh = sharding.make_mesh(mesh_shape) if mesh_shape else None
  state, frozen, spec = _learner(algorithm="ppo", mesh=mesh, reference_memory="host")
  assert spec.reference_on_host
  assert {x.sharding.memory_kind for x in jax.tree.leaves(frozen.reference)} == {"pinned_host"}
  ref_logprobs_bt = up.make_reference_scorer(spec, PPO_CONFIG)(frozen, batch)
  direct_bt, _ = logprobs_lib.response_logprobs(
      ts.reference_model(device_spec, device_frozen), jnp.asarray(batch.prompt_ids_bp), jnp.asarray(batch.prompt_mask_bp), jnp.asarray(batch.response_ids_bt),
      jnp.asarray(batch.response_mask_bt))
  np.testing.assert_allclose(np.where(batch.response_mask_bt, ref_logprobs_bt, 0.0),
                             np.where(batch.response_mask_bt, direct_bt, 0.0), rtol=1e-5, atol=1e-5)
  step = up.make_update_step(spec, PPO_CONFIG)
  with pytest.raises(ValueError, match="make_reference_scorer"):
    step(state, frozen.replace(reference=None), batch, jax.random.key(0))
  new_state, metrics = step(state, frozen.replace(reference=None), batch.replace(ref_logprobs_bt=ref_logprobs_bt),
                            jax.random.key(0))
  _assert_trees_close(new_state, expected_state, rtol=1e-4, atol=1e-6)
  for name in ("loss", "kl", "rollout_kl", "grad_norm"):
    np.testing.assert_allclose(float(metrics[name]), float(expected_metrics[name]), rtol=1e-4, err_msg=name)


def _memory_kinds(tree) -> set[str]:
  return {x.sharding.memory_kind for x in jax.tree.leaves(tree)}


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_optimizer_states_in_host_memory_stay_there_and_give_the_device_updates(mesh_shape):
  """Optimizer states in pinned host memory stay there through two PPO steps (2 epochs: 4 updates) and give the
  weights, moments and metrics of states kept on the device (no mesh and a (2, 2, 2) mesh)."""
  batch = _batch(behaviour_logprobs=True)
  state, frozen, spec = _learner(algorithm="ppo")
  step = _step(spec, PPO_CONFIG, algorithm="ppo")
  expected = []
  for i in range(2):
    state, metrics = step(state, frozen, batch, jax.random.key(i))
    expected.append(metrics)
  mesh = sharding.make_mesh(mesh_shape) if mesh_shape else None
  host_state, frozen, spec = _learner(algorithm="ppo", mesh=mesh, optimizer_memory="host")
  assert spec.optimizer_on_host
  assert _memory_kinds((host_state.policy_opt, host_state.value_opt)) == {"pinned_host"}
  assert _memory_kinds((host_state.policy, host_state.value)) == {"device"}
  host_step = up.make_update_step(spec, PPO_CONFIG)
  for i in range(2):
    host_state, metrics = host_step(host_state, frozen, batch, jax.random.key(i))
    for name in ("loss", "value_loss", "kl", "grad_norm"):
      np.testing.assert_allclose(float(metrics[name]), float(expected[i][name]), rtol=1e-4, err_msg=name)
  assert _memory_kinds((host_state.policy_opt, host_state.value_opt)) == {"pinned_host"}
  assert _memory_kinds((host_state.policy, host_state.value)) == {"device"}
  assert int(host_state.updates) == 4
  _assert_trees_close(host_state, state, rtol=1e-4, atol=1e-6)


def test_a_non_finite_update_keeps_optimizer_states_in_host_memory_unchanged():
  """A NaN reward skips the update: the host-memory optimizer states keep their values and their memory kind."""
  state, frozen, spec = _learner(optimizer_memory="host")
  config = _config()
  state, _ = up.make_update_step(spec, config)(state, frozen, _batch(), jax.random.key(0))
  before = _host(state)
  bad = _batch()
  bad = bad.replace(scores_b=np.full_like(bad.scores_b, np.nan))
  state, metrics = up.make_update_step(spec, config)(state, frozen, bad, jax.random.key(1))
  assert float(metrics["skipped"]) == 1.0
  assert _memory_kinds(state.policy_opt) == {"pinned_host"}
  _assert_trees_close(_host(state), before, rtol=0, atol=0)


def test_learner_with_the_reference_in_host_memory_steps_like_one_with_it_on_the_device():
  """Learner.create with rl.reference_memory='host' scores the reference before each step: the same metrics and
  weights as with 'device'."""
  from memr1_jax import defaults, learner as learner_lib  # pylint: disable=g-import-not-at-top
  batch = _batch(behaviour_logprobs=True)
  packed = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
  results = []
  for where in ("device", "host"):
    c = defaults.default_config()
    c.rl.update(reference_memory=where, micro_batch_size=4, actor_lr=LR, kl_coef=0.05)
    c.rollout.group_size = G
    learner = learner_lib.Learner.create(c, Decoder(CFG, rngs=nnx.Rngs(0)), None, kind="rl")
    assert (learner.score_reference is not None) == (where == "host")
    metrics = learner.step(packed, key=jax.random.key(0))
    results.append((metrics, _host(learner.state.policy)))
  for name in ("loss", "kl", "rollout_kl", "grad_norm"):
    np.testing.assert_allclose(results[1][0][name], results[0][0][name], rtol=1e-5, err_msg=name)
  assert results[0][0]["rollout_kl"] > 0.0  # The behaviour log-probs differ from the reference's.
  _assert_trees_close(results[1][1], results[0][1])


def test_update_config_reads_default_config():
  """UpdateConfig.from_config takes the algorithm and the paper's rl settings from memr1_jax.defaults."""
  defaults = pytest.importorskip("memr1_jax.defaults")
  c = defaults.default_config()
  config = up.UpdateConfig.from_config(c)
  assert (config.algorithm, config.kl_coef, config.micro_batch_size, config.group_size, config.whiten_rewards,
          config.shared_prefix) == (c.algorithm, c.rl.kl_coef, c.rl.micro_batch_size, c.rollout.group_size,
                                    c.rl.whiten_rewards, c.rl.shared_prefix)


def test_batch_not_divisible_by_micro_batches_is_rejected():
  """A batch that does not split into whole micro-batches raises a ValueError naming the sizes."""
  state, frozen, spec = _learner()
  step = up.make_update_step(spec, _config(micro_batch_size=3, group_size=2))
  with pytest.raises(ValueError, match="micro-batches of 3"):
    step(state, frozen, _batch(), jax.random.key(0))


def test_learning_rate_schedule_delays_then_warms_up():
  """delay_steps updates at 0 (PPO's critic warmup for the actor), then the linear warmup, then the constant."""
  schedule = ts.learning_rate_schedule(1.0, warmup_steps=2, delay_steps=3)
  np.testing.assert_allclose([float(schedule(i)) for i in range(7)], [0, 0, 0, 0, 0.5, 1, 1])


def test_learning_rate_schedule_warms_up_then_decays_to_zero_along_a_cosine():
  """With decay_steps: the linear warmup, then 0.5 * (1 + cos(pi * progress)) of the peak, 0 at decay_steps."""
  schedule = ts.learning_rate_schedule(2.0, warmup_steps=2, decay_steps=6)
  np.testing.assert_allclose([float(schedule(i)) for i in range(7)],
                             [0, 1, 2, 2 * 0.5 * (1 + np.cos(np.pi / 4)), 1, 2 * 0.5 * (1 + np.cos(3 * np.pi / 4)), 0],
                             atol=1e-6)
