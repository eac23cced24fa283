"""The learner's state: trained policy / value parameters with their AdamW states, the frozen weights, shardings.

Parameters are split (`nnx.split`) into what is trained and what is frozen:

  full fine-tuning   trained = every policy Param;  frozen = the reference model (a copy of the initial
                     policy in `reference_dtype`, only when a reference is asked for).
  LoRA               trained = the adapters (`nnx.LoRAParam`); frozen = the base weights, which are at once the
                     policy's base and the reference (the same graph with `lora_rank = 0`): no extra weight copy.
  PPO value model    trained = all its Params (full), or its adapters + head (LoRA; its backbone base is then the
                     policy's base arrays).

Precision: trained parameters are kept in `master_dtype` (float32 by default) and cast to the compute dtype
(`cfg.dtype`, bfloat16 on accelerators) inside each matmul; AdamW moments are stored in the master dtype unless
`make_optimizer(mu_dtype=..., nu_dtype=...)` says otherwise (their update is computed in float32 and stored back).
A bfloat16 master copy would silently drop updates: with lr 1e-6 an Adam step changes a weight of size 0.02 by 5e-5
of its value, below bfloat16's resolution of 2^-8. Memory per trained parameter: 4 (master) + 8 (moments; 4 in
bfloat16) + 4 (gradient) bytes, plus 2 bytes per parameter for a bfloat16 reference.

Where the full-fine-tuning reference lives (`reference_memory`): "device", or "host": pinned host memory, brought to
the device only inside the program that scores with it (`reference_model` copies it to device memory; see
`rl.update.make_reference_scorer`), so the update step holds no reference weights (Qwen2.5-7B: 15.2 GB of bfloat16
weights and the reference forward's temporaries off the step's peak).

`TrainState` (donated to and returned by the update step) holds the trained part; `FrozenParams` (read-only
arguments) the rest; `StateSpec` the static part (graph definitions, optimizers, shardings).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from memr1_jax import sharding as sharding_lib
from memr1_jax.models import lora as lora_lib
from memr1_jax.models import value as value_lib
from memr1_jax.models.config import ModelConfig
from memr1_jax.models.decoder import Decoder

# Where a full-fine-tuning reference copy is kept (`init_train_state(reference_memory=...)`).
REFERENCE_MEMORIES = ("device", "host")
# Where the optimizers' states are kept between updates (`init_train_state(optimizer_memory=...)`).
OPTIMIZER_MEMORIES = ("device", "host")


@flax.struct.dataclass
class TrainState:
  """What one update step changes (pure pytrees of arrays; save it with `memr1_jax.checkpoint`)."""

  updates: jax.Array  # int32 scalar: optimizer updates applied so far (skipped non-finite ones not counted).
  policy: Any  # trained policy parameters (pure dict), master dtype.
  policy_opt: Any  # optax state of `policy`.
  value: Any = None  # trained value-model parameters (PPO), or None.
  value_opt: Any = None


@flax.struct.dataclass
class FrozenParams:
  """Weights the update step reads but never changes."""

  policy: Any  # the policy's untrained parameters: the base weights under LoRA, {} under full fine-tuning.
  reference: Any = None  # full fine-tuning: the reference model's parameters (None under LoRA or without KL).
  value: Any = None  # the value model's untrained parameters (its backbone base under LoRA, else {}).


@dataclasses.dataclass(frozen=True)
class StateSpec:
  """Static description of a learner: graphs, optimizers, learning-rate schedules, shardings."""

  policy_cfg: ModelConfig
  policy_graphdef: Any
  reference_graphdef: Any | None  # None: no reference model.
  value_graphdef: Any | None  # None: no value model (GRPO).
  actor_tx: optax.GradientTransformation
  critic_tx: optax.GradientTransformation | None
  actor_lr: Callable[[jax.Array], jax.Array]  # schedule: optimizer updates applied -> learning rate.
  critic_lr: Callable[[jax.Array], jax.Array] | None
  lora: bool
  mesh: Mesh | None = None
  reference_on_host: bool = False  # the reference copy is in pinned host memory (`reference_memory="host"`).
  optimizer_on_host: bool = False  # the optimizers' states are in pinned host memory (`optimizer_memory="host"`).
  state_shardings: Any = None  # a TrainState of NamedShardings (None without a mesh).
  frozen_shardings: Any = None  # a FrozenParams of NamedShardings (None without a mesh).


def learning_rate_schedule(lr: float, warmup_steps: int = 0, delay_steps: int = 0, decay_steps: int = 0
                           ) -> Callable[[jax.Array], jax.Array]:
  """0 for the first `delay_steps` optimizer updates, then a linear warmup from 0 to `lr` over `warmup_steps`
  updates, then constant, or with `decay_steps` > 0 a cosine decay reaching 0 after `decay_steps` updates in all
  (warmup included)."""
  if decay_steps > 0:
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(decay_steps, warmup_steps + 1))
  elif warmup_steps > 0:
    schedule = optax.warmup_constant_schedule(0.0, lr, warmup_steps)
  else:
    schedule = optax.constant_schedule(lr)
  if delay_steps <= 0:
    return schedule
  return optax.join_schedules([optax.constant_schedule(0.0), schedule], [delay_steps])


def _scale_by_adam(b1: float, b2: float, eps: float, mu_dtype: Any, nu_dtype: Any) -> optax.GradientTransformation:
  """`optax.scale_by_adam` whose second moment is stored in `nu_dtype` (None: the parameters' dtype).

  optax computes each moment update in the promoted (float32) dtype and casts it back like the stored state, so only
  the initial state's dtype needs setting.
  """
  adam = optax.scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype)
  if nu_dtype is None:
    return adam
  init = lambda params: adam.init(params)._replace(nu=optax.tree.zeros_like(params, dtype=nu_dtype))  # noqa: E731
  return optax.GradientTransformation(init, adam.update)


def make_optimizer(schedule: Callable[[jax.Array], jax.Array] | float, *, weight_decay: float = 0.0,
                   max_grad_norm: float | None = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   mu_dtype: Any = None, nu_dtype: Any = None) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW; weight decay only on matrices (not on norms, biases, the value head).

  Args:
    schedule: learning rate or schedule (`learning_rate_schedule`).
    weight_decay: decoupled weight decay.
    max_grad_norm: clip the global gradient norm to this (None or 0: no clipping).
    b1, b2, eps: Adam constants.
    mu_dtype, nu_dtype: storage dtypes of the first / second moment (None or "": the parameters' dtype). bfloat16
      halves their memory. A bfloat16 second moment with b2 = 0.999 never decays (b2 * nu rounds back to nu at
      bfloat16's 8-bit precision; with 0.995 or lower it does), so it follows a rising gradient scale, not a falling
      one: pair it with b2 <= 0.995.

  Returns:
    the optax transformation (the same state structure as `optax.adamw`, behind the optional clipping).
  """
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
  adamw = optax.chain(_scale_by_adam(b1, b2, eps, mu_dtype or None, nu_dtype or None),
                      optax.add_decayed_weights(weight_decay, decay_mask), optax.scale_by_learning_rate(schedule))
  if not max_grad_norm:
    return adamw
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)


