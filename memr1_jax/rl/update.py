"""The jitted GRPO / PPO update: one XLA program per rollout batch, from sampled tokens and rewards to new weights.

`make_update_step(spec, config)` returns `update(state, frozen, batch, key) -> (state, metrics)`, jitted with the
TrainState donated and every argument sharded by the mesh rules. Inside the program:

1. Scoring (no gradient), in micro-batches: behaviour log-probs if the batch has none, reference log-probs when a
   KL term needs them and the batch has none, and (PPO) the rollout-time values.
2. Advantages: GRPO group-normalised sequence advantages; PPO outcome rewards (whitened over the batch with
   `whiten_rewards`) on the last token (minus kl_coef * KL per token with `kl_in_reward`), GAE, whitening.
3. `epochs` passes over the batch; each shuffles the rows and splits them into `num_minibatches` minibatches, one
   optimizer update each. A minibatch's gradient is accumulated over micro-batches of `micro_batch_size` rows in a
   `lax.scan`; each micro-batch's loss is scaled by its aggregation denominator over the minibatch's
   (`losses.aggregation_denominator`), so the accumulated gradient equals the full minibatch's. When rows of zero
   advantage carry no gradient (GRPO without KL / entropy terms, `skips_dead_rows`), the rows with one are put first
   and only the micro-batches holding them run (a traced count: equal-reward groups cost no compute). Under GRPO
   with `shared_prefix` rows move in runs of `UpdateConfig.prefix_unit` that share a prompt, which each
   micro-batch's forward runs once (`logprobs.shared_prefix_hidden`).
4. AdamW (global-norm clipping, warmup-then-constant schedule). An update whose loss or gradient norm is not
   finite is skipped: parameters and optimizer states keep their values and metrics["skipped"] is 1. Optimizer
   states kept in pinned host memory (`init_train_state(optimizer_memory="host")`) are copied to the device for each
   update and back, so steps 1-3 run without them on the device.

Metrics are scalar arrays (means over the updates of the step), meant to be fetched once per step.

`make_reference_scorer(spec, config)` is step 1's reference scoring as a program of its own, for a reference kept in
host memory (`train_state.init_train_state(reference_memory="host")`): it runs before the update and hands the step
the reference log-probs, so the update step holds no reference weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from memr1_jax.rl import advantages as adv_lib
from memr1_jax.rl import logprobs as logprobs_lib
from memr1_jax.rl import losses
from memr1_jax.rl.train_state import FrozenParams, StateSpec, TrainState, optimizer_states_to, reference_model

ALGORITHMS = ("grpo", "ppo")


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
  """Static settings of the update step (see `memr1_jax.defaults` for the paper's values)."""

  algorithm: str = "grpo"  # grpo | ppo
  epochs: int = 1  # passes over each rollout batch.
  num_minibatches: int = 1  # optimizer updates per epoch.
  micro_batch_size: int = 8  # rows per micro-batch (gradient accumulation inside the program).
  shuffle: bool = True  # shuffle rows into minibatches each epoch.
  clip_eps_low: float = 0.2
  clip_eps_high: float | None = None  # None: clip_eps_low.
  kl_coef: float = 1e-3  # weight of KL(policy || reference); 0 skips the reference entirely.
  kl_estimator: str = "k3"  # k1 | k2 | k3.
  kl_in_reward: bool = False  # PPO: -kl_coef * KL in the per-token reward instead of the loss.
  entropy_coef: float = 0.0
  aggregation: str = "token_mean"  # losses.AGGREGATIONS
  group_size: int = 8  # GRPO samples per prompt (rows are prompt-major).
  normalize_std: bool = True  # GRPO: divide by the group's reward std.
  gamma: float = 1.0  # PPO GAE discount.
  lam: float = 1.0  # PPO GAE lambda.
  value_clip: float | None = 0.2  # PPO value clip range (None: unclipped).
  whiten_advantages: bool = True  # PPO: whiten advantages over the batch's valid tokens.
  whiten_rewards: bool = False  # PPO: whiten the sequence rewards over the batch's rows before GAE.
  logprob_chunk: int | None = 256  # response time steps per vocabulary-projection chunk (None: one chunk).
  remat_logits: bool = True  # recompute each chunk's logits in the backward pass (memory) or store them (speed).
  fused_logprobs: bool = False  # logprobs.fused_token_logprobs: one custom-VJP op per chunk (remat_logits moot).
  shared_prefix: bool = True  # GRPO: a group's prompt runs once per micro-batch (`prefix_unit` rows share it).

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"update.py: algorithm={self.algorithm!r}, expected one of {ALGORITHMS}")
    if self.aggregation not in losses.AGGREGATIONS:
      raise ValueError(f"update.py: aggregation={self.aggregation!r}, expected one of {losses.AGGREGATIONS}")
    if self.kl_estimator not in losses.KL_KINDS:
      raise ValueError(f"update.py: kl_estimator={self.kl_estimator!r}, expected one of {losses.KL_KINDS}")
    for name in ("epochs", "num_minibatches", "micro_batch_size", "group_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"update.py: {name}={getattr(self, name)} must be >= 1")

  @property
  def prefix_unit(self) -> int:
    """Rows that share one prompt run in the forward pass: gcd(micro_batch_size, group_size) under GRPO with
    shared_prefix (whole groups, or equal slices of one, per micro-batch), else 1. Rows are split, shuffled and
    dropped in units of this many consecutive rows."""
    if self.algorithm != "grpo" or not self.shared_prefix:
      return 1
    return math.gcd(self.micro_batch_size, self.group_size)

  @classmethod
  def from_config(cls, c) -> UpdateConfig:
    """Reads `c.algorithm`, `c.rl.*` and `c.rollout.group_size` of a `memr1_jax.defaults` config."""
    rl = c.rl
    return cls(
        algorithm=c.algorithm, epochs=rl.epochs, num_minibatches=rl.num_minibatches,
        micro_batch_size=rl.micro_batch_size, clip_eps_low=rl.clip_eps_low, clip_eps_high=rl.clip_eps_high,
        kl_coef=rl.kl_coef, kl_estimator=rl.kl_estimator, kl_in_reward=rl.kl_in_reward,
        entropy_coef=rl.entropy_coef, aggregation=rl.loss_aggregation,
        group_size=c.rollout.group_size if c.algorithm == "grpo" else 1, normalize_std=rl.normalize_std,
        gamma=rl.gamma, lam=rl.lam, value_clip=rl.value_clip,
        whiten_advantages=rl.whiten_advantages, whiten_rewards=rl.whiten_rewards, logprob_chunk=rl.logprob_chunk,
        remat_logits=rl.remat_logits, fused_logprobs=rl.fused_logprobs, shared_prefix=rl.shared_prefix)


@flax.struct.dataclass
class RolloutBatch:
  """One rollout batch: B rows of (left-padded prompt, right-padded response, score), prompt-major for GRPO."""

  prompt_ids_bp: jax.Array  # [B, P] int32, left-padded.
  prompt_mask_bp: jax.Array  # [B, P] bool / 0-1, true on prompt tokens.
  response_ids_bt: jax.Array  # [B, T] int32, right-padded.
  response_mask_bt: jax.Array  # [B, T] true on the response tokens to train on.
  scores_b: jax.Array  # [B] float sequence rewards.
  old_logprobs_bt: jax.Array | None = None  # [B, T] behaviour log-probs (None: recomputed by the step).
  ref_logprobs_bt: jax.Array | None = None  # [B, T] reference log-probs (None: computed when a KL term needs them).


def _scan(fn, carry, xs, length: int):
  """lax.scan, or a direct call when there is a single iteration (no loop-carried copies)."""
  if length == 1:
    carry, y = fn(carry, jax.tree.map(lambda x: x[0], xs))
    return carry, jax.tree.map(lambda x: jnp.asarray(x)[None], y)
  return jax.lax.scan(fn, carry, xs)


def split_rows(rows, *lead: int):
  """Splits every [B, ...] leaf of `rows` into groups: [*lead, B / prod(lead), ...].

  Slot r of (flat) group g is row r * prod(lead) + g, so with B sharded in contiguous blocks every group takes
  the same number of rows from each shard (when B / prod(lead) divides by the shard count).
  """
  groups = 1
  for n in lead:
    groups *= n

  def split(x):
    x = x.reshape(x.shape[0] // groups, *lead, *x.shape[1:])
    return jnp.moveaxis(x, 0, len(lead))

  return jax.tree.map(split, rows)


def merge_rows(rows):
  """Inverse of `split_rows(rows, g)` for one group axis: [G, b, ...] -> [b * G, ...] in the original order."""
  return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), rows)


