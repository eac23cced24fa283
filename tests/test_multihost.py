"""Multi-process training on one CPU machine (jax.distributed + gloo), the multihost helpers, and the launch scripts."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from memr1_jax import multihost, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2
# PPO with a format penalty: every reward is -0.5 and the random value head is not, so the advantages and the
# gradients are real (with all rewards equal, GRPO's gradient is rounding noise that Adam scales up to lr-sized steps).
TRAIN_FLAGS = ("--config.mesh.shape=(1,4,1)", "--config.algorithm=ppo", "--config.rollout.group_size=1",
               "--config.rl.format_penalty=0.5", f"--config.train.num_steps={STEPS}", "--config.train.eval_every=2",
               "--config.train.log_param_checksum=True")
TIMEOUT_S = 420


def _gloo_available() -> bool:
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return hasattr(_jax, "make_gloo_tcp_collectives")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, log_path, devices: int, distributed: tuple[int, int] | None = None):
  """Starts `python -m memr1_jax.main` on configs/smoke.py with `devices` CPU devices (as process i of 2 at port p)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, "-m", "memr1_jax.main", "--config=configs/smoke.py", f"--config.workdir={workdir}",
         *TRAIN_FLAGS]
  if distributed is not None:  # The two-process run also keeps its optimizer states in pinned host memory.
    process_id, port = distributed
    cmd += ["--config.mesh.distributed=True", f"--config.mesh.coordinator_address=127.0.0.1:{port}",
            "--config.mesh.num_processes=2", f"--config.mesh.process_id={process_id}",
            "--config.rl.optimizer_memory=host"]
  log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _wait_all(procs, logs, paths) -> None:
  deadline = time.monotonic() + TIMEOUT_S
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for log in logs:
      log.close()
  for p, path in zip(procs, paths):
    if p.returncode != 0:
      with open(path, encoding="utf-8") as f:
        tail = f.read()[-3000:]
      pytest.fail(f"{' '.join(map(str, p.args[:6]))} ... exited with {p.returncode} (killed after {TIMEOUT_S}s "
                  f"if negative); log {path} ends:\n{tail}")


def _checksums(path) -> list[tuple[int, int, str]]:
  with open(path, encoding="utf-8") as f:
    found = re.findall(r"param_checksum process=(\d+) updates=(\d+) sha256=([0-9a-f]{64})", f.read())
  return [(int(p), int(u), h) for p, u, h in found]


def _saved_leaves(workdir, step: int) -> tuple[list[str], list[np.ndarray]]:
  """(paths, numpy leaves) of the train state saved at `step` (read without shardings, in this process)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  ckpt = ocp.PyTreeCheckpointer()
  tree = ckpt.metadata(path).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                              is_leaf=lambda x: isinstance(x, ocp.metadata.ArrayMetadata))
  state = ckpt.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(state)[0])
  return [jax.tree_util.keystr(p) for p in paths], [np.asarray(x) for x in leaves]


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two processes x 2 CPU devices (optimizer states in host memory) and one process x 4 devices (on the device)
  train the smoke config on the same (1, 4, 1) mesh."""
  if not _gloo_available():
    pytest.skip("this jaxlib has no gloo CPU collectives (make_gloo_tcp_collectives): multi-process CPU JAX cannot run")
  root = tmp_path_factory.mktemp("multihost")
  port = _free_port()
  procs, logs, paths = [], [], []
  for name, devices, distributed in (("p0", 2, (0, port)), ("p1", 2, (1, port)), ("single", 4, None)):
    workdir = root / ("multi" if distributed else "single")
    path = root / f"{name}.log"
    proc, log = _start(workdir, path, devices, distributed)
    procs.append(proc)
    logs.append(log)
    paths.append(path)
  _wait_all(procs, logs, paths)
  return {"multi": root / "multi", "single": root / "single", "logs": dict(zip(("p0", "p1", "single"), paths))}


def test_two_processes_agree_on_parameters(runs):
  """Both processes end with the same train state (same SHA-256 of every parameter and optimizer leaf)."""
  p0, p1 = _checksums(runs["logs"]["p0"]), _checksums(runs["logs"]["p1"])
  assert [(p, u) for p, u, _ in p0] == [(0, STEPS)] and [(p, u) for p, u, _ in p1] == [(1, STEPS)]
  assert p0[0][2] == p1[0][2]


def test_two_processes_write_one_run(runs):
  """The two-process run has one checkpoint per step and one metrics log (process 0's), with finite losses."""
  assert sorted(int(s) for s in os.listdir(runs["multi"] / "checkpoints") if s.isdigit()) == [1, 2]
  records = _metrics(runs["multi"])
  assert [r["step"] for r in records] == [1, 2]
  assert all(np.isfinite(r["train/loss"]) for r in records) and "eval/em" in records[-1]


