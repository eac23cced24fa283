#!/usr/bin/env bash
# The GPU measurements recorded in benchmarks/RESULTS.md for the update step (issue 4), in priority order, each
# capped so that one device call finishes: bash benchmarks/train_step_gpu.sh "$OUT" [preset]
set -u
out=${1:-/tmp/train_step}; preset=${2:-qwen2.5-1.5b}; mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
common=(--preset "$preset" --batch 8 --seq_len 1024 --dtype bfloat16 --peak_flops 989e12 --steps 5 --warmup 2)
run_script() { local name=$1 cap=$2 script=$3; shift 3; echo "== $name"; timeout "$cap" python "$script" "$@" \
  > "$out/$name.log" 2>&1; echo "rc $?"; tail -n 3 "$out/$name.log"; }
run() { local name=$1 cap=$2; shift 2; run_script "$name" "$cap" benchmarks/train_step.py "$@"; }
run jax_cudnn 150 "${common[@]}" --attention_impl "${ATTN:-cudnn}"
run torch 100 "${common[@]}" --torch --skip_jax
run fit_full 130 --preset "$preset" --batch 8 --seq_len 1024 --dtype bfloat16 --remat --micro_batches 8 \
  --fit_search --fit_presets qwen2.5-7b,qwen2.5-3b
run fit_lora 100 --preset "$preset" --batch 8 --seq_len 1024 --dtype bfloat16 --remat --micro_batches 8 \
  --fit_search --fit_presets qwen2.5-14b,qwen2.5-7b --lora_rank 64
run jax_xla 110 "${common[@]}" --attention_impl xla
# Issue 30: the optimizer update alone, the learner's (skip as a lax.cond) beside a where per leaf and no skip.
run_script optimizer_update 90 benchmarks/optimizer_update.py --preset "$preset" --moments_dtype bfloat16
# Issue 30: a full-parameter Qwen2.5-7B GRPO step on one H200, bfloat16 AdamW moments and the reference in pinned
# host memory (scored in its own program before each update): the analysed peaks, then three real steps.
seven=(--preset qwen2.5-7b --batch 8 --seq_len 1024 --dtype bfloat16 --remat --micro_batches 8
  --moments_dtype bfloat16 --adam_b2 0.995 --reference_memory host)
run fit_7b_host 200 "${seven[@]}" --fit_search --fit_presets qwen2.5-7b
XLA_PYTHON_CLIENT_MEM_FRACTION=0.97 run steps_7b_host 300 "${seven[@]}" --steps 3 --warmup 0
# The same with AdamW's moments in pinned host memory between updates (rl.optimizer_memory=host): the analysed peak
# against an H100's 79 GiB, then three real steps (peak_memory_gib: the device's measured peak).
run fit_7b_offload 200 "${seven[@]}" --optimizer_memory host --fit_search --fit_presets qwen2.5-7b \
  --device_memory_gib 79
XLA_PYTHON_CLIENT_MEM_FRACTION=0.97 run steps_7b_offload 300 "${seven[@]}" --optimizer_memory host --steps 3 \
  --warmup 0