def to_units(rows, unit: int):
  """[B, ...] leaves -> [B / unit, unit, ...]: runs of `unit` consecutive rows (`UpdateConfig.prefix_unit`) that
  splitting and shuffling keep together."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // unit, unit, *x.shape[1:]), rows)


def from_units(rows, axis: int):
  """Merges axes `axis` and `axis + 1` of every leaf (units back into rows): the inverse of `to_units` at axis 0."""
  return jax.tree.map(lambda x: x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:]), rows)


def split_unit_rows(rows, unit: int, *lead: int):
  """`split_rows` over units of `unit` consecutive rows: [B, ...] -> [*lead, B / prod(lead), ...], each unit's rows
  adjacent in one group."""
  return from_units(split_rows(to_units(rows, unit), *lead), len(lead))


def merge_unit_rows(rows, unit: int):
  """Inverse of `split_unit_rows(rows, unit, g)`: [G, b, ...] -> [b * G, ...] in the original order."""
  grouped = jax.tree.map(lambda x: x.reshape(x.shape[0], -1, unit, *x.shape[2:]), rows)
  return from_units(merge_rows(grouped), 0)


def _batch_spec(spec: StateSpec) -> P | None:
  mesh = spec.mesh
  if mesh is None:
    return None
  return P(tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1) or None)


def _constrain(spec: StateSpec, rows):
  """Pins a micro-batch's rows to the batch sharding (rows over data x fsdp)."""
  if spec.mesh is None:
    return rows
  sharding = NamedSharding(spec.mesh, _batch_spec(spec))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), rows)


