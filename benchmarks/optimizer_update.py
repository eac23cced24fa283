"""The optimizer update alone: the learner's guarded AdamW update vs the same update guarded leaf by leaf, same run.

On a random-init policy of a preset's shape (float32 master weights, --moments_dtype moments), with one gradient
tree, three jitted programs, each donating the weights and the optimizer state:
- `apply_gradients`: `rl.update.apply_gradients`, what every update step runs (clipping, AdamW, and the skip of a
  non-finite update as one `lax.cond`, so a finite update is the AdamW update and nothing else);
- `where per leaf`: the same AdamW update, then `jnp.where(finite, new, old)` over every weight and moment (how the
  skip was written before; on XLA's CPU backend it is a separate pass over the state);
- `unguarded`: the AdamW update with no skip at all (the floor).
Reported per program and round (--rounds passes over the three): median milliseconds over --steps after one
warm-up, and the bytes an ideal update moves (read weights, gradients and both moments; write weights and moments)
per second.

CPU:  python benchmarks/optimizer_update.py --preset qwen2.5-0.5b
GPU:  python benchmarks/optimizer_update.py --preset qwen2.5-1.5b --moments_dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from memr1_jax.models.config import get_preset  # pylint: disable=wrong-import-position
from memr1_jax.models.decoder import Decoder  # pylint: disable=wrong-import-position
from memr1_jax.rl import train_state as ts  # pylint: disable=wrong-import-position
from memr1_jax.rl import update as up  # pylint: disable=wrong-import-position


def _learner(args):
  cfg = get_preset(args.preset)
  policy = nnx.merge(*jax.jit(lambda: nnx.split(Decoder(cfg, rngs=nnx.Rngs(0))))())
  schedule = ts.learning_rate_schedule(1e-6)
  tx = ts.make_optimizer(schedule, weight_decay=0.01, mu_dtype=args.moments_dtype, nu_dtype=args.moments_dtype,
                         b2=0.995 if args.moments_dtype == "bfloat16" else 0.999)
  return ts.init_train_state(policy, tx, actor_lr=schedule, reference=False)


def _programs(spec):
  """{name: jitted (state, grads) -> state} of the three variants."""
  config = up.UpdateConfig(algorithm="grpo", group_size=1)

  def library(state, grads):
    return up.apply_gradients(spec, config, state, (grads, None), {"loss": jnp.float32(0.0)})[0]

  def adamw(state, grads):
    updates, opt = spec.actor_tx.update(grads, state.policy_opt, state.policy)
    return state.replace(updates=state.updates + 1, policy=optax.apply_updates(state.policy, updates), policy_opt=opt)

  def where_per_leaf(state, grads):
    finite = jnp.isfinite(optax.global_norm(grads))
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), adamw(state, grads), state)

  return {name: jax.jit(fn, donate_argnums=0) for name, fn in
          (("apply_gradients", library), ("where per leaf", where_per_leaf), ("unguarded", adamw))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="qwen2.5-0.5b")
  parser.add_argument("--moments_dtype", "--moments-dtype", default="", help="'' (float32) or bfloat16")
  parser.add_argument("--steps", type=int, default=5, help="timed updates per program and round")
  parser.add_argument("--rounds", type=int, default=2, help="passes over the three programs")
  args = parser.parse_args(argv)
  state, _, spec = _learner(args)
  grads = jax.jit(lambda p: jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), p))(state.policy)
  params = sum(x.size for x in jax.tree.leaves(state.policy))
  moment_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.policy_opt))
  ideal = params * 4 * 3 + 2 * moment_bytes  # Read weights, gradients, moments; write weights, moments.
  rows = []
  for name, program in list(_programs(spec).items()) * args.rounds:  # Round robin: no program always runs first.
    times = []
    for i in range(args.steps + 1):
      start = time.perf_counter()
      state = jax.block_until_ready(program(state, grads))
      if i:
        times.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(times)
    rows.append({"program": name, "round": len(rows) // 3 + 1, "ms": round(ms, 2),
                 "gb_per_s": round(ideal / ms / 1e6, 1)})
    print(json.dumps(rows[-1]), flush=True)
  print(json.dumps({"preset": args.preset, "params": params, "moments_dtype": args.moments_dtype or "float32",
                    "ideal_gb": round(ideal / 1e9, 2), "device": jax.local_devices()[0].device_kind,
                    "jax": jax.__version__, "rows": rows}), flush=True)


if __name__ == "__main__":
  main()