def _cast_floats(tree, dtype, *, fresh: bool = False):
  """Float leaves cast to dtype; with `fresh`, never the input arrays themselves (they may be donated later)."""

  def cast(x):
    y = x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jnp.copy(y) if fresh and y is x else y

  return jax.tree.map(cast, tree)


def _shardings(state: nnx.State, mesh: Mesh | None):
  return None if mesh is None else nnx.to_pure_dict(sharding_lib.state_shardings(state, mesh))


def _opt_shardings(tx: optax.GradientTransformation, params, param_shardings, mesh: Mesh):
  """NamedShardings of tx's state: param-shaped leaves like their parameter, counters replicated."""
  abstract = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(tx, lambda _, s: s, abstract, param_shardings,
                               transform_non_params=lambda _: replicated)


def _place(tree, shardings):
  if shardings is None:
    return tree
  return jax.tree.map(jax.device_put, tree, shardings)


def _colocate(tree, like: jax.Array):
  """`tree` placed replicated on the mesh of `like` when that is a 1-device mesh (else unchanged).

  A model loaded onto a 1-device mesh without a learner mesh (one device): the step counter and the optimizers'
  counters start on the default device and the weights with their logical specs, but the jitted update returns all
  of them replicated on the mesh, and a second compilation would follow at the second step; placed that way from
  the start, the first compilation serves every step.
  """
  sharding = getattr(like, "sharding", None)  # None under tracing (`jax.eval_shape` of a learner).
  if not isinstance(sharding, NamedSharding) or sharding.mesh.size != 1:
    return tree

  def place(x):  # Each leaf keeps its memory kind (optimizer states in host memory stay there).
    return jax.device_put(x, NamedSharding(sharding.mesh, P(), memory_kind=x.sharding.memory_kind))

  return jax.tree.map(place, tree)


def _init_opt(tx, params, shardings, on_host: bool):
  """tx's state for `params`, placed by `shardings` (a mesh's, already of the right memory kind) or, without a
  mesh, in pinned host memory when `on_host`."""
  opt = jax.jit(tx.init, out_shardings=shardings)(params)
  return jax.device_put(opt, jax.memory.Space.Host) if on_host and shardings is None else opt


