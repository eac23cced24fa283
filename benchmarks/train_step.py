"""Training-step throughput: the jitted GRPO update step vs a PyTorch Hugging Face step, same shapes, same run.

JAX side: `memr1_jax.rl.update` on a random-init policy of a preset's shape: batch x seq_len tokens per step (a
--prompt_len prompt, the rest response), one optimizer update per step over --micro_batches micro-batches, clipped
surrogate + k3 KL term (behaviour and reference log-probs given, as a rollout would provide them), AdamW with
global-norm clipping. Precision: float32 master weights and AdamW moments, --dtype compute (bf16 matmuls).
PyTorch side: `transformers` *ForCausalLM of the same config, random weights, --dtype parameters, next-token
cross-entropy over every position, backward, fused AdamW; SDPA attention.

Reported per side: seconds per step (median of --steps after --warmup), tokens/s, and MFU = 6 * params * tokens /
time / --peak_flops (params = every weight, embeddings counted once when tied; attention FLOPs not counted).
With --with_reference the JAX step also scores the batch with the frozen reference inside the program; with
--reference_memory host the reference lives in pinned host memory and each timed step is its scoring pass
(`rl.update.make_reference_scorer`) then the update (MFU counts 8 * params * tokens with either).

--memory_compare: compiles the step (on abstract arrays, nothing runs) for each vocabulary-loss path (plain chunks
with rematerialised logits, plain with stored logits, the fused custom-VJP op) with float32 and bfloat16 AdamW
moments, and prints XLA's memory analysis of each side by side (arguments, outputs, temporaries, peak); beside it,
the vocabulary loss alone (gradient of sum(log-probs) + 0.1 sum(entropy)): its temporaries and its time.

--shared_prefix_compare: rows in GRPO groups of --group_size sharing one prompt; times the JAX step with every row
run whole (prompt + response: n (P + T) positions per group) and with each group's prompt run once per micro-batch
(`rl.shared_prefix`: P + n T), same batch, same run, and prints both with the speedup (the shared side's tokens/s
and MFU count every row's P + T tokens, as if run whole: effective figures).

--fit_search: for each preset (largest first) compiles the full GRPO step (policy fwd/bwd + reference forward
inside the step + AdamW) on abstract arrays and reads XLA's memory analysis (arguments + outputs - donated + temp);
reports the largest preset that fits in the device's memory (--device_memory_gib overrides it, e.g. on CPU).
--reference_memory host: the reference in pinned host memory: the update step gets the reference log-probs in the
batch and no reference weights; the scoring pass is compiled and analysed too (its peak counts the train state,
resident on the device meanwhile, and the reference weights copied in). --optimizer_memory host: AdamW's moments in
pinned host memory between updates (`rl.optimizer_memory`); the analysis leaves out host-memory arguments where the
backend reports them apart (GPU / TPU; XLA's CPU analysis counts them as device arguments).

CPU:   python benchmarks/train_step.py --preset tiny --batch 8 --seq_len 128 --dtype float32 --torch
       python benchmarks/train_step.py --preset tiny --batch 16 --micro_batches 2 --group_size 8 --seq_len 3136 \
           --prompt_len 3072 --shared_prefix_compare   # the answer agent's shape (prompts of 60 memories)
       python benchmarks/train_step.py --preset tiny --batch 8 --seq_len 128 --fit_search --device_memory_gib 1
       python benchmarks/train_step.py --preset small --vocab 32768 --batch 8 --seq_len 512 --logprob_chunk 128 \
           --memory_compare
GPU:   python benchmarks/train_step.py --preset qwen2.5-1.5b --batch 8 --seq_len 1024 --dtype bfloat16 \
           --attention_impl cudnn --peak_flops 989e12 --torch
       python benchmarks/train_step.py --preset qwen2.5-1.5b --batch 8 --seq_len 1024 --fit_search \
           --fit_presets qwen2.5-7b,qwen2.5-3b
Needs only jax, flax, optax, numpy (and torch + transformers for --torch).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch may share the GPU.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from memr1_jax.models import lora  # pylint: disable=wrong-import-position
from memr1_jax.models.config import (  # pylint: disable=wrong-import-position
    PRESETS, ModelConfig, config_to_hf, get_preset)
from memr1_jax.models.decoder import Decoder  # pylint: disable=wrong-import-position
from memr1_jax.rl import logprobs as logprobs_lib  # pylint: disable=wrong-import-position
from memr1_jax.rl import train_state as ts  # pylint: disable=wrong-import-position
from memr1_jax.rl import update as up  # pylint: disable=wrong-import-position


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def model_config(args, preset: str | None = None) -> ModelConfig:
  vocab = {"vocab_size": args.vocab} if args.vocab else {}
  return get_preset(preset or args.preset, dtype=args.dtype, param_dtype=args.dtype, remat=args.remat,
                    attention_impl=args.attention_impl or None, **vocab)


def update_config(args) -> up.UpdateConfig:
  batch = args.batch
  if batch % args.micro_batches:
    raise SystemExit(f"--batch {batch} does not divide into --micro_batches {args.micro_batches}")
  return up.UpdateConfig(algorithm="grpo", micro_batch_size=batch // args.micro_batches,
                         group_size=args.group_size or batch, kl_coef=1e-3, shuffle=False,
                         logprob_chunk=args.logprob_chunk or None, remat_logits=not args.store_logits,
                         fused_logprobs=args.fused_logprobs, aggregation="token_mean",
                         shared_prefix=args.shared_prefix)


def random_batch(args, vocab: int, seed: int = 0, with_reference_logprobs: bool = True) -> up.RolloutBatch:
  """Random tokens (one prompt per group of --group_size rows), behaviour log-probs near uniform, and (optionally)
  reference log-probs."""
  rng = np.random.default_rng(seed)
  t = args.seq_len - args.prompt_len
  n = args.group_size or args.batch
  batch = up.RolloutBatch(
      prompt_ids_bp=np.repeat(rng.integers(0, vocab, (args.batch // n, args.prompt_len)), n, 0).astype(np.int32),
      prompt_mask_bp=np.ones((args.batch, args.prompt_len), bool),
      response_ids_bt=rng.integers(0, vocab, (args.batch, t)).astype(np.int32),
      response_mask_bt=np.ones((args.batch, t), bool),
      scores_b=rng.integers(0, 2, args.batch).astype(np.float32),
      old_logprobs_bt=(-np.log(vocab) + rng.normal(0, 0.05, (args.batch, t))).astype(np.float32))
  if with_reference_logprobs:
    batch = batch.replace(ref_logprobs_bt=batch.old_logprobs_bt + 0.01)
  return batch


def build_learner(cfg: ModelConfig, args):
  """(state, frozen, spec) of a random-init policy (LoRA when --lora_rank), f32 master weights, reference kept."""
  policy = Decoder(cfg, rngs=nnx.Rngs(0))
  if args.lora_rank:
    policy = lora.add_lora(policy, args.lora_rank)
  schedule = ts.learning_rate_schedule(1e-6)
  tx = ts.make_optimizer(schedule, mu_dtype=args.moments_dtype, nu_dtype=args.moments_dtype, b2=args.adam_b2)
  return ts.init_train_state(policy, tx, actor_lr=schedule, reference=True, master_dtype=args.master_dtype,
                             reference_memory=args.reference_memory, optimizer_memory=args.optimizer_memory)


def time_jax(args) -> dict:
  cfg = model_config(args)
  state, frozen, spec = build_learner(cfg, args)
  config = update_config(args)
  step = up.make_update_step(spec, config)
  on_host = spec.reference_on_host
  batch = jax.device_put(random_batch(args, cfg.vocab_size,
                                      with_reference_logprobs=not (args.with_reference or on_host)))
  score = up.make_reference_scorer(spec, config) if on_host else None
  key = jax.random.key(0)
  times = []
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    step_frozen, step_batch = up.step_inputs(spec, score, frozen, batch)
    state, metrics = step(state, step_frozen, step_batch, key)
    metrics = jax.device_get(metrics)
    elapsed = time.perf_counter() - start
    if i == 0:
      log(f"jax: first step (compile + run) {elapsed:.1f} s, loss {metrics['loss']:.4f}")
    if i >= args.warmup:
      times.append(elapsed)
  stats = jax.local_devices()[0].memory_stats() or {}
  result = summarize("jax", args, cfg, times, 8 if args.with_reference or on_host else 6)
  result.update(group_size=config.group_size, shared_prefix=config.prefix_unit > 1)
  result.update(peak_memory_gib=round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
                attention_impl=args.attention_impl or "xla", with_reference=args.with_reference,
                reference_memory=args.reference_memory, optimizer_memory=args.optimizer_memory,
                moments_dtype=args.moments_dtype or args.master_dtype,
                versions=f"jax {jax.__version__}")
  del state, frozen, step
  gc.collect()
  jax.clear_caches()
  return result


def time_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  cfg = get_preset(args.preset)
  hf = config_to_hf(cfg)
  hf.update(eos_token_id=None, bos_token_id=None, pad_token_id=0)
  config_cls = transformers.Qwen2Config if hf["model_type"] == "qwen2" else transformers.LlamaConfig
  model_cls = transformers.Qwen2ForCausalLM if hf["model_type"] == "qwen2" else transformers.LlamaForCausalLM
  config = config_cls(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type", "torch_dtype")})
  config._attn_implementation = "sdpa"  # pylint: disable=protected-access
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  previous = torch.get_default_dtype()
  torch.set_default_dtype(getattr(torch, args.dtype))
  try:
    with torch.device(device):
      model = model_cls(config)
  finally:
    torch.set_default_dtype(previous)
  if args.remat:
    model.gradient_checkpointing_enable()
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device == "cuda")
  ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device=device)
  micro = args.batch // args.micro_batches
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  times = []
  for i in range(args.warmup + args.steps):
    sync()
    start = time.perf_counter()
    for m in range(args.micro_batches):
      chunk = ids[m * micro:(m + 1) * micro]
      loss = model(input_ids=chunk, labels=chunk).loss / args.micro_batches
      loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync()
    elapsed = time.perf_counter() - start
    if i >= args.warmup:
      times.append(elapsed)
  result = summarize("torch", args, cfg, times, 6)
  result.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                versions=f"torch {torch.__version__}, transformers {transformers.__version__}")
  if device == "cuda":
    result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
  del model, optimizer
  gc.collect()
  if device == "cuda":
    torch.cuda.empty_cache()
  return result


def summarize(side: str, args, cfg: ModelConfig, times: list[float], flops_per_param_token: int) -> dict:
  seconds = statistics.median(times)
  tokens = args.batch * args.seq_len
  params = cfg.num_params()
  return {"side": side, "preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "dtype": args.dtype,
          "remat": args.remat, "micro_batches": args.micro_batches, "params": params,
          "step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
          "mfu": float(f"{flops_per_param_token * params * tokens / seconds / args.peak_flops:.4g}"),
          "device": jax.local_devices()[0].device_kind}


def _peak(analysis) -> int:
  """Arguments + outputs - donated + temporaries of a compiled program's memory analysis, device memory only."""
  size = lambda name: int(getattr(analysis, f"{name}_size_in_bytes"))  # noqa: E731
  return size("argument") - size("host_argument") + size("output") - size("alias") + size("temp")


