"""Device mesh (data, fsdp, tensor), logical-axis rules, and helpers to shard parameters and batches.

Parameters carry `logical_axes` metadata (e.g. ("embed", "mlp")); `LOGICAL_RULES` maps each logical name to a
mesh axis. A dimension whose size does not divide by its mesh axis is replicated instead (e.g. 2 KV heads on
a tensor axis of 8), so every preset loads on every mesh.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of axes, or None for replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # Activations: batch over data and fsdp.
    "vocab": "tensor",
    "embed": "fsdp",  # FSDP: the model dimension of every weight.
    "heads": "tensor",  # Megatron-style tensor parallelism over heads and the MLP hidden dimension.
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "lora_rank": None,
}


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all). One entry of `shape` may be -1 (fill)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} does not cover the {len(devices)} devices")
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: dict | None = None) -> P:
  """PartitionSpec for an array of `shape` whose dimensions are named `axes`; non-divisible dims replicate."""
  if not axes:
    return P()
  rules = LOGICAL_RULES if rules is None else rules
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    mesh_axes = rules.get(name) if name is not None else None
    if mesh_axes is None:
      spec.append(None)
      continue
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
    n = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
    if not mesh_axes or size % n:
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def variable_sharding(var: nnx.Variable, mesh: Mesh) -> NamedSharding:
  """The NamedSharding of one (possibly abstract) NNX variable from its `logical_axes` metadata."""
  axes = var.get_metadata().get("logical_axes")
  return NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh))


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
  """Maps an (abstract) NNX state to a state of NamedShardings with the same structure."""
  return jax.tree.map(lambda v: variable_sharding(v, mesh), state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
  """Places every variable of `model` on `mesh` by its logical axes (in place) and returns the model."""
  graphdef, state = nnx.split(model)
  shardings = state_shardings(state, mesh)
  state = jax.tree.map(lambda x, s: jax.device_put(x, s), nnx.to_pure_dict(state), nnx.to_pure_dict(shardings))
  nnx.update(model, state)
  return model


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a [B, ...] batch: B over (data, fsdp) where those axes are > 1, the rest replicated."""
  batch_axes = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1) or None
  return NamedSharding(mesh, P(batch_axes, *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh):
  """device_put every [B, ...] leaf of `batch` with `batch_sharding` (B must divide by data * fsdp)."""
  return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x))), batch)


def maybe_initialize_distributed(enabled: bool = False, coordinator_address: str | None = None,
                                 num_processes: int | None = None, process_id: int | None = None) -> None:
  """Calls `jax.distributed.initialize` for multi-host runs; a no-op unless `enabled`.

  On TPU VM slices and under SLURM the arguments may be left None: JAX detects the topology itself.
  Must run before anything touches the devices.
  """
  if not enabled or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