def _has_reference(spec: StateSpec, config: UpdateConfig) -> bool:
  return spec.reference_graphdef is not None and config.kl_coef > 0


def _kl_in_loss(spec: StateSpec, config: UpdateConfig) -> bool:
  return _has_reference(spec, config) and not (config.algorithm == "ppo" and config.kl_in_reward)


def policy_logprobs(spec: StateSpec, config: UpdateConfig, params, frozen_policy, rows) -> tuple[jax.Array, jax.Array]:
  """(log-probs, entropies) [B, T] of `rows`' response tokens under the policy with trained `params`."""
  model = nnx.merge(spec.policy_graphdef, params, frozen_policy)
  return logprobs_lib.response_logprobs(
      model, rows["prompt_ids_bp"], rows["prompt_mask_bp"], rows["response_ids_bt"], rows["response_mask_bt"],
      chunk_size=config.logprob_chunk, remat_chunks=config.remat_logits, fused=config.fused_logprobs,
      group_size=config.prefix_unit)


def _reference_logprobs(spec: StateSpec, config: UpdateConfig, frozen: FrozenParams, rows) -> jax.Array:
  logprobs_bt, _ = logprobs_lib.response_logprobs(
      reference_model(spec, frozen), rows["prompt_ids_bp"], rows["prompt_mask_bp"], rows["response_ids_bt"],
      rows["response_mask_bt"], chunk_size=config.logprob_chunk, remat_chunks=config.remat_logits,
      fused=config.fused_logprobs, group_size=config.prefix_unit)
  return logprobs_bt