def test_two_processes_match_one_process_with_the_same_mesh(runs):
  """Two processes x 2 devices and one process x 4 devices (same (1, 4, 1) mesh) agree: metrics to 1e-4, and the
  parameters differ by under 2% of the size of the last update (policy and value model separately).

  Not bit-equal: cross-process (gloo) all-reduces add in another order than in-process ones, and Adam turns that
  rounding into up-to-lr steps where a gradient element cancels to about zero. Measured: 0.34% of the update for
  the policy, 7e-6 for the value model; two single-process runs on meshes (1, 4, 1) and (2, 2, 1) differ by as much
  (0.5%, 4e-6). On a (2, 2, 1) mesh (two-way sums across processes) two processes match one to 4e-9.
  """
  multi, single = _metrics(runs["multi"]), _metrics(runs["single"])
  for a, b in zip(multi, single):
    for key in ("rollout/reward", "train/loss", "train/grad_norm", "train/value_loss", "train/value_grad_norm"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-7, err_msg=key)
  paths, multi_now = _saved_leaves(runs["multi"], STEPS)
  single_paths, single_now = _saved_leaves(runs["single"], STEPS)
  _, multi_before = _saved_leaves(runs["multi"], STEPS - 1)
  assert paths == single_paths
  norm = lambda xs, ys: np.sqrt(sum(np.square(x.astype(np.float64) - y).sum() for x, y in zip(xs, ys)))  # noqa: E731
  for part in ("['learner']['policy']", "['learner']['value']"):
    idx = [i for i, p in enumerate(paths) if p.startswith(part)]
    assert idx, part
    pick = lambda leaves: [leaves[i] for i in idx]  # noqa: E731, pylint: disable=cell-var-from-loop
    update = norm(pick(multi_now), pick(multi_before))
    assert update > 1e-3, f"{part}: the last update did not move the parameters ({update})"
    assert norm(pick(multi_now), pick(single_now)) < 0.02 * update, part
  # The optimizer step counters agree exactly.
  for p, x, y in zip(paths, multi_now, single_now):
    if p.endswith("['updates']") or p.endswith("['count']"):
      np.testing.assert_array_equal(x, y, err_msg=p)


def test_put_global_and_to_host_round_trip():
  """put_global onto a batch sharding and to_host back give the host array; one process equals device_put/get."""
  mesh = sharding.make_mesh((1, -1, 1))
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  placed = multihost.shard_batch({"x": x}, mesh)["x"]
  assert placed.sharding.is_equivalent_to(sharding.batch_sharding(mesh, 2), 2)
  np.testing.assert_array_equal(multihost.to_host(placed), x)


def test_tree_checksum_changes_with_any_value():
  """Equal trees hash equal; changing one element or a dtype changes the digest."""
  tree = {"a": np.zeros((2, 3), np.float32), "b": np.arange(4, dtype=np.int32)}
  same = {"a": np.zeros((2, 3), np.float32), "b": np.arange(4, dtype=np.int32)}
  assert multihost.tree_checksum(tree) == multihost.tree_checksum(same)
  changed = {"a": same["a"].copy(), "b": same["b"]}
  changed["a"][1, 2] = 1e-30
  assert multihost.tree_checksum(changed) != multihost.tree_checksum(tree)
  assert multihost.tree_checksum({"a": tree["a"].astype(np.float64), "b": tree["b"]}) != multihost.tree_checksum(tree)


def _script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", os.path.join(REPO, "launch", name), *args], capture_output=True, text=True,
                        env=dict(os.environ, **(env or {})), timeout=60, check=False)


def test_tpu_vm_dry_run_prints_every_stage():
  """--dry-run prints create (after describe), copy, install with jax[tpu], and the run on all workers."""
  out = _script("tpu_vm.sh", "--dry-run", "--", "--config.agent=manager",
                env={"TPU_NAME": "t1", "ZONE": "z1", "ACCELERATOR_TYPE": "v4-16", "PROJECT": "p1"})
  assert out.returncode == 0, out.stderr
  lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
  assert lines[0] == "+ gcloud compute tpus tpu-vm describe t1 --zone=z1 --project=p1"
  assert lines[1].startswith("+ gcloud compute tpus tpu-vm create t1 --zone=z1 --project=p1 --accelerator-type=v4-16")
  assert "tpu-vm scp" in lines[2] and lines[2].endswith("--worker=all")
  assert all("--worker=all" in line for line in lines[3:])
  assert "tpu\\]==0.10.2" in lines[4]
  run = lines[-1]
  for word in ("memr1_jax.main", "--config.mesh.distributed=True", "--config.agent=manager"):
    assert word in run


def test_tpu_vm_skips_stages_and_rejects_unknown_arguments():
  """--skip-create/--skip-copy/--skip-install leave only the run; an unknown argument exits 2."""
  out = _script("tpu_vm.sh", "--dry-run", "--skip-create", "--skip-copy", "--skip-install")
  assert out.returncode == 0, out.stderr
  assert [line.split()[5] for line in out.stdout.splitlines() if line.startswith("+ ")] == ["ssh"]
  assert _script("tpu_vm.sh", "--bogus").returncode == 2


def test_gpu_slurm_dry_run_uses_first_node_and_procid():
  """slurm mode: one srun task per node, coordinator = the first node, process id = each task's SLURM_PROCID."""
  out = _script("gpu_multinode.sh", "slurm", "--dry-run", "--", "--config.agent=manager",
                env={"SLURM_JOB_NODELIST": "gpu[003-004,007]", "SLURM_JOB_NUM_NODES": "3", "PORT": "4321"})
  assert out.returncode == 0, out.stderr
  (line,) = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
  assert line.startswith("+ srun --ntasks=3 --ntasks-per-node=1 ")
  for word in ("coordinator_address=gpu003:4321", "num_processes=3", "process_id=\\$SLURM_PROCID",
               "--config.mesh.distributed=True", "--config.agent=manager"):
    assert word in line


def test_gpu_plain_dry_run_and_missing_arguments():
  """plain mode passes the coordinator / process count / id through, --install adds the jax[cuda12] line, and a
  missing --process-id exits 2."""
  out = _script("gpu_multinode.sh", "plain", "--coordinator=10.0.0.1:1234", "--num-processes=2", "--process-id=1",
                "--install", "--dry-run")
  assert out.returncode == 0, out.stderr
  lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
  assert "jax\\[cuda12\\]==0.10.2" in lines[2]
  assert lines[-1].endswith("--config.mesh.coordinator_address=10.0.0.1:1234 --config.mesh.num_processes=2 "
                            "--config.mesh.process_id=1")
  assert _script("gpu_multinode.sh", "plain", "--coordinator=h:1", "--num-processes=2").returncode == 2
