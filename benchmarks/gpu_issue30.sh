#!/usr/bin/env bash
# Issue 30's GPU rows (benchmarks/RESULTS.md), most wanted first, within one device call:
#   bash benchmarks/gpu_issue30.sh "$OUT"            (BUDGET_S=540 by default: a 600 s call with room to spare)
# Each job is capped; a job whose cap no longer fits the budget left is skipped and named in summary.txt, so a later
# call can run the rest with ONLY="name name". Logs, JSON and the machine's facts go under $OUT.
# SMOKE=1 swaps every shape for a tiny one (a CPU check of the script itself, not a measurement).
set -u
out=${1:-/tmp/gpu_issue30}; mkdir -p "$out"
budget=${BUDGET_S:-540}; start=$SECONDS
export XLA_PYTHON_CLIENT_PREALLOCATE=false
{ nvidia-smi 2>&1 || true; python -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$out/machine.txt" 2>&1

seven=qwen2.5-7b; small=qwen2.5-1.5b; shapes=(--shapes answer,manager); steps=(--steps 3 --warmup 0); card=()
if [ "${SMOKE:-0}" = 1 ]; then  # A CPU reports no memory size: fit_7b_host gets one.
  seven=tiny; small=tiny; shapes=(--shapes answer,manager --shrink 16 --prompts 2); card=(--device_memory_gib 1)
fi
fit=(--preset "$seven" --batch 8 --seq_len 1024 --dtype bfloat16 --remat --micro_batches 8 --moments_dtype bfloat16
  --adam_b2 0.995 --reference_memory host)
mfu=(--preset "$small" --batch 8 --seq_len 1024 --dtype bfloat16 --attention_impl cudnn --steps 5 --warmup 2)
[ "${SMOKE:-0}" = 1 ] && mfu=(--preset tiny --batch 8 --seq_len 128 --steps 2 --warmup 1)
# The answer agent's update shape: 2 prompts x 8 samples, prompt 3,072 + 64 new, each row whole vs rl.shared_prefix.
shared=(--preset "$small" --batch 16 --micro_batches 2 --group_size 8 --seq_len 3136 --prompt_len 3072 --dtype bfloat16
  --remat --shared_prefix_compare --steps 3 --warmup 1)
[ "${SMOKE:-0}" = 1 ] && shared=(--preset tiny --batch 16 --micro_batches 2 --group_size 8 --seq_len 160
  --prompt_len 128 --shared_prefix_compare --steps 2 --warmup 1)

job() {  # job NAME CAP command...: runs it under `timeout CAP` if the budget left allows, logs to $out/NAME.log.
  local name=$1 cap=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -lt "$cap" ]; then echo "$name skipped (cap ${cap} s, ${left} s left)" | tee -a "$out/summary.txt"; return; fi
  local t0=$SECONDS; timeout "$cap" "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc $((SECONDS - t0)) s: $*" | tee -a "$out/summary.txt"; tail -n 2 "$out/$name.log"
}

# Item 3: three real full-parameter 7B GRPO steps on one card (bfloat16 moments, reference in host memory), the
# device's measured peak (peak_memory_gib); then the same with the optimizer states in host memory too.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.97 job steps_7b_host 200 python benchmarks/train_step.py "${fit[@]}" "${steps[@]}"
# Item 1: Memory-R1's two rollout shapes at 7B, this engine (repeated cache and shared prefix) vs HF generate.
job rollout_7b 240 python benchmarks/rollout.py --preset "$seven" --dtype bfloat16 "${shapes[@]}" --repeats 2 \
  --json "$out/rollout_7b.json"
# Item 4: MFU of the 1.5B update step with the plain and the fused vocabulary loss, and the optimizer update alone.
job mfu_plain 90 python benchmarks/train_step.py "${mfu[@]}"
job mfu_fused 90 python benchmarks/train_step.py "${mfu[@]}" --fused_logprobs
XLA_PYTHON_CLIENT_MEM_FRACTION=0.97 job steps_7b_offload 200 python benchmarks/train_step.py "${fit[@]}" \
  --optimizer_memory host "${steps[@]}"
job optimizer_update 60 python benchmarks/optimizer_update.py --preset "$small" --moments_dtype bfloat16
# XLA's analysed peaks of the same 7B steps on the card (against its memory; with host optimizer states, an H100's).
job fit_7b_host 150 python benchmarks/train_step.py "${fit[@]}" --fit_search --fit_presets "$seven" "${card[@]}"
job fit_7b_offload 150 python benchmarks/train_step.py "${fit[@]}" --optimizer_memory host --fit_search \
  --fit_presets "$seven" --device_memory_gib 79
# The GRPO update with each group's prompt run once (rl.shared_prefix) against every row whole, 1.5B.
job update_shared_prefix 150 python benchmarks/train_step.py "${shared[@]}"
echo "total $((SECONDS - start)) s" | tee -a "$out/summary.txt"