def _values(spec: StateSpec, params, frozen_value, rows) -> jax.Array:
  model = nnx.merge(spec.value_graphdef, params, frozen_value)
  hidden_btd = logprobs_lib.response_hidden(model.backbone, rows["prompt_ids_bp"], rows["prompt_mask_bp"],
                                            rows["response_ids_bt"], rows["response_mask_bt"])
  return model.values(hidden_btd)


def _batch_rows(batch: RolloutBatch) -> dict[str, jax.Array]:
  """The batch's ids and masks as the scoring and loss functions read them (int32 ids, bool masks)."""
  return {"prompt_ids_bp": batch.prompt_ids_bp.astype(jnp.int32), "prompt_mask_bp": batch.prompt_mask_bp.astype(bool),
          "response_ids_bt": batch.response_ids_bt.astype(jnp.int32),
          "response_mask_bt": batch.response_mask_bt.astype(bool)}


def prepare_rows(spec: StateSpec, config: UpdateConfig, state: TrainState, frozen: FrozenParams,
                 batch: RolloutBatch) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Scores the batch (no gradient) and computes its advantages.

  Returns:
    (rows, metrics): rows maps names to [B, ...] arrays: the batch's ids and masks, "old_logprobs_bt",
    "advantages_bt", with a KL term in the loss "ref_logprobs_bt", for PPO "old_values_bt" and "returns_bt";
    metrics are scalar summaries of the rollout (reward, length, KL to the reference, explained variance).
  """
  is_ppo = config.algorithm == "ppo"
  b = batch.scores_b.shape[0]
  rows = _batch_rows(batch)
  mask_bt = rows["response_mask_bt"]
  need_old = batch.old_logprobs_bt is None
  need_ref = _has_reference(spec, config) and batch.ref_logprobs_bt is None
  if need_ref and spec.reference_on_host:
    raise ValueError("update.py: the reference is in host memory: score the batch with make_reference_scorer and "
                     "pass its ref_logprobs_bt")

  def score(_, rows_mb):
    rows_mb = _constrain(spec, rows_mb)
    out = {}
    if need_old:
      out["old_logprobs_bt"] = policy_logprobs(spec, config, state.policy, frozen.policy, rows_mb)[0]
    if need_ref:
      out["ref_logprobs_bt"] = _reference_logprobs(spec, config, frozen, rows_mb)
    if is_ppo:
      out["old_values_bt"] = _values(spec, state.value, frozen.value, rows_mb)
    return None, out

  scored = {}
  if need_old or need_ref or is_ppo:
    groups, unit = b // config.micro_batch_size, config.prefix_unit
    _, scored = _scan(score, None, split_unit_rows(rows, unit, groups), groups)
    scored = merge_unit_rows(scored, unit)
  old_logprobs_bt = scored["old_logprobs_bt"] if need_old else batch.old_logprobs_bt
  rows["old_logprobs_bt"] = jnp.where(mask_bt, old_logprobs_bt.astype(jnp.float32), 0.0)
  scores_b = batch.scores_b.astype(jnp.float32)
  metrics = {"reward_mean": scores_b.mean(), "reward_std": scores_b.std(),
             "response_length": mask_bt.sum(axis=1).mean().astype(jnp.float32)}
  kl_bt = None
  if _has_reference(spec, config):
    ref_logprobs_bt = scored["ref_logprobs_bt"] if need_ref else batch.ref_logprobs_bt
    ref_logprobs_bt = jnp.where(mask_bt, ref_logprobs_bt.astype(jnp.float32), 0.0)
    kl_bt = losses.kl_penalty(rows["old_logprobs_bt"], ref_logprobs_bt, config.kl_estimator)
    metrics["rollout_kl"] = losses.masked_mean(kl_bt, mask_bt)
    if _kl_in_loss(spec, config):
      rows["ref_logprobs_bt"] = ref_logprobs_bt
  if is_ppo:
    old_values_bt = scored["old_values_bt"]
    if config.whiten_rewards:  # Over the rows with a response (padding rows have none).
      row_mask_b1 = mask_bt.any(axis=1, keepdims=True)
      scores_b = adv_lib.whiten(scores_b[:, None], row_mask_b1)[:, 0]
    rewards_bt = adv_lib.outcome_token_rewards(scores_b, mask_bt, kl_bt if config.kl_in_reward else None,
                                               config.kl_coef)
    advantages_bt, returns_bt = adv_lib.gae(rewards_bt, old_values_bt, mask_bt, config.gamma, config.lam)
    metrics["explained_variance"] = losses.explained_variance(old_values_bt, returns_bt, mask_bt)
    metrics["value_mean"] = losses.masked_mean(old_values_bt, mask_bt)
    metrics["return_mean"] = losses.masked_mean(returns_bt, mask_bt)
    if config.whiten_advantages:
      advantages_bt = adv_lib.whiten(advantages_bt, mask_bt)
    rows.update(old_values_bt=old_values_bt, returns_bt=returns_bt)
  else:
    advantages_b = adv_lib.grpo_advantages(scores_b, config.group_size, normalize_std=config.normalize_std)
    advantages_bt = jnp.broadcast_to(advantages_b[:, None], mask_bt.shape)
  rows["advantages_bt"] = jnp.where(mask_bt, advantages_bt, 0.0)
  metrics["advantage_rms"] = jnp.sqrt(losses.masked_mean(jnp.square(rows["advantages_bt"]), mask_bt))
  return rows, metrics


def microbatch_loss(spec: StateSpec, config: UpdateConfig, trained, frozen: FrozenParams, rows,
                    weight: jax.Array | float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """weight * (policy loss [+ PPO value loss]) of the rows of one micro-batch, and its metrics times weight.

  Args:
    trained: (policy parameters, value parameters or None), the arguments being differentiated.
    rows: [b, ...] arrays as returned by `prepare_rows`.
    weight: this micro-batch's aggregation denominator over its minibatch's.
  """
  policy_params, value_params = trained
  logprobs_bt, entropy_bt = policy_logprobs(spec, config, policy_params, frozen.policy, rows)
  if not config.entropy_coef:
    entropy_bt = jax.lax.stop_gradient(entropy_bt)
  loss, metrics = losses.grpo_loss(
      logprobs_bt, rows["old_logprobs_bt"], rows["ref_logprobs_bt"] if _kl_in_loss(spec, config) else None,
      rows["advantages_bt"], rows["response_mask_bt"], clip_eps_low=config.clip_eps_low,
      clip_eps_high=config.clip_eps_high, kl_coef=config.kl_coef, kl_kind=config.kl_estimator,
      entropy_bt=entropy_bt, entropy_coef=config.entropy_coef, aggregation=config.aggregation)
  metrics = dict(metrics)
  metrics["policy_loss"] = metrics.pop("loss")
  if config.algorithm == "ppo":
    values_bt = _values(spec, value_params, frozen.value, rows)
    v_loss, v_metrics = losses.value_loss(values_bt, rows["old_values_bt"], rows["returns_bt"],
                                          rows["response_mask_bt"], config.value_clip, config.aggregation)
    loss = loss + v_loss
    metrics.update(v_metrics)
  metrics["loss"] = loss
  return loss * weight, jax.tree.map(lambda m: m * weight, metrics)


def skips_dead_rows(spec: StateSpec, config: UpdateConfig) -> bool:
  """Whether rows with zero advantage carry no gradient, so the update can leave them out: GRPO without a KL term
  in the loss and without an entropy bonus (PPO's value loss trains on every row)."""
  return config.algorithm == "grpo" and not _kl_in_loss(spec, config) and not config.entropy_coef


# Metrics that are sums over rows (zero on rows without advantage); the others are averages over the trained rows.
_SUM_METRICS = ("loss", "pg_loss", "policy_loss")


def minibatch_gradients(spec: StateSpec, config: UpdateConfig, trained, frozen: FrozenParams,
                        rows_kb, num_live: jax.Array | None = None) -> tuple[Any, dict[str, jax.Array]]:
  """Gradient and metrics of one minibatch given as K micro-batches, accumulated in a loop.

  Args:
    trained: (policy parameters, value parameters or None).
    rows_kb: `prepare_rows` rows reshaped to [K, micro, ...].
    num_live: None, or how many leading micro-batches hold all the rows with a gradient (`live_rows_first`); the
      others are skipped, a traced count (one compilation whatever the mix).

  Returns:
    (grads, metrics): the gradient of the minibatch loss (equal to the loss over all K * micro rows at once)
    with the structure of `trained`, and metrics weighted the same way (with `num_live`, the averages are over the
    micro-batches run).
  """
  num_micro = rows_kb["response_mask_bt"].shape[0]
  mask_bt = rows_kb["response_mask_bt"].reshape(-1, rows_kb["response_mask_bt"].shape[-1])
  denominator = jnp.maximum(losses.aggregation_denominator(mask_bt, config.aggregation), 1.0)
  grad_fn = jax.value_and_grad(microbatch_loss, argnums=2, has_aux=True)

  def micro(carry, rows_mb):
    rows_mb = _constrain(spec, rows_mb)
    weight = losses.aggregation_denominator(rows_mb["response_mask_bt"], config.aggregation) / denominator
    (_, metrics), grads = grad_fn(spec, config, trained, frozen, rows_mb, weight)
    metrics["weight"] = weight
    if carry is None:
      return (grads, metrics), None
    return jax.tree.map(jnp.add, carry, (grads, metrics)), None

  first = jax.tree.map(lambda x: x[0], rows_kb)
  if num_live is None and num_micro == 1:
    grads, metrics = micro(None, first)[0]
  else:
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(lambda: micro(None, first)[0]))
    if num_live is None:
      grads, metrics = jax.lax.scan(micro, zeros, rows_kb)[0]
    else:
      take = lambda k: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, k, keepdims=False), rows_kb)  # noqa: E731
      grads, metrics = jax.lax.fori_loop(0, num_live, lambda k, carry: micro(carry, take(k))[0], zeros)
  run = metrics.pop("weight")
  if num_live is not None:  # Averages over the micro-batches run (their weights sum to `run`).
    metrics = {k: v if k in _SUM_METRICS else v / jnp.maximum(run, 1e-9) for k, v in metrics.items()}
  return grads, metrics