def step_memory_bytes(cfg: ModelConfig, args) -> dict[str, int]:
  """XLA's memory analysis of the full GRPO step of `cfg` (bytes): argument, output, alias (donated), temp, the
  estimated peak (arguments + outputs - donated + temporaries) and the state + frozen weights; with the reference
  in host memory also the scoring pass's peak ("scoring_peak": its program's, plus the train state resident
  meanwhile) and "peak" the larger of the two."""
  captured = {}

  def build():
    state, frozen, spec = build_learner(cfg, args)
    captured["spec"] = spec
    return state, frozen

  state, frozen = jax.eval_shape(build)
  spec, config = captured["spec"], update_config(args)
  abstract = lambda tree, sharding=None: jax.tree.map(  # noqa: E731
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
  if spec.optimizer_on_host:  # eval_shape's arrays carry no memory kind: give the optimizer states theirs.
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0], memory_kind="pinned_host")
    state = state.replace(policy_opt=abstract(state.policy_opt, host))
  step = up.make_update_step(spec, config)
  on_host = spec.reference_on_host  # Reference log-probs come with the batch; the step gets no reference weights.
  batch = abstract(random_batch(args, cfg.vocab_size, with_reference_logprobs=on_host))
  key = jax.eval_shape(lambda: jax.random.key(0))
  step_frozen = frozen.replace(reference=None) if on_host else frozen
  analysis = step.lower(state, step_frozen, batch, key).compile().memory_analysis()
  sizes = {name: int(getattr(analysis, f"{name}_size_in_bytes")) for name in ("argument", "output", "alias", "temp")}
  sizes["step_peak"] = sizes["peak"] = _peak(analysis)
  sizes["weights"] = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((state, frozen))))
  if on_host:
    scorer = up.make_reference_scorer(spec, config)
    scoring = scorer.lower(frozen, batch.replace(ref_logprobs_bt=None)).compile().memory_analysis()
    resident = state.replace(policy_opt=None) if spec.optimizer_on_host else state  # On the device meanwhile.
    state_bytes = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(resident)))
    # The abstract reference has no memory kind: XLA counts it as device arguments, as it is once copied in.
    sizes["scoring_peak"] = state_bytes + _peak(scoring)
    sizes["peak"] = max(sizes["step_peak"], sizes["scoring_peak"])
  return sizes


