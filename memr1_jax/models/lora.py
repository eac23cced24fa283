"""LoRA: low-rank adapters on the decoder's attention and MLP projections (Hu et al. 2021, arXiv 2106.09685).

A projection y = x W gets y = x W + (alpha / r) (x A) B with A [in..., r] and B [r, out...]. A starts uniform in
+-1/sqrt(fan_in) (PEFT's kaiming-uniform), B at zero, so a fresh adapter leaves the model unchanged. Adapter
weights are `nnx.LoRAParam` (a subclass of `nnx.Param`) with logical axes (the base weight's axes plus
"lora_rank"), so they shard by the same rules. The decoder builds adapters when `cfg.lora_rank > 0`; the base
weights are the other `nnx.Param`s, so `nnx.split(model, nnx.LoRAParam, ...)` separates the trainable adapters
from the frozen base, and the same base merged into a `lora_rank=0` graph is the model with adapters disabled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from memr1_jax import sharding as sharding_lib

# Filters: the adapter weights, and every other parameter (the frozen base under LoRA).
LORA = nnx.LoRAParam
BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


class LoRA(nnx.Module):
  """The adapter of one weight whose first `num_in` dimensions contract with the input's last `num_in`."""

  def __init__(self, weight: nnx.Param, num_in: int, cfg, *, rngs: nnx.Rngs):
    """weight: the base projection (shape and logical axes are read from it); cfg: a ModelConfig with lora_rank."""
    shape, axes = tuple(weight.shape), tuple(weight.get_metadata().get("logical_axes") or (None,) * weight.ndim)
    in_shape, out_shape = shape[:num_in], shape[num_in:]
    rank, pd = cfg.lora_rank, cfg.jnp_param_dtype
    bound = 1.0 / np.sqrt(np.prod(in_shape))
    self.a = nnx.LoRAParam(jax.random.uniform(rngs.params(), in_shape + (rank,), pd, -bound, bound),
                           logical_axes=axes[:num_in] + ("lora_rank",))
    self.b = nnx.LoRAParam(jnp.zeros((rank,) + out_shape, pd), logical_axes=("lora_rank",) + axes[num_in:])
    self.num_in = num_in
    self.scale = cfg.lora_alpha / rank
    self.dt = cfg.jnp_dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """The adapter's contribution (alpha / r) (x A) B for input x [..., in...] -> [..., out...]."""
    h = jnp.tensordot(x.astype(self.dt), self.a[...].astype(self.dt), axes=self.num_in)
    return jnp.tensordot(h * jnp.asarray(self.scale, self.dt), self.b[...].astype(self.dt), axes=1)

  def delta(self) -> jax.Array:
    """The dense weight update (alpha / r) A B in the base weight's layout (float32)."""
    return self.scale * jnp.tensordot(self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32), axes=1)


def _adapters(model: nnx.Module) -> list[tuple[tuple, nnx.Module, LoRA]]:
  """(path, owner module, adapter) for every LoRA adapter attribute `<weight>` -> `<prefix>_lora` in `model`."""
  found = []
  for path, module in nnx.iter_graph(model):
    if isinstance(module, LoRA):
      found.append((path[:-1], path[-1]))
  out = []
  for owner_path, attr in found:
    owner = model
    for p in owner_path:
      owner = owner[p] if isinstance(p, int) else getattr(owner, p)
    out.append((owner_path, owner, attr))
  return out


def _weight_name(owner: nnx.Module, adapter_attr: str) -> str:
  """The base weight an adapter attribute belongs to: `q_lora` -> `q_dnh` (the attribute named `q_<dims>`)."""
  prefix = adapter_attr[: -len("_lora")] + "_"
  names = [n for n, v in vars(owner).items() if n.startswith(prefix) and isinstance(v, nnx.Param)
           and not n.startswith(prefix + "bias")]
  if len(names) != 1:
    raise ValueError(f"lora.py: cannot find the weight of adapter {adapter_attr!r} (candidates {names})")
  return names[0]


def add_lora(model: nnx.Module, rank: int, alpha: float = 16.0, *, seed: int = 0,
             mesh: Mesh | None = None) -> nnx.Module:
  """The same model with fresh adapters of `rank` (B = 0, so outputs are unchanged); base arrays are shared.

  Args:
    model: a Decoder (or a module holding one, e.g. a ValueModel) built with `cfg.lora_rank == 0`.
    rank, alpha: adapter rank and scaling numerator.
    seed: initialises A.
    mesh: place the adapters on this mesh by their logical axes (None: default device).

  Returns:
    a new module of the same class with `cfg.lora_rank = rank`; its base parameters are `model`'s arrays.
  """
  if rank < 1:
    raise ValueError(f"lora.py: rank must be >= 1, got {rank}")
  cfg = model.cfg.replace(lora_rank=rank, lora_alpha=float(alpha))
  build = lambda: type(model)(cfg, rngs=nnx.Rngs(seed))  # noqa: E731
  graphdef, abstract_lora, abstract_rest = nnx.split(nnx.eval_shape(build), LORA, ...)
  out_shardings = None
  if mesh is not None:
    out_shardings = nnx.to_pure_dict(sharding_lib.state_shardings(abstract_lora, mesh))
  # Only the adapters leave the program; XLA drops the base's random init.
  init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build(), LORA)), out_shardings=out_shardings)
  rest = nnx.to_pure_dict(nnx.state(model, ...))
  expected = jax.tree.structure(nnx.to_pure_dict(abstract_rest))
  if jax.tree.structure(rest) != expected:
    raise ValueError("lora.py: add_lora needs a model without adapters of the same architecture")
  return nnx.merge(graphdef, init(), rest)


def without_lora(model: nnx.Module) -> nnx.Module:
  """The model with adapters disabled: the same class with `cfg.lora_rank = 0` over `model`'s base arrays (no copy)."""
  cfg = model.cfg.replace(lora_rank=0)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, nnx.to_pure_dict(nnx.state(model, BASE)))


def merge_lora(model: nnx.Module) -> nnx.Module:
  """A model without adapters whose weights are W + (alpha / r) A B, for export (e.g. `export_pretrained`).

  Args:
    model: a module built with `cfg.lora_rank > 0`.

  Returns:
    a new module of the same class with `cfg.lora_rank = 0` (merged weights in the base weights' dtype).
  """
  cfg = model.cfg.replace(lora_rank=0)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0))))
  merged = nnx.to_pure_dict(nnx.state(model, BASE))
  for owner_path, owner, attr in _adapters(model):
    name = _weight_name(owner, attr)
    node = merged
    for p in owner_path:
      node = node[p]
    weight = node[name]
    node[name] = (weight.astype(jnp.float32) + getattr(owner, attr).delta()).astype(weight.dtype)
  if jax.tree.structure(merged) != jax.tree.structure(nnx.to_pure_dict(abstract_state)):
    raise ValueError("lora.py: merged parameters do not match the adapter-free architecture")
  return nnx.merge(graphdef, merged)
