"""Rollout throughput: this engine vs Hugging Face transformers `generate`, same shapes, same random weights.

A random-init torch model is built from a preset's shape (on the GPU in the target dtype when there is one), saved
with `save_pretrained`, and loaded by `memr1_jax.models.load_pretrained`, so both sides run the same weights. Both
generate exactly --new_tokens tokens per row (no EOS). Reported: end-to-end tokens/s of each (prefill + decode, one
call, generated tokens only) and their ratio, this engine's prefill time and decode time per step, HF's decode time
per step (its --new_tokens run minus a 1-token run), and the fraction of the HBM-bandwidth floor: (parameter bytes
+ KV-cache bytes read per decode step) / the bandwidth of a large device-to-device copy measured in the same run,
over the measured step time.

CPU (tiny):  python benchmarks/rollout.py --preset tiny --batch 8 --prompt_len 64 --new_tokens 64 --dtype float32
GPU (7B):    python benchmarks/rollout.py --preset qwen2.5-7b --batch 64 --prompt_len 512 --new_tokens 128 \
                 --dtype bfloat16
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

from memr1_jax.models.config import config_to_hf, get_preset  # pylint: disable=wrong-import-position
from memr1_jax.models.loading import load_pretrained  # pylint: disable=wrong-import-position
from memr1_jax.sampling import generation  # pylint: disable=wrong-import-position
from memr1_jax.sampling.samplers import SamplingParams  # pylint: disable=wrong-import-position


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


def time_hf(model, ids: np.ndarray, new_tokens: int, temperature: float, device: str) -> tuple[float, np.ndarray]:
  """Seconds for one HF generate of `new_tokens` tokens (after the caller's warm-up), and the new tokens."""
  input_ids = torch.tensor(ids, dtype=torch.long, device=device)
  kwargs = dict(do_sample=temperature > 0, max_new_tokens=new_tokens, pad_token_id=0,
                attention_mask=torch.ones_like(input_ids))
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


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="tiny", help="model shape preset (memr1_jax.models.config.PRESETS)")
  parser.add_argument("--batch", type=int, default=8, help="prompts per generate call")
  parser.add_argument("--prompt_len", type=int, default=64, help="tokens per prompt (random ids, no padding)")
  parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per prompt")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute")
  parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy on both sides; > 0: sampling")
  parser.add_argument("--repeats", type=int, default=3, help="timed engine calls (the best is reported)")
  parser.add_argument("--attention_impl", default=None, help="jax.nn.dot_product_attention implementation")
  parser.add_argument("--copy_mib", type=int, default=0, help="copy-bandwidth buffer (MiB); 0: 4096 GPU, 256 CPU")
  parser.add_argument("--skip_hf", action="store_true", help="time only this engine")
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = parser.parse_args(argv)

  device = "cuda" if torch.cuda.is_available() else "cpu"
  log(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} on {device}; "
      f"transformers {transformers.__version__}")
  rng = np.random.default_rng(0)
  res: dict = {"args": vars(args), "device": jax.devices()[0].device_kind, "jax": jax.__version__}
  new = args.new_tokens
  gen_tokens = args.batch * new
  with tempfile.TemporaryDirectory(prefix="rollout-bench-") as ckpt:
    t0 = time.perf_counter()
    hf_model = build_hf_checkpoint(args.preset, args.dtype, ckpt, device, seed=0)
    log(f"built and saved the random {args.preset} checkpoint in {time.perf_counter() - t0:.1f}s")
    vocab = hf_model.config.vocab_size
    ids = rng.integers(0, vocab, (args.batch, args.prompt_len)).astype(np.int32)

    if not args.skip_hf:
      time_hf(hf_model, ids, 2, args.temperature, device)  # Warm-up.
      hf_prefill_s, _ = time_hf(hf_model, ids, 1, args.temperature, device)
      hf_s, hf_tokens = time_hf(hf_model, ids, new, args.temperature, device)
      res.update(hf_seconds=hf_s, hf_tokens_per_s=gen_tokens / hf_s, hf_prefill_s=hf_prefill_s,
                 hf_decode_step_ms=1e3 * (hf_s - hf_prefill_s) / max(new - 1, 1))
      log(f"HF generate: {hf_s:.3f}s, {gen_tokens / hf_s:.1f} tokens/s (prefill ~{hf_prefill_s:.3f}s, decode "
          f"~{res['hf_decode_step_ms']:.2f} ms/step)")
    del hf_model
    gc.collect()
    if device == "cuda":
      torch.cuda.empty_cache()

    t0 = time.perf_counter()
    overrides = {} if args.attention_impl is None else {"attention_impl": args.attention_impl}
    model, cfg = load_pretrained(ckpt, dtype=args.dtype, **overrides)
    log(f"load_pretrained: {time.perf_counter() - t0:.1f}s")

  params = SamplingParams.make(temperature=args.temperature)
  prompts = [list(row) for row in ids]
  run = lambda key: generation.generate(model, prompts, key=key, max_new_tokens=new, params=params)
  t0 = time.perf_counter()
  warm = run(0)
  res["compile_and_first_call_s"] = time.perf_counter() - t0
  log(f"compile + first call: {res['compile_and_first_call_s']:.1f}s")
  times = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    out = run(r + 1)
    times.append(time.perf_counter() - t0)
  engine_s = min(times)
  assert out.mask.all(), "every row must generate --new_tokens tokens"
  res.update(engine_seconds=engine_s, engine_tokens_per_s=gen_tokens / engine_s)
  log(f"engine generate: {engine_s:.3f}s, {gen_tokens / engine_s:.1f} tokens/s (calls: "
      f"{', '.join(f'{t:.3f}' for t in times)})")

  # Prefill and decode timed apart, on the same bucketed shapes as `generate`.
  graphdef, state = nnx.split(model)
  p_len, m = generation.bucket_size(args.prompt_len, 16), generation.bucket_size(new)
  ids_bt, mask_bt = generation.pad_prompts(prompts, args.batch, p_len, 0)
  stop, pad, limit = generation.stop_id_array(()), jnp.int32(0), jnp.int32(new)
  row_ids, key = jnp.arange(args.batch, dtype=jnp.int32), jax.random.key(0)
  prefill_s, decode_s = [], []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    cache, logits, lens = jax.block_until_ready(generation.prefill(graphdef, state, ids_bt, mask_bt, n=1,
                                                                  cache_len=p_len + m))
    t1 = time.perf_counter()
    jax.block_until_ready(generation.decode(graphdef, state, cache, logits, lens, row_ids, key, params, stop, pad,
                                            limit, n=1, max_new_bucket=m))
    prefill_s.append(t1 - t0)
    decode_s.append(time.perf_counter() - t1)
  step_s = min(decode_s) / max(new - 1, 1)  # The first token comes from the prefill logits.
  res.update(engine_prefill_s=min(prefill_s), engine_decode_s=min(decode_s), engine_decode_step_ms=1e3 * step_s,
             engine_decode_tokens_per_s=args.batch / step_s)
  log(f"engine prefill {min(prefill_s):.3f}s, decode {min(decode_s):.3f}s = {1e3 * step_s:.3f} ms/step "
      f"({args.batch / step_s:.1f} tokens/s while decoding)")

  # HBM floor: every parameter and the filled part of the KV cache are read once per decode step.
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  kv_token_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.jnp_dtype).itemsize
  kv_bytes = args.batch * (args.prompt_len + new / 2) * kv_token_bytes  # Mean filled length over the decode.
  kv_bytes_read = args.batch * (p_len + m) * kv_token_bytes  # What this engine's attention reads (whole cache).
  copy_mib = args.copy_mib or (4096 if device == "cuda" else 256)
  bandwidth = copy_bandwidth(copy_mib << 20)
  floor_s = (param_bytes + kv_bytes) / bandwidth
  res.update(param_bytes=param_bytes, kv_bytes_per_step=kv_bytes, kv_bytes_read_per_step=kv_bytes_read,
             copy_bandwidth_gb_s=bandwidth / 1e9, floor_step_ms=1e3 * floor_s, fraction_of_floor=floor_s / step_s)
  log(f"params {param_bytes / 1e9:.3f} GB + KV {kv_bytes / 1e9:.3f} GB/step (engine reads {kv_bytes_read / 1e9:.3f})"
      f"; copy bandwidth {bandwidth / 1e9:.1f} GB/s -> floor {1e3 * floor_s:.3f} ms/step; measured "
      f"{1e3 * step_s:.3f} ms/step = {floor_s / step_s:.1%} of the floor")

  if not args.skip_hf:
    res["speedup_end_to_end"] = res["engine_tokens_per_s"] / res["hf_tokens_per_s"]
    res["speedup_decode_step"] = res["hf_decode_step_ms"] / res["engine_decode_step_ms"]
    if args.temperature == 0:
      res["first_token_agreement"] = float((warm.tokens[:, 0] == hf_tokens[:, 0]).mean())
      res["token_agreement"] = float((warm.tokens == hf_tokens).mean())
    log(f"RATIO engine / HF: end-to-end {res['speedup_end_to_end']:.2f}x, decode step "
        f"{res['speedup_decode_step']:.2f}x" + (f"; greedy agreement: first token "
        f"{res['first_token_agreement']:.0%}, all tokens {res['token_agreement']:.0%}" if args.temperature == 0
        else ""))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=2)
  return res


if __name__ == "__main__":
  main()
