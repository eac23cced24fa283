"""Rollout throughput: this engine vs Hugging Face transformers `generate`, same shapes, same random weights.

A random-init torch model is built from a preset's shape (on the GPU in the target dtype when there is one), saved
with `save_pretrained`, and loaded by `memr1_jax.models.load_pretrained`, so both sides run the same weights. Every
row generates exactly its shape's new tokens (no EOS). Shapes (`--shapes`, side by side in one run): `custom` (the
--batch / --samples / --prompt_len / --new_tokens / --temperature flags) and Memory-R1's two GRPO rollouts,
`answer` (16 prompts x 8 samples, prompt 3,072, 64 new) and `manager` (16 x 8, prompt 1,024, 256 new), sampled at
temperature 1; HF runs them with `num_return_sequences=8`, as TRL does. With more than one sample per prompt the
engine runs both decode paths: the prefilled cache repeated per sample, and the shared prompt prefix
(`CascadeCache`, each prompt's KV read once per step).

Reported per shape and path: end-to-end tokens/s (prefill + decode, one call, generated tokens only) and the ratio to
HF, prefill time, ms per decode step (HF's: its full run minus a 1-token run), bytes read per decode step (parameters
+ the whole KV cache as the engine reads it, `models.attention.decode_kv_bytes`), and the fraction of the HBM floor:
(parameters + the filled KV at mean length, each prompt's once) / the bandwidth of a large device-to-device copy
measured in the same run, over the measured step. A markdown table of all shapes ends the output.

CPU (tiny):    python benchmarks/rollout.py --preset tiny --batch 8 --prompt_len 64 --new_tokens 64
CPU (shrunk):  python benchmarks/rollout.py --preset tiny --shapes custom,answer,manager --shrink 4 --prompts 4
GPU (7B):      python benchmarks/rollout.py --preset qwen2.5-7b --dtype bfloat16 --shapes custom,answer,manager \
                   --batch 64 --prompt_len 512 --new_tokens 128
Needs only jax, flax, numpy, torch and transformers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
import transformers  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from memr1_jax.models.attention import decode_kv_bytes  # pylint: disable=wrong-import-position
from memr1_jax.models.config import config_to_hf, get_preset  # pylint: disable=wrong-import-position
from memr1_jax.models.loading import load_pretrained  # pylint: disable=wrong-import-position
from memr1_jax.sampling import generation  # pylint: disable=wrong-import-position
from memr1_jax.sampling.samplers import SamplingParams  # pylint: disable=wrong-import-position


# Memory-R1's rollouts (a GRPO group of 8 per prompt, sampled at temperature 1): the answer agent reads 60 retrieved
# memories (about 3k tokens) and answers briefly; the memory manager reads about 1k tokens and replies with operations.
MEMORY_R1_SHAPES = {
    "answer": dict(prompts=16, samples=8, prompt_len=3072, new_tokens=64, temperature=1.0),
    "manager": dict(prompts=16, samples=8, prompt_len=1024, new_tokens=256, temperature=1.0),
}


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_hf_checkpoint(preset: str, dtype: str, path: str, device: str, seed: int):
  """Random-init torch model of the preset's shape on `device` in `dtype`, saved to `path`. Returns the model."""
  hf = config_to_hf(get_preset(preset))
  hf.update(eos_token_id=None, bos_token_id=None, pad_token_id=0)
  config_cls = transformers.Qwen2Config if hf["model_type"] == "qwen2" else transformers.LlamaConfig
  model_cls = transformers.Qwen2ForCausalLM if hf["model_type"] == "qwen2" else transformers.LlamaForCausalLM
  config = config_cls(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type", "torch_dtype")})
  torch.manual_seed(seed)
  previous = torch.get_default_dtype()
  torch.set_default_dtype(getattr(torch, dtype))
  try:
    with torch.device(device):
      model = model_cls(config)
  finally:
    torch.set_default_dtype(previous)
  # No `model.to(dtype)`: it would also round the float32 RoPE `inv_freq` buffers to bfloat16 (a different model).
  assert all(p.dtype == getattr(torch, dtype) for p in model.parameters())
  model = model.eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  model.save_pretrained(path)
  return model


def sync(device: str) -> None:
  if device == "cuda":
    torch.cuda.synchronize()


def time_hf(model, ids: np.ndarray, new_tokens: int, temperature: float, device: str,
            n: int = 1) -> tuple[float, np.ndarray]:
  """Seconds for one HF generate of `new_tokens` tokens and `n` sequences per prompt (after the caller's warm-up),
  and the new tokens [B * n, new_tokens] (prompt-major, as HF's `num_return_sequences` orders them)."""
  input_ids = torch.tensor(ids, dtype=torch.long, device=device)
  kwargs = dict(do_sample=temperature > 0, max_new_tokens=new_tokens, pad_token_id=0,
                attention_mask=torch.ones_like(input_ids), num_return_sequences=n)
  if temperature > 0:
    kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
  with torch.no_grad():
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(input_ids, **kwargs)
    sync(device)
  return time.perf_counter() - t0, out[:, ids.shape[1]:].cpu().numpy()


def copy_bandwidth(nbytes: int, repeats: int = 5) -> float:
  """Bytes/s of a device-to-device elementwise copy (read + write) of a `nbytes` buffer (best of `repeats`)."""
  x = jnp.zeros((nbytes // 4,), jnp.float32)
  f = jax.jit(lambda a: a + 1.0)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  del x
  return 2 * nbytes / best


def time_engine(model, prompts: list[list[int]], n: int, new: int, params: SamplingParams, shared_prefix: bool,
                repeats: int, bucket_multiple: int) -> dict:
  """One engine path on one shape: best end-to-end `generate` of `repeats` after a compile call, then prefill and
  decode timed apart on the same bucketed shapes (seconds, ms per decode step), and the first call's tokens."""
  run = lambda key: generation.generate(model, prompts, key=key, max_new_tokens=new, params=params, n=n,  # noqa: E731
                                        prompt_bucket_multiple=bucket_multiple, shared_prefix=shared_prefix)
  t0 = time.perf_counter()
  first = run(0)
  res = {"compile_and_first_call_s": time.perf_counter() - t0}
  times = []
  for r in range(repeats):
    t0 = time.perf_counter()
    out = run(r + 1)
    times.append(time.perf_counter() - t0)
  assert out.mask.all(), "every row must generate --new_tokens tokens"
  res.update(seconds=min(times), tokens_per_s=len(prompts) * n * new / min(times), first_tokens=first.tokens)

  graphdef, state = nnx.split(model)
  b = len(prompts)
  p_len, m = generation.length_bucket(len(prompts[0]), 16, bucket_multiple), generation.bucket_size(new)
  ids_bt, mask_bt = generation.pad_prompts(prompts, b, p_len, 0)
  stop, pad, limit = generation.stop_id_array(()), jnp.int32(0), jnp.int32(new)
  row_ids, key = jnp.arange(b * n, dtype=jnp.int32), jax.random.key(0)
  prefill_s, decode_s = [], []
  for i in range(repeats + 1):  # The first call compiles (its static arguments differ from `generate`'s).
    t0 = time.perf_counter()
    cache, logits, lens = jax.block_until_ready(generation.prefill(
        graphdef, state, ids_bt, mask_bt, n=n, cache_len=p_len + m, shared_prefix=shared_prefix))
    t1 = time.perf_counter()
    jax.block_until_ready(generation.decode(graphdef, state, cache, logits, lens, row_ids, key, params, stop, pad,
                                            limit, n=n, max_new_bucket=m))
    if i:
      prefill_s.append(t1 - t0)
      decode_s.append(time.perf_counter() - t1)
  step_s = min(decode_s) / max(new - 1, 1)  # The first token comes from the prefill logits.
  res.update(prefill_s=min(prefill_s), decode_s=min(decode_s), decode_step_ms=1e3 * step_s, p_len=p_len, m=m)
  return res


def run_hf(hf_model, ids: np.ndarray, shape: dict, device: str) -> dict:
  """HF generate on one shape with num_return_sequences = samples (as TRL runs it): end to end and per decode step."""
  n, new, temperature = shape["samples"], shape["new_tokens"], shape["temperature"]
  time_hf(hf_model, ids, 2, temperature, device, n)  # Warm-up.
  prefill_s, _ = time_hf(hf_model, ids, 1, temperature, device, n)
  seconds, tokens = time_hf(hf_model, ids, new, temperature, device, n)
  res = dict(hf_seconds=seconds, hf_tokens_per_s=ids.shape[0] * n * new / seconds, hf_prefill_s=prefill_s,
             hf_decode_step_ms=1e3 * (seconds - prefill_s) / max(new - 1, 1), hf_tokens=tokens)
  log(f"HF generate: {seconds:.3f}s, {res['hf_tokens_per_s']:.1f} tokens/s (prefill ~{prefill_s:.3f}s, decode "
      f"~{res['hf_decode_step_ms']:.2f} ms/step)")
  return res


def run_engine(model, cfg, ids: np.ndarray, shape: dict, res: dict, args) -> dict:
  """Both engine paths (repeated cache; shared prefix when samples > 1) on one shape, added to `res` (HF's)."""
  b, n, p, new = ids.shape[0], shape["samples"], shape["prompt_len"], shape["new_tokens"]
  hf_tokens = res.pop("hf_tokens", None)
  params = SamplingParams.make(temperature=shape["temperature"])
  prompts = [list(row) for row in ids]
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
  kv = dict(num_layers=cfg.num_layers, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
            itemsize=jnp.dtype(cfg.jnp_dtype).itemsize, prompts=b, n=n)
  # HBM floor: the parameters and the filled KV (mean length over the decode, each prompt's KV once) per step.
  floor_bytes = param_bytes + decode_kv_bytes(**kv, prompt_slots=p, new_slots=new // 2, shared_prefix=True)
  floor_s = floor_bytes / args.bandwidth
  res.update(param_bytes=param_bytes, floor_bytes_per_step=floor_bytes, floor_step_ms=1e3 * floor_s)
  for path in ("repeated", "cascade") if n > 1 else ("repeated",):
    eng = time_engine(model, prompts, n, new, params, path == "cascade", args.repeats, args.prompt_bucket_multiple)
    read = param_bytes + decode_kv_bytes(**kv, prompt_slots=eng["p_len"], new_slots=eng["m"],
                                         shared_prefix=path == "cascade")
    tokens = eng.pop("first_tokens")
    res[path] = dict(eng, bytes_read_per_step=read, fraction_of_floor=floor_s / (eng["decode_step_ms"] / 1e3))
    log(f"engine ({path}): {eng['seconds']:.3f}s, {eng['tokens_per_s']:.1f} tokens/s; prefill {eng['prefill_s']:.3f}s,"
        f" decode {eng['decode_step_ms']:.3f} ms/step; reads {read / 1e9:.3f} GB/step (params {param_bytes / 1e9:.3f})"
        f"; floor {1e3 * floor_s:.3f} ms/step = {res[path]['fraction_of_floor']:.1%} of the step")
    if hf_tokens is not None:
      res[path]["speedup_end_to_end"] = eng["tokens_per_s"] / res["hf_tokens_per_s"]
      res[path]["speedup_decode_step"] = res["hf_decode_step_ms"] / eng["decode_step_ms"]
      if shape["temperature"] == 0:
        res[path]["token_agreement"] = float((tokens == hf_tokens).mean())
  if "cascade" in res:
    res["cascade_over_repeated_decode"] = res["repeated"]["decode_step_ms"] / res["cascade"]["decode_step_ms"]
  return res


def table(results: list[dict]) -> str:
  """The shapes side by side as a markdown table."""
  rows = ["| shape | HF `generate` | engine, repeated cache | engine, shared prefix | best / HF | decode ms/step "
          "(HF / repeated / shared) | bytes read per step (repeated / shared) |", "|---|---|---|---|---|---|---|"]
  fmt = lambda r, key, f: f.format(r[key]) if r and key in r else "-"  # noqa: E731
  for r in results:
    rep, cas = r.get("repeated"), r.get("cascade")
    best = max((x for x in (rep, cas) if x), key=lambda x: x["tokens_per_s"])
    rows.append(
        f"| {r['name']}: {r['prompts']} x {r['samples']}, prompt {r['prompt_len']}, {r['new_tokens']} new, "
        f"T={r['temperature']} | {fmt(r, 'hf_tokens_per_s', '{:,.0f} tok/s')} | "
        f"{fmt(rep, 'tokens_per_s', '{:,.0f} tok/s')} | {fmt(cas, 'tokens_per_s', '{:,.0f} tok/s')} | "
        f"{fmt(best, 'speedup_end_to_end', '{:.1f}x')} | "
        f"{fmt(r, 'hf_decode_step_ms', '{:.2f}')} / {fmt(rep, 'decode_step_ms', '{:.2f}')} / "
        f"{fmt(cas, 'decode_step_ms', '{:.2f}')} | {fmt(rep, 'bytes_read_per_step', '{:,}')} / "
        f"{fmt(cas, 'bytes_read_per_step', '{:,}')} |")
  return "\n".join(rows)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="tiny", help="model shape preset (memr1_jax.models.config.PRESETS)")
  parser.add_argument("--shapes", default="custom", help="comma-separated: custom (the flags below), answer, manager")
  parser.add_argument("--batch", type=int, default=8, help="custom shape: prompts per generate call")
  parser.add_argument("--samples", type=int, default=1, help="custom shape: samples per prompt (GRPO group size)")
  parser.add_argument("--prompt_len", type=int, default=64, help="custom shape: tokens per prompt (random ids)")
  parser.add_argument("--new_tokens", type=int, default=64, help="custom shape: tokens generated per row")
  parser.add_argument("--temperature", type=float, default=0.0, help="custom shape: 0 greedy, > 0 sampling")
  parser.add_argument("--shrink", type=int, default=1, help="divide the named shapes' prompt and new lengths by this")
  parser.add_argument("--prompts", type=int, default=0, help="> 0: the named shapes' number of prompts")
  parser.add_argument("--prompt_bucket_multiple", type=int, default=256,
                      help="engine prompt buckets: multiples of this (0: powers of two; 3072 would pad to 4096)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute")
  parser.add_argument("--repeats", type=int, default=3, help="timed engine calls (the best is reported)")
  parser.add_argument("--attention_impl", default=None, help="jax.nn.dot_product_attention implementation")
  parser.add_argument("--copy_mib", type=int, default=0, help="copy-bandwidth buffer (MiB); 0: 4096 GPU, 256 CPU")
  parser.add_argument("--skip_hf", action="store_true", help="time only this engine")
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = parser.parse_args(argv)

  shapes = {"custom": dict(prompts=args.batch, samples=args.samples, prompt_len=args.prompt_len,
                           new_tokens=args.new_tokens, temperature=args.temperature)}
  for name, named in MEMORY_R1_SHAPES.items():
    shapes[name] = dict(named, prompts=args.prompts or named["prompts"], prompt_len=named["prompt_len"] // args.shrink,
                        new_tokens=max(named["new_tokens"] // args.shrink, 2))
  chosen = args.shapes.split(",")
  unknown = sorted(set(chosen) - set(shapes))
  if unknown:
    parser.error(f"--shapes: unknown {unknown}; known: {sorted(shapes)}")

  device = "cuda" if torch.cuda.is_available() else "cpu"
  log(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} on {device}; "
      f"transformers {transformers.__version__}")
  rng = np.random.default_rng(0)
  results = {name: dict(shapes[name], name=name) for name in chosen}
  with tempfile.TemporaryDirectory(prefix="rollout-bench-") as ckpt:
    t0 = time.perf_counter()
    hf_model = build_hf_checkpoint(args.preset, args.dtype, ckpt, device, seed=0)
    log(f"built and saved the random {args.preset} checkpoint in {time.perf_counter() - t0:.1f}s")
    vocab = hf_model.config.vocab_size
    ids = {name: rng.integers(0, vocab, (s["prompts"], s["prompt_len"])).astype(np.int32) for name, s in shapes.items()}
    for name in ([] if args.skip_hf else chosen):
      log(f"--- HF, {name}: {shapes[name]}")
      results[name].update(run_hf(hf_model, ids[name], shapes[name], device))
    del hf_model  # Both sides never hold the GPU at once.
    gc.collect()
    if device == "cuda":
      torch.cuda.empty_cache()
    t0 = time.perf_counter()
    overrides = {} if args.attention_impl is None else {"attention_impl": args.attention_impl}
    model, cfg = load_pretrained(ckpt, dtype=args.dtype, **overrides)
    log(f"load_pretrained: {time.perf_counter() - t0:.1f}s")
  copy_mib = args.copy_mib or (4096 if device == "cuda" else 256)
  args.bandwidth = copy_bandwidth(copy_mib << 20)
  log(f"copy bandwidth {args.bandwidth / 1e9:.1f} GB/s")
  for name in chosen:
    log(f"--- engine, {name}: {shapes[name]}")
    run_engine(model, cfg, ids[name], shapes[name], results[name], args)
  results = list(results.values())
  print(table(results), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "device": jax.devices()[0].device_kind, "jax": jax.__version__,
                 "torch": torch.__version__, "transformers": transformers.__version__, "shapes": results}, f, indent=2)
  return results


if __name__ == "__main__":
  main()