def _host_kind(shardings):
  return jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), shardings)


def optimizer_states_to(space: jax.memory.Space, state: TrainState) -> TrainState:
  """`state` with its optimizers' states moved to `space` (jax.memory.Space.Device / .Host); inside a jitted
  program the copy belongs to that program (the update step brings host states in for the update only)."""
  move = lambda opt: None if opt is None else jax.device_put(opt, space)  # noqa: E731
  return state.replace(policy_opt=move(state.policy_opt), value_opt=move(state.value_opt))


def init_train_state(policy: Decoder, actor_tx: optax.GradientTransformation, *,
                     actor_lr: Callable[[jax.Array], jax.Array],
                     value_model: value_lib.ValueModel | None = None,
                     critic_tx: optax.GradientTransformation | None = None,
                     critic_lr: Callable[[jax.Array], jax.Array] | None = None,
                     reference: bool = True, mesh: Mesh | None = None, master_dtype: str = "float32",
                     reference_dtype: str | None = None, reference_memory: str = "device",
                     optimizer_memory: str = "device") -> tuple[TrainState, FrozenParams, StateSpec]:
  """Splits the models into trained and frozen parts, casts, shards, and initialises the optimizers.

  Args:
    policy: the policy decoder (with adapters when `policy.cfg.lora_rank > 0`, see `lora.add_lora`).
    actor_tx, actor_lr: the policy's optimizer (`make_optimizer`) and its schedule (for the metrics).
    value_model: PPO's value model (`value.value_model_from_decoder`), or None.
    critic_tx, critic_lr: its optimizer and schedule.
    reference: keep a frozen reference for the KL term. Under LoRA it is the base weights (free); under full
      fine-tuning a copy of the policy's current weights in `reference_dtype`.
    mesh: shard everything by the logical-axis rules over this mesh (None: default device). Pass models already
      placed on it (`sharding.shard_model`, `load_pretrained(mesh=...)`), so that arrays shared between the
      policy, the reference and a LoRA value model are not copied by the placement.
    master_dtype: dtype of the trained parameters.
    reference_dtype: dtype of a full-fine-tuning reference copy (default: `policy.cfg.param_dtype`).
    reference_memory: where that copy lives, "device" or "host" (pinned host memory; score with
      `rl.update.make_reference_scorer` and pass the batch's reference log-probs to the update step).
    optimizer_memory: where the optimizers' states (AdamW's moments and counters) live between updates, "device" or
      "host" (pinned host memory: `rl.update.apply_gradients` copies them to the device for the optimizer update
      and back, so the forward and backward passes run without them on the device).

  Returns:
    (state, frozen, spec). The trained parameters are new arrays (the step donates them); frozen ones may be the
    models' own arrays.
  """
  lora = policy.cfg.lora_rank > 0
  if reference_memory not in REFERENCE_MEMORIES:
    raise ValueError(f"train_state.py: reference_memory={reference_memory!r}, expected one of {REFERENCE_MEMORIES}")
  if optimizer_memory not in OPTIMIZER_MEMORIES:
    raise ValueError(f"train_state.py: optimizer_memory={optimizer_memory!r}, expected one of {OPTIMIZER_MEMORIES}")
  opt_on_host = optimizer_memory == "host"
  on_host = reference and not lora and reference_memory == "host"
  if reference and lora and reference_memory == "host":
    raise ValueError("train_state.py: reference_memory='host' moves a full-fine-tuning reference copy; under LoRA the "
                     "reference is the policy's own base weights (nothing to move)")
  policy_graphdef, trained, rest = nnx.split(policy, lora_lib.LORA if lora else nnx.Param, ...)
  trained_pure = _cast_floats(nnx.to_pure_dict(trained), master_dtype, fresh=True)
  frozen_policy = nnx.to_pure_dict(rest)
  reference_graphdef, reference_pure, reference_shardings = None, None, None
  if reference and lora:
    reference_graphdef = nnx.graphdef(nnx.eval_shape(lambda: lora_lib.without_lora(policy)))
  elif reference:
    reference_graphdef = policy_graphdef
    reference_pure = _cast_floats(nnx.to_pure_dict(trained), reference_dtype or policy.cfg.param_dtype)
    reference_shardings = _shardings(trained, mesh)
    if on_host and mesh is not None:
      reference_shardings = _host_kind(reference_shardings)
    elif on_host:
      reference_pure = jax.device_put(reference_pure, jax.memory.Space.Host)

  value_graphdef, value_pure, value_rest, value_state_shardings, value_rest_shardings = None, None, None, None, None
  if value_model is not None:
    if critic_tx is None or critic_lr is None:
      raise ValueError("train_state.py: a value model needs critic_tx and critic_lr")
    value_filter = value_lib.LORA_AND_HEAD if value_model.cfg.lora_rank else nnx.Param
    value_graphdef, value_trained, value_rest_state = nnx.split(value_model, value_filter, ...)
    value_pure = _cast_floats(nnx.to_pure_dict(value_trained), master_dtype, fresh=True)
    value_rest = nnx.to_pure_dict(value_rest_state)
    value_state_shardings = _shardings(value_trained, mesh)
    value_rest_shardings = _shardings(value_rest_state, mesh)

  policy_shardings = _shardings(trained, mesh)
  trained_pure = _place(trained_pure, policy_shardings)
  policy_opt_shardings = None if mesh is None else _opt_shardings(actor_tx, trained_pure, policy_shardings, mesh)
  value_opt_shardings = None
  if value_model is not None:
    value_pure = _place(value_pure, value_state_shardings)
    if mesh is not None:
      value_opt_shardings = _opt_shardings(critic_tx, value_pure, value_state_shardings, mesh)
  if opt_on_host and mesh is not None:
    policy_opt_shardings = _host_kind(policy_opt_shardings)
    value_opt_shardings = None if value_opt_shardings is None else _host_kind(value_opt_shardings)
  state = TrainState(
      updates=_place(jnp.zeros((), jnp.int32), None if mesh is None else NamedSharding(mesh, P())),
      policy=trained_pure,
      policy_opt=_init_opt(actor_tx, trained_pure, policy_opt_shardings, opt_on_host),
      value=value_pure,
      value_opt=None if value_model is None else _init_opt(critic_tx, value_pure, value_opt_shardings, opt_on_host))
  frozen = FrozenParams(policy=_place(frozen_policy, _shardings(rest, mesh)),
                        reference=_place(reference_pure, reference_shardings),
                        value=_place(value_rest, value_rest_shardings))
  state_shardings = frozen_shardings = None
  if mesh is None:
    state = _colocate(state, jax.tree.leaves(trained_pure)[0])
  else:
    state_shardings = TrainState(updates=NamedSharding(mesh, P()), policy=policy_shardings,
                                 policy_opt=policy_opt_shardings, value=value_state_shardings,
                                 value_opt=value_opt_shardings)
    frozen_shardings = FrozenParams(policy=_shardings(rest, mesh), reference=reference_shardings,
                                    value=value_rest_shardings)
  spec = StateSpec(policy_cfg=policy.cfg, policy_graphdef=policy_graphdef, reference_graphdef=reference_graphdef,
                   value_graphdef=value_graphdef, actor_tx=actor_tx, critic_tx=critic_tx, actor_lr=actor_lr,
                   critic_lr=critic_lr, lora=lora, mesh=mesh, state_shardings=state_shardings,
                   frozen_shardings=frozen_shardings, reference_on_host=on_host, optimizer_on_host=opt_on_host)
  return state, frozen, spec


