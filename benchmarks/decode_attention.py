"""Decode-step attention over a KV cache: the cache layouts and the shared-prefix cache, side by side in one process.

  python benchmarks/decode_attention.py                       # the CPU demo's shapes (K=2 heads of 32)
  python benchmarks/decode_attention.py --kv_heads=4 --q_per_kv=7 --head_dim=128 --rows=64 --slots=640
  python benchmarks/decode_attention.py --samples=8 --rows=128 --slots=1088 --steps=64   # a GRPO group of 8

Each variant runs `--steps` decode steps of one layer in a jitted `fori_loop` (write this token's K / V into the
cache with a dynamic-update-slice, then attend over it with a validity mask), on the default device:
  1. [B, S, K, H] cache + `jax.nn.dot_product_attention` (the decoder before the [B, K, S, H] layout);
  2. [B, K, S, H] cache + `models.attention.cached_attention` (the decoder for one sample per prompt);
  3. with --samples n > 1: the prompt part of the cache once per prompt ([B / n, K, S - steps, H]) plus per-row
     slots for the new tokens ([B, K, steps, H]) + `models.attention.cascade_attention` (the decoder for n > 1).
The prompt slots of the n rows of a prompt hold the same keys / values in every variant. Prints ms per step for each
and the speed-ups over variant 1, and checks that all give the same outputs.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memr1_jax.models.attention import cached_attention, cascade_attention  # pylint: disable=g-import-not-at-top

_ROWS = flags.DEFINE_list("rows", ["8", "32", "64"], "Batch rows (prompts x samples).")
_SLOTS = flags.DEFINE_integer("slots", 256, "Cache slots (prompt bucket + new-token bucket).")
_KV = flags.DEFINE_integer("kv_heads", 2, "KV heads K.")
_G = flags.DEFINE_integer("q_per_kv", 2, "Query heads per KV head G.")
_H = flags.DEFINE_integer("head_dim", 32, "Head dim H.")
_STEPS = flags.DEFINE_integer("steps", 64, "Decode steps per call.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Cache and query dtype.")
_SAMPLES = flags.DEFINE_integer("samples", 1, "Rows per prompt n (rows must divide by it); > 1 adds the cascade.")


def _loop(layout: str, b: int, s: int, k: int, g: int, h: int, steps: int, dtype, n: int):
  """A jitted fn(q_stbnh, new_kv_stbkh) -> outputs [steps, b, 1, n, h] of `steps` decode steps in `layout`."""
  start = s - steps

  def run(q_stbnh, new_stbkh):
    valid_bs = jnp.arange(s)[None, :] < start
    key = jax.random.key(0)
    # The prompt slots: one draw per prompt, the same in every layout; the new-token slots start empty.
    prefix_k = jax.random.normal(key, (b // n, start, k, h), dtype)
    prefix_v = jax.random.normal(jax.random.fold_in(key, 1), (b // n, start, k, h), dtype)
    if layout == "cascade":
      return _cascade_loop(q_stbnh, new_stbkh, prefix_k.transpose(0, 2, 1, 3), prefix_v.transpose(0, 2, 1, 3))
    empty = jnp.zeros((b, steps, k, h), dtype)
    k_cache = jnp.concatenate([jnp.repeat(prefix_k, n, axis=0), empty], axis=1)
    v_cache = jnp.concatenate([jnp.repeat(prefix_v, n, axis=0), empty], axis=1)
    if layout == "bksh":
      k_cache, v_cache = k_cache.transpose(0, 2, 1, 3), v_cache.transpose(0, 2, 1, 3)

    def step(i, carry):
      k_cache, v_cache, valid_bs, out = carry
      slot = start + i
      new = new_stbkh[i]
      valid_bs = valid_bs.at[:, slot].set(True)
      mask_b1s = valid_bs[:, None, :]
      if layout == "bskh":
        k_cache = jax.lax.dynamic_update_slice(k_cache, new, (0, slot, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, new, (0, slot, 0, 0))
        o = jax.nn.dot_product_attention(q_stbnh[i], k_cache, v_cache, mask=mask_b1s[:, None], scale=h ** -0.5)
      else:
        k_cache = jax.lax.dynamic_update_slice(k_cache, new.transpose(0, 2, 1, 3), (0, 0, slot, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, new.transpose(0, 2, 1, 3), (0, 0, slot, 0))
        o = cached_attention(q_stbnh[i], k_cache, v_cache, mask_b1s, h ** -0.5)
      return k_cache, v_cache, valid_bs, out.at[i].set(o)

    out = jnp.zeros((steps, b, 1, k * g, h), dtype)
    return jax.lax.fori_loop(0, steps, step, (k_cache, v_cache, valid_bs, out))[3]

  def _cascade_loop(q_stbnh, new_stbkh, prefix_k_bksh, prefix_v_bksh):
    prefix_valid_bs = jnp.ones((b // n, start), bool)

    def step(i, carry):
      k_suffix, v_suffix, out = carry
      new = new_stbkh[i].transpose(0, 2, 1, 3)
      k_suffix = jax.lax.dynamic_update_slice(k_suffix, new, (0, 0, i, 0))
      v_suffix = jax.lax.dynamic_update_slice(v_suffix, new, (0, 0, i, 0))
      mask_b1s = (jnp.arange(steps) <= i)[None, None, :]
      o = cascade_attention(q_stbnh[i], prefix_k_bksh, prefix_v_bksh, prefix_valid_bs, k_suffix, v_suffix,
                            jnp.broadcast_to(mask_b1s, (b, 1, steps)), h ** -0.5)
      return k_suffix, v_suffix, out.at[i].set(o)

    empty = jnp.zeros((b, k, steps, h), dtype)
    out = jnp.zeros((steps, b, 1, k * g, h), dtype)
    return jax.lax.fori_loop(0, steps, step, (empty, empty, out))[2]

  return jax.jit(run)


def main(argv):
  del argv
  dtype = jnp.dtype(_DTYPE.value)
  k, g, h, s, steps, n = _KV.value, _G.value, _H.value, _SLOTS.value, _STEPS.value, _SAMPLES.value
  layouts = ("bskh", "bksh", "cascade") if n > 1 else ("bskh", "bksh")
  print(f"device: {jax.devices()[0].device_kind}; K={k} G={g} H={h}, {s} slots, {steps} steps, {_DTYPE.value}, "
        f"{n} samples per prompt")
  header = "| rows | [B,S,K,H] + dot_product_attention | [B,K,S,H] + cached_attention | speed-up |"
  print(header + (" shared prefix + cascade_attention | speed-up |" if n > 1 else ""))
  print("|---" * (len(layouts) * 2) + "|")
  for b in map(int, _ROWS.value):
    rng = np.random.default_rng(b)
    q = jnp.asarray(rng.standard_normal((steps, b, 1, k * g, h)), dtype)
    new = jnp.asarray(rng.standard_normal((steps, b, 1, k, h)), dtype)
    times, outs = {}, {}
    for layout in layouts:
      fn = _loop(layout, b, s, k, g, h, steps, dtype, n)
      outs[layout] = np.asarray(fn(q, new).astype(jnp.float32))
      best = float("inf")
      for _ in range(5):
        t0 = time.perf_counter()
        fn(q, new).block_until_ready()
        best = min(best, time.perf_counter() - t0)
      times[layout] = best / steps * 1e3
    tol = 1e-4 if dtype == jnp.float32 else 3e-2
    cells = [f"{times['bskh']:.3f} ms"]
    for layout in layouts[1:]:
      np.testing.assert_allclose(outs[layout], outs["bskh"], atol=tol, rtol=tol)
      cells += [f"{times[layout]:.3f} ms", f"{times['bskh'] / times[layout]:.2f}x"]
    print(f"| {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