def vocab_loss_cost(cfg: ModelConfig, args, fused: bool, remat: bool) -> tuple[int, float]:
  """(XLA's temporaries in bytes, best of 3 ms) of the vocabulary loss alone: d/d(hidden, unembedding) of
  sum(log-probs) + 0.1 sum(entropy) over random [batch, response, hidden] states, chunked by --logprob_chunk."""
  t = args.seq_len - args.prompt_len
  chunk = args.logprob_chunk or None
  hidden = jax.ShapeDtypeStruct((args.batch, t, cfg.hidden_size), cfg.jnp_dtype)
  w_dv = jax.ShapeDtypeStruct((cfg.hidden_size, cfg.vocab_size), cfg.jnp_dtype)
  targets = jax.ShapeDtypeStruct((args.batch, t), np.int32)

  def objective(hidden_btd, w_dv, targets_bt):
    if fused:
      logprobs_bt, entropy_bt = logprobs_lib.fused_token_logprobs(hidden_btd, w_dv, targets_bt, chunk_size=chunk)
    else:
      logprobs_bt, entropy_bt = logprobs_lib.token_logprobs(hidden_btd, w_dv, targets_bt, chunk_size=chunk,
                                                            remat_chunks=remat)
    return logprobs_bt.sum() + 0.1 * entropy_bt.sum()

  compiled = jax.jit(jax.grad(objective, argnums=(0, 1))).lower(hidden, w_dv, targets).compile()
  rng = np.random.default_rng(0)
  inputs = (rng.normal(size=hidden.shape), 0.05 * rng.normal(size=w_dv.shape))
  inputs = [jax.device_put(x.astype(s.dtype)) for x, s in zip(inputs, (hidden, w_dv))]
  inputs.append(jax.device_put(rng.integers(0, cfg.vocab_size, targets.shape).astype(np.int32)))
  jax.block_until_ready(compiled(*inputs))
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    best = min(best, time.perf_counter() - start)
  return int(compiled.memory_analysis().temp_size_in_bytes), 1e3 * best