def policy_model(spec: StateSpec, state: TrainState, frozen: FrozenParams, dtype: str | None = None) -> Decoder:
  """The current policy as a Decoder (for rollouts, evaluation, export), trained parameters cast to `dtype`.

  dtype defaults to the policy config's `param_dtype`; the arrays are new (the state may be donated afterwards).
  """
  params = _cast_floats(state.policy, dtype or spec.policy_cfg.param_dtype, fresh=True)
  return nnx.merge(spec.policy_graphdef, params, frozen.policy)


def reference_model(spec: StateSpec, frozen: FrozenParams) -> Decoder:
  """The frozen reference policy (under LoRA: the base weights with adapters disabled).

  A reference kept in host memory is copied to device memory: inside a jitted program, for that program only.
  """
  if spec.reference_graphdef is None:
    raise ValueError("train_state.py: this learner has no reference model (init_train_state(reference=False))")
  if spec.lora:
    return nnx.merge(spec.reference_graphdef, frozen.policy)
  reference = frozen.reference
  if spec.reference_on_host:
    if reference is None:
      raise ValueError("train_state.py: this FrozenParams holds no reference (the update step's, without it)")
    reference = jax.device_put(reference, jax.memory.Space.Device)
  return nnx.merge(spec.reference_graphdef, reference, frozen.policy)


def value_model(spec: StateSpec, state: TrainState, frozen: FrozenParams) -> value_lib.ValueModel:
  """The current value model (trained parameters in their master dtype)."""
  if spec.value_graphdef is None:
    raise ValueError("train_state.py: this learner has no value model")
  return nnx.merge(spec.value_graphdef, state.value, frozen.value)

