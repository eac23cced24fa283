#!/usr/bin/env bash
# The GPU measurements recorded in benchmarks/RESULTS.md for the update step (issue 4), in priority order, each
# capped so that one device call finishes: bash benchmarks/train_step_gpu.sh "$OUT" [preset]
set -u
out=${1:-/tmp/train_step}; preset=${2:-qwen2.5-1.5b}; mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
common=(--preset "$preset" --batch 8 --seq_len 1024 --dtype bfloat16 --peak_flops 989e12 --steps 5 --warmup 2)
run() { local name=$1 cap=$2; shift 2; echo "== $name"; timeout "$cap" python benchmarks/train_step.py "$@" \
  > "$out/$name.log" 2>&1; echo "rc $?"; tail -n 3 "$out/$name.log"; }
run jax_cudnn 150 "${common[@]}" --attention_impl "${ATTN:-cudnn}"
run torch 100 "${common[@]}" --torch --skip_jax
run fit_full 130 --preset "$preset" --batch 8 --seq_len 1024 --dtype bfloat16 --remat --micro_batches 8 \
  --fit_search --fit_presets qwen2.5-7b,qwen2.5-3b
run fit_lora 100 --preset "$preset" --batch 8 --seq_len 1024 --dtype bfloat16 --remat --micro_batches 8 \
  --fit_search --fit_presets qwen2.5-14b,qwen2.5-7b --lora_rank 64
run jax_xla 110 "${common[@]}" --attention_impl xla
# Issue 30's rows (the 7B steps and fits, rollout, MFU, the optimizer update): benchmarks/gpu_issue30.sh.