def memory_compare(args) -> list[dict]:
  """The step's memory analysis for each vocabulary-loss path x AdamW moment dtype, as rows (MiB), with the
  temporaries of the vocabulary loss alone."""
  cfg = model_config(args)
  rows = []
  for loss_path, overrides in (("plain, remat logits", dict(store_logits=False, fused_logprobs=False)),
                               ("plain, stored logits", dict(store_logits=True, fused_logprobs=False)),
                               ("fused custom VJP", dict(store_logits=False, fused_logprobs=True))):
    loss_temp, loss_ms = vocab_loss_cost(cfg, args, overrides["fused_logprobs"], not overrides["store_logits"])
    for moments in ("float32", "bfloat16"):
      variant = argparse.Namespace(**{**vars(args), **overrides, "moments_dtype": moments})
      sizes = step_memory_bytes(cfg, variant)
      rows.append({"logprobs": loss_path, "moments": moments, "loss_temp_mib": round(loss_temp / 2**20, 1),
                   "loss_ms": round(loss_ms, 1),
                   **{f"{k}_mib": round(v / 2**20, 1) for k, v in sizes.items()}})
      log(json.dumps(rows[-1]))
  print("| vocabulary loss | alone: temporaries (MiB) / fwd + bwd (ms) | AdamW moments | step arguments | "
        "step temporaries | step peak (MiB) |\n|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['logprobs']} | {r['loss_temp_mib']} / {r['loss_ms']} | {r['moments']} | {r['argument_mib']} | "
          f"{r['temp_mib']} | {r['peak_mib']} |")
  return rows