def live_rows_first(rows, num_minibatches: int, micro_batch_size: int, unit: int = 1) -> tuple[dict, jax.Array]:
  """Splits `rows` into minibatches (as `split_unit_rows`) whose units (runs of `unit` rows) with a nonzero
  advantage come first.

  Returns:
    (rows_mkb [M, K, micro, ...], num_live_m [M]: how many leading micro-batches of each minibatch hold its units
    with a nonzero advantage).
  """
  rows_u = to_units(rows, unit)
  num_units, micro_units = rows_u["advantages_bt"].shape[0], micro_batch_size // unit
  live_u = jnp.any(rows_u["advantages_bt"] != 0, axis=(1, 2))
  index_mn = split_rows(jnp.arange(num_units), num_minibatches)
  live_mn = live_u[index_mn]
  index_mn = jnp.take_along_axis(index_mn, jnp.argsort(~live_mn, axis=1, stable=True), axis=1)
  index_mku = index_mn.reshape(num_minibatches, -1, micro_units)
  num_live_m = -(-live_mn.sum(axis=1) // micro_units)
  return from_units(jax.tree.map(lambda x: x[index_mku], rows_u), 2), num_live_m


def apply_gradients(spec: StateSpec, config: UpdateConfig, state: TrainState, grads,
                    metrics: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update of the policy (and value model); a no-op when the loss or a gradient is not finite.

  Returns (state, metrics) with "grad_norm" (before clipping), "lr", "skipped" (1.0 if skipped) added. The skip is a
  `lax.cond` around the update, so a finite update costs the AdamW update alone (a `jnp.where` over every weight
  and moment is one more pass over the state: benchmarks/optimizer_update.py). Optimizer states in host memory
  (`spec.optimizer_on_host`) are copied to the device for this update and the new ones back.
  """
  if spec.optimizer_on_host:
    state = optimizer_states_to(jax.memory.Space.Device, state)
  policy_grads, value_grads = grads
  grad_norm = optax.global_norm(policy_grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  metrics = dict(metrics, grad_norm=grad_norm, lr=jnp.asarray(spec.actor_lr(state.updates), jnp.float32))
  if config.algorithm == "ppo":
    value_grad_norm = optax.global_norm(value_grads)
    finite &= jnp.isfinite(value_grad_norm)
    metrics.update(value_grad_norm=value_grad_norm,
                   critic_lr=jnp.asarray(spec.critic_lr(state.updates), jnp.float32))

  def update(state: TrainState) -> TrainState:
    updates, policy_opt = spec.actor_tx.update(policy_grads, state.policy_opt, state.policy)
    new = state.replace(updates=state.updates + 1, policy=optax.apply_updates(state.policy, updates),
                        policy_opt=policy_opt)
    if config.algorithm == "ppo":
      updates, value_opt = spec.critic_tx.update(value_grads, state.value_opt, state.value)
      new = new.replace(value=optax.apply_updates(state.value, updates), value_opt=value_opt)
    return new

  new = jax.lax.cond(finite, update, lambda state: state, state)
  if spec.optimizer_on_host:
    new = optimizer_states_to(jax.memory.Space.Host, new)
  metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
  return new, metrics


def make_reference_scorer(spec: StateSpec, config: UpdateConfig) -> Callable[[FrozenParams, RolloutBatch], jax.Array]:
  """The jitted scoring pass of a reference kept in host memory (`init_train_state(reference_memory="host")`).

  Returns:
    score(frozen, batch) -> ref_logprobs_bt [B, T] float32: the reference's log-probs of `batch`'s response tokens,
    computed in micro-batches of config.micro_batch_size rows with the reference's weights copied to the device for
    this program only. Put them in the batch (`batch.replace(ref_logprobs_bt=...)`) and give the update step the
    FrozenParams without its reference (`step_inputs` does both): the step then holds no reference weights.
  """
  if not spec.reference_on_host:
    raise ValueError("update.py: make_reference_scorer serves a reference in host memory "
                     "(init_train_state(reference_memory='host'))")

  def score(frozen: FrozenParams, batch: RolloutBatch) -> jax.Array:
    rows = _batch_rows(batch)
    b = rows["response_ids_bt"].shape[0]
    if b % config.micro_batch_size:
      raise ValueError(f"update.py: a batch of {b} rows does not split into micro-batches of "
                       f"{config.micro_batch_size}")
    groups, unit = b // config.micro_batch_size, config.prefix_unit
    step = lambda _, rows_mb: (None, _reference_logprobs(spec, config, frozen, _constrain(spec, rows_mb)))  # noqa: E731
    _, logprobs_gbt = _scan(step, None, split_unit_rows(rows, unit, groups), groups)
    return merge_unit_rows(logprobs_gbt, unit).astype(jnp.float32)

  if spec.mesh is None:
    return jax.jit(score)
  rows_sharding = NamedSharding(spec.mesh, _batch_spec(spec))
  return jax.jit(score, in_shardings=(spec.frozen_shardings, rows_sharding), out_shardings=rows_sharding)


def step_inputs(spec: StateSpec, score: Callable | None, frozen: FrozenParams, batch: RolloutBatch
                ) -> tuple[FrozenParams, RolloutBatch]:
  """The update step's (frozen, batch): with the reference in host memory, `frozen` without it and `batch` with the
  reference log-probs of `score` (`make_reference_scorer`; None when no KL term needs them); else both as given."""
  if not spec.reference_on_host:
    return frozen, batch
  if score is not None:
    batch = batch.replace(ref_logprobs_bt=score(frozen, batch))
  return frozen.replace(reference=None), batch


def make_update_step(spec: StateSpec, config: UpdateConfig
                     ) -> Callable[[TrainState, FrozenParams, RolloutBatch, jax.Array], tuple[TrainState, dict]]:
  """The jitted update step for a learner built by `train_state.init_train_state`.

  Args:
    spec: the learner's static part (graphs, optimizers, shardings).
    config: algorithm and loss settings.

  Returns:
    update(state, frozen, batch, key) -> (new_state, metrics). `state` is donated; `batch` is a RolloutBatch
    whose B divides by micro_batch_size * num_minibatches (and, for GRPO, by group_size); key drives the shuffle.
    With the reference in host memory (`spec.reference_on_host`) `frozen` comes without it and a KL term needs the
    batch's ref_logprobs_bt (`make_reference_scorer`).
  """
  if config.algorithm == "ppo" and spec.value_graphdef is None:
    raise ValueError("update.py: PPO needs a value model (init_train_state(value_model=...))")

  def update(state: TrainState, frozen: FrozenParams, batch: RolloutBatch, key: jax.Array):
    b = batch.scores_b.shape[0]
    per_epoch = config.micro_batch_size * config.num_minibatches
    if b % per_epoch:
      raise ValueError(f"update.py: a batch of {b} rows does not split into {config.num_minibatches} "
                       f"minibatch(es) of micro-batches of {config.micro_batch_size}")
    if config.algorithm == "grpo" and b % config.group_size:
      raise ValueError(f"update.py: a batch of {b} rows is not a whole number of groups of {config.group_size}")
    num_micro = b // per_epoch
    rows, prep_metrics = prepare_rows(spec, config, state, frozen, batch)

    skip = skips_dead_rows(spec, config)

    def minibatch(state, xs):
      rows_kb, num_live = xs if skip else (xs, None)
      grads, metrics = minibatch_gradients(spec, config, (state.policy, state.value), frozen, rows_kb, num_live)
      return apply_gradients(spec, config, state, grads, metrics)

    unit = config.prefix_unit

    def epoch(state, epoch_key):
      epoch_rows = rows
      if config.shuffle:  # Whole units: a shared prompt's rows stay together.
        order = jax.random.permutation(epoch_key, b // unit)
        epoch_rows = from_units(jax.tree.map(lambda x: x[order], to_units(rows, unit)), 0)
      if skip:
        xs = live_rows_first(epoch_rows, config.num_minibatches, config.micro_batch_size, unit)
      else:
        xs = split_unit_rows(epoch_rows, unit, config.num_minibatches, num_micro)
      return _scan(minibatch, state, xs, config.num_minibatches)

    state, metrics = _scan(epoch, state, jax.random.split(key, config.epochs), config.epochs)
    skipped = metrics.pop("skipped")
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics.update(prep_metrics, skipped=skipped.max(), skipped_updates=skipped.sum())
    return state, metrics

  if spec.mesh is None:
    return jax.jit(update, donate_argnums=0)
  replicated = NamedSharding(spec.mesh, P())
  frozen_shardings = spec.frozen_shardings
  if spec.reference_on_host:
    frozen_shardings = frozen_shardings.replace(reference=None)
  return jax.jit(update, donate_argnums=0,
                 in_shardings=(spec.state_shardings, frozen_shardings,
                               NamedSharding(spec.mesh, _batch_spec(spec)), replicated),
                 out_shardings=(spec.state_shardings, replicated))
