"""The learner of both training modes: the policy (with LoRA adapters when configured), PPO's value model, the
optimizers, the train state (`rl.train_state.init_train_state`) and its jitted step.

`Learner.create(config, policy, mesh, kind=...)` builds it for RL (mode=train: a frozen reference for the KL term
and the manager's frozen answerer, the value model under PPO, `rl.update.make_update_step`) or for SFT (mode=sft:
no reference, `make_sft_step`). `with_adapters` is the adapter graph alone, which `components.load_trained_policy`
rebuilds to read a run's trained arrays back.

The SFT objective lives here too: the mean cross-entropy over the response tokens of a batch (`sft_loss`), and the
SFT step, whose micro-batches of `config.sft.micro_batch_size` rows accumulate the gradient in a `lax.scan`, each
weighted by its share of the batch's response tokens (so the gradient equals the full batch's), then one AdamW
update (`rl.update.apply_gradients`: a non-finite loss or gradient skips it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from memr1_jax import multihost
from memr1_jax import sharding as sharding_lib
from memr1_jax.models import lora as lora_lib
from memr1_jax.models import value as value_lib
from memr1_jax.rl import logprobs as logprobs_lib
from memr1_jax.rl import train_state as ts
from memr1_jax.rl.update import (RolloutBatch, UpdateConfig, apply_gradients, make_reference_scorer,
                                 make_update_step, step_inputs)

# What a learner trains: "rl" (mode=train) or "sft" (mode=sft).
KINDS = ("rl", "sft")


def _sharded(mesh):
  """`mesh`, or None when there is none or it has one device (the learner's arrays then stay unsharded)."""
  return mesh if mesh is not None and mesh.size > 1 else None


def with_adapters(config, policy, mesh):
  """`policy` with config.model's LoRA adapters (lora_rank, lora_alpha; initialised from config.seed), or `policy`
  itself when config.model.lora_rank is 0: the graph every learner trains and a checkpoint's arrays restore into."""
  if not config.model.lora_rank:
    return policy
  return lora_lib.add_lora(policy, config.model.lora_rank, config.model.lora_alpha, seed=config.seed,
                           mesh=_sharded(mesh))


def sft_micro_batch_size(config) -> int:
  """Rows per micro-batch of the SFT step: config.sft.micro_batch_size, at most config.sft.batch_size."""
  s = config.sft
  return min(s.get("micro_batch_size", s.batch_size), s.batch_size)


def _adam_options(rl) -> dict:
  """make_optimizer's moment dtypes and b2 from config.rl (adam_mu_dtype, adam_nu_dtype, adam_b2)."""
  return dict(mu_dtype=rl.adam_mu_dtype, nu_dtype=rl.adam_nu_dtype, b2=rl.adam_b2)


@dataclasses.dataclass
class Learner:
  """A training run's learner: train state, frozen weights, static spec and the jitted step (`update`)."""

  state: object
  frozen: object
  spec: object
  update: object
  kind: str
  # RL with the reference in host memory (rl.reference_memory="host"): its scoring pass, run before each update.
  score_reference: object = None

  @classmethod
  def create(cls, config, policy, mesh, *, kind: str, num_steps: int = 0) -> Learner:
    """The learner of `kind` ("rl" or "sft") for the decoder `policy` (placed on `mesh`; None or one device:
    unsharded).

    RL reads config.rl (rates, warmups, weight decay, clipping) and config.algorithm (PPO adds a value model: a copy
    of the policy, or its adapters under LoRA, with a head) and keeps a frozen reference. SFT reads config.sft (lr,
    warmup, schedule, weight decay, micro-batch size) and config.rl.max_grad_norm; with sft.schedule=cosine the rate
    decays to 0 at `num_steps`.
    """
    if kind not in KINDS:
      raise ValueError(f"Learner.create: kind={kind!r} is not one of {KINDS}")
    mesh = _sharded(mesh)
    policy = with_adapters(config, policy, mesh)
    if kind == "sft":
      s = config.sft
      lr = ts.learning_rate_schedule(s.lr, s.get("warmup_steps", 0),
                                     decay_steps=num_steps if s.get("schedule", "constant") == "cosine" else 0)
      tx = ts.make_optimizer(lr, weight_decay=s.get("weight_decay", 0.0), max_grad_norm=config.rl.max_grad_norm,
                             **_adam_options(config.rl))
      state, frozen, spec = ts.init_train_state(policy, tx, actor_lr=lr, reference=False, mesh=mesh,
                                                master_dtype=config.rl.master_dtype,
                                                optimizer_memory=config.rl.optimizer_memory)
      return cls(state, frozen, spec, make_sft_step(spec, sft_micro_batch_size(config)), kind)
    rl = config.rl
    actor_lr = ts.learning_rate_schedule(rl.actor_lr, rl.warmup_steps,
                                         rl.critic_warmup_steps if config.algorithm == "ppo" else 0)
    actor_tx = ts.make_optimizer(actor_lr, weight_decay=rl.weight_decay, max_grad_norm=rl.max_grad_norm,
                                 **_adam_options(rl))
    value_model = critic_tx = critic_lr = None
    if config.algorithm == "ppo":
      value_model = value_lib.value_model_from_decoder(policy, copy=not config.model.lora_rank)
      critic_lr = ts.learning_rate_schedule(rl.critic_lr, rl.warmup_steps)
      critic_tx = ts.make_optimizer(critic_lr, weight_decay=rl.weight_decay, max_grad_norm=rl.max_grad_norm,
                                    **_adam_options(rl))
    state, frozen, spec = ts.init_train_state(
        policy, actor_tx, actor_lr=actor_lr, value_model=value_model, critic_tx=critic_tx, critic_lr=critic_lr,
        reference=True, mesh=mesh, master_dtype=rl.master_dtype, reference_memory=rl.reference_memory,
        optimizer_memory=rl.optimizer_memory)
    update_config = UpdateConfig.from_config(config)
    score_reference = None
    if spec.reference_on_host and update_config.kl_coef > 0:
      score_reference = make_reference_scorer(spec, update_config)
    return cls(state, frozen, spec, make_update_step(spec, update_config), kind, score_reference)

  def policy(self):
    """The current policy as a Decoder (new arrays; safe to keep across the next donated update)."""
    return ts.policy_model(self.spec, self.state, self.frozen)

  def reference(self):
    """The frozen starting policy (RL only: the frozen answer agent / manager); a reference in host memory is
    copied to the device."""
    return ts.reference_model(self.spec, self.frozen)

  def step(self, packed: dict, *, key=None, seq_len: int | None = None) -> dict[str, float]:
    """Runs the jitted step on one packed batch (the state is donated and replaced); returns its metrics as floats.

    RL: `packed` as `batching.pack_experiences` returns it, `key` the update's PRNG key. SFT: `packed` as
    `sft.pack_examples` returns it, `seq_len` (static) as in `response_nll_sum`.
    """
    if self.kind == "rl":
      batch, extra = RolloutBatch(**{k: v for k, v in packed.items() if k != "real_rows"}), key
    else:
      batch, extra = packed, seq_len
    if self.spec.mesh is None:
      batch = jax.tree.map(jnp.asarray, batch)
    else:  # Every host packed the same batch: each places its own shards (multi-host safe).
      batch = multihost.shard_batch(batch, self.spec.mesh)
    frozen = self.frozen
    if self.kind == "rl":  # A reference in host memory scores the batch in its own program first.
      frozen, batch = step_inputs(self.spec, self.score_reference, frozen, batch)
    self.state, metrics = self.update(self.state, frozen, batch, extra)
    return {k: float(v) for k, v in multihost.to_host(metrics).items()}


# The SFT objective.


def response_nll_sum(model, rows: dict, *, chunk_size: int | None = 256, seq_len: int | None = None) -> jax.Array:
  """Sum over the response tokens of `rows` (arrays as `sft.pack_examples` returns) of -log p(token | context).

  seq_len: (static) when no row's prompt + response is longer, the model runs over that many positions only
  (`sft.sequence_bucket`; the same values, see `rl.logprobs.response_hidden`).
  """
  logprobs_bt, _ = logprobs_lib.response_logprobs(
      model, rows["prompt_ids_bp"], rows["prompt_mask_bp"], rows["response_ids_bt"], rows["response_mask_bt"],
      chunk_size=chunk_size, seq_len=seq_len)
  return -jnp.sum(jnp.where(rows["response_mask_bt"], logprobs_bt, 0.0))


def sft_loss(model, rows: dict, seq_len: int | None = None) -> jax.Array:
  """Mean cross-entropy (nats) per response token of `rows`: the SFT objective (`seq_len` as in
  `response_nll_sum`)."""
  tokens = jnp.maximum(jnp.sum(rows["response_mask_bt"]), 1).astype(jnp.float32)
  return response_nll_sum(model, rows, seq_len=seq_len) / tokens


def make_sft_step(spec, micro_batch_size: int):
  """The jitted SFT step `step(state, frozen, rows, seq_len=None) -> (state, metrics)` for a learner made by
  `rl.train_state.init_train_state` (the TrainState is donated).

  `rows` hold B rows (a multiple of `micro_batch_size`), split into B / micro_batch_size micro-batches whose
  gradients are accumulated; `seq_len` (static, one compilation each) as in `response_nll_sum`. Metrics: loss (mean
  nats per response token), tokens, grad_norm, lr, skipped.
  """
  update_config = UpdateConfig(algorithm="grpo", group_size=1)

  def micro_loss(params, frozen_policy, rows_mb, tokens, seq_len):
    model = nnx.merge(spec.policy_graphdef, params, frozen_policy)
    return response_nll_sum(model, rows_mb, seq_len=seq_len) / tokens

  grad_fn = jax.value_and_grad(micro_loss)

  def step(state, frozen, rows, seq_len=None):
    b = rows["response_mask_bt"].shape[0]
    num_micro = b // micro_batch_size
    tokens = jnp.maximum(jnp.sum(rows["response_mask_bt"]), 1).astype(jnp.float32)
    rows_kb = jax.tree.map(lambda x: x.reshape(num_micro, micro_batch_size, *x.shape[1:]), rows)

    def micro(carry, rows_mb):
      loss, grads = grad_fn(state.policy, frozen.policy, rows_mb, tokens, seq_len)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.policy))
    (loss, grads), _ = jax.lax.scan(micro, zeros, rows_kb)
    state, metrics = apply_gradients(spec, update_config, state, (grads, None), {"loss": loss})
    metrics["tokens"] = tokens
    return state, metrics

  if spec.mesh is None:
    return jax.jit(step, donate_argnums=0, static_argnums=3)
  replicated = NamedSharding(spec.mesh, P())
  return jax.jit(step, donate_argnums=0, static_argnums=3,
                 in_shardings=(spec.state_shardings, spec.frozen_shardings, sharding_lib.batch_sharding(spec.mesh)),
                 out_shardings=(spec.state_shardings, replicated))