def fit_search(args) -> dict:
  if args.device_memory_gib:
    capacity = int(args.device_memory_gib * 2**30)
  else:
    capacity = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    if not capacity:
      raise SystemExit("device memory unknown on this backend: pass --device_memory_gib")
  names = args.fit_presets.split(",") if args.fit_presets else sorted(PRESETS, key=lambda n: -PRESETS[n].num_params())
  rows, largest = [], None
  for name in names:
    cfg = model_config(args, name)
    start = time.perf_counter()
    sizes = step_memory_bytes(cfg, args)
    peak, weights = sizes["peak"], sizes["weights"]
    fits = peak <= capacity
    rows.append({"preset": name, "params": cfg.num_params(), "weights_gib": round(weights / 2**30, 2),
                 "peak_gib": round(peak / 2**30, 2), "fits": fits,
                 **{f"{k}_gib": round(sizes[k] / 2**30, 2) for k in ("step_peak", "scoring_peak") if k in sizes},
                 "compile_s": round(time.perf_counter() - start, 1)})
    log(json.dumps(rows[-1]))
    if fits:
      largest = name
      break
  return {"capacity_gib": round(capacity / 2**30, 2), "largest_fitting": largest, "lora_rank": args.lora_rank,
          "batch": args.batch, "seq_len": args.seq_len, "micro_batches": args.micro_batches, "remat": args.remat,
          "rows": rows}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="tiny")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", "--seq-len", type=int, default=128, help="prompt + response tokens per row")
  parser.add_argument("--prompt_len", "--prompt-len", type=int, default=1,
                      help="prompt tokens per row (1: every other position is trained, like the torch LM loss)")
  parser.add_argument("--dtype", default="float32", help="compute dtype (torch: parameter dtype)")
  parser.add_argument("--master_dtype", "--master-dtype", default="float32", help="JAX trained-weight dtype")
  parser.add_argument("--remat", action="store_true", help="rematerialise each layer (both sides)")
  parser.add_argument("--micro_batches", "--micro-batches", type=int, default=1)
  parser.add_argument("--attention_impl", "--attention-impl", default="", help="'', xla or cudnn")
  parser.add_argument("--logprob_chunk", "--logprob-chunk", type=int, default=0,
                      help="response tokens per vocabulary chunk (0: one chunk)")
  parser.add_argument("--store_logits", "--store-logits", action="store_true",
                      help="keep each chunk's logits for the backward pass instead of recomputing them")
  parser.add_argument("--fused_logprobs", "--fused-logprobs", action="store_true",
                      help="log-softmax / gather / entropy as one custom-VJP op (logprobs.fused_token_logprobs)")
  parser.add_argument("--moments_dtype", "--moments-dtype", default="",
                      help="AdamW moment storage dtype ('': the master dtype; bfloat16 halves them)")
  parser.add_argument("--adam_b2", "--adam-b2", type=float, default=0.999, help="AdamW second-moment decay")
  parser.add_argument("--vocab", type=int, default=0, help="> 0: override the preset's vocabulary size")
  parser.add_argument("--memory_compare", "--memory-compare", action="store_true",
                      help="print the compiled step's memory analysis per loss path and moment dtype")
  parser.add_argument("--lora_rank", "--lora-rank", type=int, default=0)
  parser.add_argument("--with_reference", "--with-reference", action="store_true",
                      help="score the reference inside the timed JAX step")
  parser.add_argument("--peak_flops", "--peak-flops", type=float, default=989e12,
                      help="peak FLOP/s of the device (H100/H200 dense bf16: 989e12)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--torch", action="store_true", help="also time the PyTorch Hugging Face step")
  parser.add_argument("--skip_jax", "--skip-jax", action="store_true")
  parser.add_argument("--fit_search", "--fit-search", action="store_true")
  parser.add_argument("--fit_presets", "--fit-presets", default="", help="comma-separated, tried in this order")
  parser.add_argument("--reference_memory", "--reference-memory", default="device", choices=ts.REFERENCE_MEMORIES,
                      help="host: the reference in pinned host memory, scored in its own program before the update "
                      "(the update step gets reference log-probs and no reference weights)")
  parser.add_argument("--optimizer_memory", "--optimizer-memory", default="device", choices=ts.OPTIMIZER_MEMORIES,
                      help="host: AdamW's moments in pinned host memory, copied to the device for the optimizer "
                      "update only")
  parser.add_argument("--device_memory_gib", "--device-memory-gib", type=float, default=0.0)
  parser.add_argument("--group_size", "--group-size", type=int, default=0,
                      help="GRPO rows per prompt (0: the whole batch is one group)")
  parser.add_argument("--shared_prefix", "--shared-prefix", action="store_true",
                      help="run each group's prompt once per micro-batch (rl.shared_prefix); off: every row whole, "
                      "as the --torch side")
  parser.add_argument("--shared_prefix_compare", "--shared-prefix-compare", action="store_true",
                      help="time the JAX step with and without --shared_prefix, side by side")
  args = parser.parse_args(argv)
  log(f"jax {jax.__version__} on {jax.local_devices()[0].device_kind}; args {vars(args)}")
  if args.fit_search:
    print(json.dumps(fit_search(args)), flush=True)
    return
  if args.memory_compare:
    print(json.dumps(memory_compare(args)), flush=True)
    return
  results = []
  if args.shared_prefix_compare:
    for shared in (False, True):
      results.append(time_jax(argparse.Namespace(**{**vars(args), "shared_prefix": shared})))
      log(json.dumps(results[-1]))
    log(f"shared prefix: {results[0]['step_s'] / results[1]['step_s']:.2f}x the per-row step's speed")
    print(json.dumps(results), flush=True)
    return
  if args.torch:
    results.append(time_torch(args))
    log(json.dumps(results[-1]))
  if not args.skip_jax:
    results.append(time_jax(args))
    log(json.dumps(results[-1]))
  print(json.dumps(results), flush=True)


if __name__ == "__main__":
  main()
