"""Reliability: kill -9 and SIGTERM of a real training run, non-finite updates, bad inputs, and safety.

The training runs are subprocesses of `python -m memr1_jax.main --config=configs/smoke.py` (3 steps, one device)
that share a persistent XLA compilation cache, so only the first one compiles. Fuzzing of model output through the
episode runner and the memory bank lives in tests/test_fuzz.py. See docs/reliability.md.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from memr1_jax import defaults, errors, faults, main
from memr1_jax.checkpoint import CheckpointError, Checkpointer
from memr1_jax.demo import DEMO_TOKENIZER_DIR
from memr1_jax.models.config import CheckpointError as ModelFilesError
from memr1_jax.models.safetensors_io import CheckpointReader
from memr1_jax.models.tokenizer import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/smoke.py", "--config.train.num_steps=3", "--config.train.eval_every=0"]
SMOKE_LOCOMO = ["--config=configs/smoke.py:locomo", *SMOKE[1:]]
SECRET = "sk-reliability-test-4f1c9a7e2b"  # The judge API key every subprocess gets in its environment.
SIGTERM_BOUND_S = 30.0  # A SIGTERM'd run exits within one step plus one save: ~2 s here once compiled.
FAIL_FAST_S = 20.0  # Bad input is reported before the model is built (the first training step alone takes longer).


# ----------------------------------------------------------------------------- running the trainer


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
  """Environment of the training subprocesses: one CPU device, a shared compilation cache, the judge key set."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  env.pop(faults.ENV_VAR, None)
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")])),
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
             OPENAI_API_KEY=SECRET)
  return env


def _start(workdir, env, *overrides, fault: str = "", tag: str = "run") -> tuple[subprocess.Popen, str]:
  """Starts the smoke training command on `workdir`; returns (process, path of its combined stdout / stderr)."""
  log_path = f"{workdir}-{tag}.log"
  env = dict(env, **{faults.ENV_VAR: fault}) if fault else env
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen([sys.executable, "-m", "memr1_jax.main", *SMOKE, f"--config.workdir={workdir}",
                             *overrides], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  return proc, log_path


def _read(path: str) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def _finish(proc: subprocess.Popen, log_path: str, timeout: float = 240.0) -> str:
  """Waits for `proc`; returns its log."""
  proc.wait(timeout=timeout)
  return _read(log_path)


def _wait_until(condition, proc: subprocess.Popen, log_path: str, what: str, timeout: float = 240.0) -> None:
  """Polls `condition()` every 10 ms; fails (with the log's tail) if `proc` exits first or time runs out."""
  deadline = time.monotonic() + timeout
  while not condition():
    if proc.poll() is not None or time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f"never saw {what} (exit code {proc.poll()}):\n{_read(log_path)[-3000:]}")
    time.sleep(0.01)


def _kill9(proc: subprocess.Popen) -> None:
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=30) == -signal.SIGKILL


def _steps(workdir) -> list[int]:
  """Complete checkpoint steps of a run (what a restart can resume from)."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return sorted(ckpt.all_steps())
  finally:
    ckpt.close()


def _is_array(x) -> bool:
  return isinstance(x, ocp.metadata.ArrayMetadata)


def _saved_abstract(step_dir: str):
  """The saved state's tree as jax.ShapeDtypeStruct, read from the checkpoint's metadata."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(epath.Path(step_dir) / "state").tree
  finally:
    handler.close()
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree, is_leaf=_is_array)


def _saved_arrays(workdir, step: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
  """({"learner.policy.embed_vd": array, ...}, meta) of a run's checkpoint (default: the latest)."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    step = ckpt.latest_step() if step is None else step
    state, meta, _ = ckpt.restore(_saved_abstract(os.path.join(ckpt.directory, str(step))), step)
  finally:
    ckpt.close()
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {".".join(ocp.tree.str_keypath(path)): np.asarray(x) for path, x in flat}, meta


def _assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> None:
  assert sorted(a) == sorted(b) and len(a) > 10
  for name in a:
    if name not in skip:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def reference(run_env, tmp_path_factory):
  """An uninterrupted 3-step run (it also fills the compilation cache): (workdir, log)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  proc, log_path = _start(workdir, run_env)
  log = _finish(proc, log_path)
  assert proc.returncode == 0, log[-3000:]
  assert _steps(workdir) == [1, 2, 3]
  return workdir, log


# ----------------------------------------------------------------------------- preemption


def test_kill9_anywhere_resumes_to_the_uninterrupted_result(run_env, reference, tmp_path):
  """kill -9 mid-step, inside a checkpoint commit and right after one: each restart resumes from the last complete
  checkpoint (a fully written but uncommitted one is discarded) and the final state equals the uninterrupted run's."""
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # 1. During the first step, before any checkpoint exists.
  proc, log_path = _start(workdir, run_env, tag="1")
  _wait_until(lambda: os.path.isdir(ckpt_dir), proc, log_path, "the checkpoint directory")
  time.sleep(2.0)
  _kill9(proc)
  assert _steps(workdir) == []
  # 2. Inside the commit of checkpoint 2: every file written, the temporary directory not yet renamed.
  proc, log_path = _start(workdir, run_env, fault="slow_commit@2", tag="2")
  _wait_until(lambda: "sleeping" in _read(log_path), proc, log_path, "the slowed commit of checkpoint 2")
  _kill9(proc)
  assert "resumed from" not in _read(log_path)
  assert _steps(workdir) == [1] and glob.glob(os.path.join(ckpt_dir, "2.orbax-checkpoint-tmp*"))
  # 3. Right after checkpoint 2 is committed, during step 3.
  proc, log_path = _start(workdir, run_env, tag="3")
  _wait_until(lambda: os.path.isdir(os.path.join(ckpt_dir, "2")), proc, log_path, "checkpoint 2")
  _kill9(proc)
  assert re.search(r"resumed from \S+ at step 1\b", _read(log_path))
  assert not glob.glob(os.path.join(ckpt_dir, "*.orbax-checkpoint-tmp*"))
  assert _steps(workdir) == [1, 2]
  # 4. The same command again runs to the end.
  proc, log_path = _start(workdir, run_env, tag="4")
  log = _finish(proc, log_path)
  assert proc.returncode == 0, log[-3000:]
  assert re.search(r"resumed from \S+ at step 2\b", log)
  resumed, meta = _saved_arrays(workdir)
  straight, straight_meta = _saved_arrays(reference[0])
  assert meta["next_step"] == straight_meta["next_step"] == 3
  _assert_same_arrays(resumed, straight)
  first, _ = _saved_arrays(reference[0], 1)
  assert any(not np.array_equal(first[k], straight[k]) for k in straight if k.startswith("learner.policy."))


def test_sigterm_checkpoints_exits_75_in_bounded_time_and_resumes(run_env, reference, tmp_path):
  """SIGTERM mid-run: a checkpoint of the finished step, exit code 75 (errors.PREEMPTED_EXIT_CODE, not 0: a requeue
  wrapper must tell preemption from completion) within the bound; the same command resumes from that step and ends
  equal to the uninterrupted run."""
  workdir = str(tmp_path / "run")
  no_periodic_saves = "--config.train.checkpoint_every=100"
  proc, log_path = _start(workdir, run_env, no_periodic_saves, tag="term")
  metrics = os.path.join(workdir, "metrics.jsonl")
  _wait_until(lambda: os.path.exists(metrics) and _read(metrics).strip(), proc, log_path, "the first step's metrics")
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  log = _finish(proc, log_path, timeout=SIGTERM_BOUND_S + 30)
  elapsed = time.monotonic() - sent
  assert proc.returncode == errors.PREEMPTED_EXIT_CODE == 75, log[-3000:]
  assert elapsed < SIGTERM_BOUND_S
  steps = _steps(workdir)
  assert len(steps) == 1 and steps[0] in (1, 2)
  assert f"stopped by signal {int(signal.SIGTERM)} after step {steps[0]}" in log
  proc, log_path = _start(workdir, run_env, no_periodic_saves, tag="resume")
  log = _finish(proc, log_path)
  assert proc.returncode == 0, log[-3000:]
  assert re.search(rf"resumed from \S+ at step {steps[0]}\b", log)
  _assert_same_arrays(_saved_arrays(workdir)[0], _saved_arrays(reference[0])[0])


# ----------------------------------------------------------------------------- numerical faults


def test_nonfinite_updates_are_skipped_logged_and_stop_the_run(run_env, reference, tmp_path):
  """NaN then inf rewards: both updates are skipped (state unchanged), each is logged with its step and batch, and
  the run stops after max_nonfinite_steps=2 naming the last good checkpoint, which restores intact."""
  workdir = str(tmp_path / "run")
  proc, log_path = _start(workdir, run_env, "--config.train.max_nonfinite_steps=2",
                          fault="nan_reward@1,inf_reward@2", tag="nan")
  log = _finish(proc, log_path)
  assert proc.returncode != 0
  assert "error: 2 consecutive non-finite updates (last at step 2)" in log and "Traceback" not in log
  assert "last good checkpoint is step 2" in log
  for step in (1, 2):
    assert re.search(rf"step {step}: non-finite loss or gradient, update skipped \({step} in a row\); "
                     r"batch: synth-\S+", log)
  assert _steps(workdir) == [1, 2]
  good, _ = _saved_arrays(workdir, 1)
  after_skip, meta = _saved_arrays(workdir, 2)
  assert meta["next_step"] == 2
  _assert_same_arrays(good, after_skip, skip=("step",))
  assert all(np.isfinite(x).all() for x in after_skip.values() if x.dtype.kind == "f")
  _assert_same_arrays(good, _saved_arrays(reference[0], 1)[0])
  records = {json.loads(line)["step"]: json.loads(line) for line in _read(os.path.join(workdir, "metrics.jsonl"))
             .splitlines()}
  assert records[1]["train/skipped"] == 0.0 and records[2]["train/skipped"] == 1.0


def test_fault_spec_errors_name_the_variable():
  """A malformed MEMR1_FAULT is an error naming the variable and the bad item."""
  assert faults.parse("nan_reward@1, inf_reward@3,nan_reward@4") == {
      "nan_reward": frozenset({1, 4}), "inf_reward": frozenset({3})}
  assert faults.parse("") == {}
  with pytest.raises(ValueError, match=r"MEMR1_FAULT.*'nan@x'"):
    faults.parse("nan@x")


# ----------------------------------------------------------------------------- bad inputs


def _main(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
  """Runs `python -m memr1_jax.main <args>`; returns (completed process, seconds)."""
  env = dict(os.environ if env is None else env)
  env.pop(faults.ENV_VAR, None)
  start = time.monotonic()
  done = subprocess.run([sys.executable, "-m", "memr1_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120, check=False)
  return done, time.monotonic() - start


@pytest.mark.parametrize("override,expected", [
    ("--config.model.bogus=1", "configs/smoke.py: --config.model.bogus: config.model has no field 'bogus'"),
    ("--config.mdel.preset=tiny", "config has no field 'mdel' (did you mean config.model?)"),
    ("--config.train.num_steps.x=3", "config.train.num_steps has no field 'x'"),
    ("--config.memory.index=faiss", "configs/smoke.py: config.memory.index='faiss' is not one of"),
    ("--config.rl.kl_estimator=k9", "configs/smoke.py: config.rl.kl_estimator='k9' is not one of"),
    ("--config.memory.extraction=smple", "configs/smoke.py: config.memory.extraction='smple' is not one of"),
    ("--config.demo.task.update_prob=1.5", "configs/smoke.py: config.demo.task: TaskKnobs.update_prob must be in"),
    ("--config.demo.explore_with=smart", "configs/smoke.py: config.demo.explore_with='smart' is not one of"),
    ("--config.demo.answer_start=heuristic", "configs/smoke.py: config.demo.answer_start='heuristic' is not one of"),
    ("--config.demo.answer_temperature=-1.0", "configs/smoke.py: config.demo.answer_temperature=-1.0 is out of range"),
    ("--config.demo.eval_every=-5", "configs/smoke.py: config.demo.eval_every=-5 is out of range"),
    ("--config.demo.ppo_answer.steps=0", "configs/smoke.py: config.demo.ppo_answer.steps=0 is out of range"),
    ("--config.demo.ppo_manager.format_penalty=-0.5",
     "configs/smoke.py: config.demo.ppo_manager.format_penalty=-0.5 is out of range"),
    ("--config.demo.ppo_answer.temperature=0.0",
     "configs/smoke.py: config.demo.ppo_answer.temperature=0.0 is out of range"),
    ("--config.demo.ppo_manager.critic_warmup_steps=-1",
     "configs/smoke.py: config.demo.ppo_manager.critic_warmup_steps=-1 is out of range"),
    ("--config.rl.adam_nu_dtype=bfloat16", "config.rl.adam_nu_dtype='bfloat16' with config.rl.adam_b2=0.999"),
    ("--config.rl.adam_mu_dtype=fp8", "configs/smoke.py: config.rl.adam_mu_dtype='fp8' is not one of"),
    ("--config.rl.reference_memory=disk", "configs/smoke.py: config.rl.reference_memory='disk' is not one of"),
    ("--config.rl.optimizer_memory=disk", "configs/smoke.py: config.rl.optimizer_memory='disk' is not one of"),
    ("--config.rl.reference_memory=host --config.model.lora_rank=8",
     "config.rl.reference_memory='host' with config.model.lora_rank=8"),
])
def test_bad_config_override_fails_fast_naming_file_and_field(override, expected, tmp_path):
  """An unknown field or a value outside its set exits 1 in seconds, one line naming the config file and field."""
  done, seconds = _main(*SMOKE, f"--config.workdir={tmp_path / 'run'}", *override.split())
  assert done.returncode == 1 and seconds < FAIL_FAST_S
  assert expected in done.stderr and "Traceback" not in done.stderr
  assert not os.path.exists(tmp_path / "run")


def test_unknown_field_in_a_config_file_fails_fast_naming_it(tmp_path):
  """A config file that sets a misspelt field (silently ignored before) is rejected, naming file and field."""
  path = tmp_path / "typo.py"
  path.write_text("from memr1_jax.defaults import default_config\n\n\ndef get_config():\n  c = default_config()\n"
                  "  c.model.preset = 'tiny'\n  c.rl.actor_lrr = 1e-6\n  return c\n")
  done, seconds = _main(f"--config={path}", f"--config.workdir={tmp_path / 'run'}")
  assert done.returncode == 1 and seconds < FAIL_FAST_S
  assert f"{path}: config.rl.actor_lrr is not a known field (did you mean config.rl.actor_lr?)" in done.stderr


def test_task_extraction_without_a_task_module_fails_fast_naming_the_field(tmp_path):
  """memory.extraction='task' in a config without config.task is rejected before anything is built."""
  path = tmp_path / "no_task.py"
  path.write_text("from memr1_jax.defaults import default_config\n\n\ndef get_config():\n  c = default_config()\n"
                  "  c.model.preset = 'tiny'\n  c.memory.extraction = 'task'\n  return c\n")
  done, seconds = _main(f"--config={path}", f"--config.workdir={tmp_path / 'run'}")
  assert done.returncode == 1 and seconds < FAIL_FAST_S
  assert f"{path}: config.memory.extraction='task' reads with the extractor of a task module" in done.stderr


def test_enum_fields_match_the_modules_that_read_them():
  """main.ENUM_FIELDS (checked before jax is imported) lists exactly the values the consuming modules accept."""
  from memr1_jax import demo  # pylint: disable=g-import-not-at-top
  from memr1_jax.agents import prompts  # pylint: disable=g-import-not-at-top
  from memr1_jax.demo import policies  # pylint: disable=g-import-not-at-top
  from memr1_jax.memory import bank  # pylint: disable=g-import-not-at-top
  from memr1_jax.rl import losses, train_state  # pylint: disable=g-import-not-at-top
  assert main.ENUM_FIELDS["memory.index"] == bank.INDEX_KINDS
  assert main.ENUM_FIELDS["rl.kl_estimator"] == losses.KL_KINDS
  assert main.ENUM_FIELDS["rl.loss_aggregation"] == losses.AGGREGATIONS
  assert main.ENUM_FIELDS["algorithm"] == defaults.ALGORITHMS
  assert main.ENUM_FIELDS["memory.prompts"] == tuple(prompts.PROMPT_SETS)
  assert main.ENUM_FIELDS["rl.reference_memory"] == train_state.REFERENCE_MEMORIES
  assert main.ENUM_FIELDS["rl.optimizer_memory"] == train_state.OPTIMIZER_MEMORIES
  assert demo.config.EXPLORE_WITH == tuple(policies.EXPLORERS)
  for name, allowed in main.ENUM_FIELDS.items():
    node = defaults.default_config()
    for part in name.split("."):
      node = node[part]
    assert node in allowed, name


def _locomo_truncated(path):
  with open(os.path.join(REPO, "tests", "fixtures", "locomo_small.json"), encoding="utf-8") as f:
    text = f.read()
  path.write_text(text[:len(text) // 2], encoding="utf-8")


def _locomo_without_question(path):
  with open(os.path.join(REPO, "tests", "fixtures", "locomo_small.json"), encoding="utf-8") as f:
    records = json.load(f)
  del records[1]["qa"][0]["question"]
  path.write_text(json.dumps(records), encoding="utf-8")


@pytest.mark.parametrize("make,expected", [
    (_locomo_truncated, r"record <file>: field '<json>': invalid JSON"),
    (_locomo_without_question, r"record #1 \(sample_id '[^']+'\): field 'qa\[0\]\.question': missing"),
])
def test_bad_dataset_file_fails_before_the_model_is_built(make, expected, tmp_path):
  """A truncated or malformed dataset file stops the run in seconds with a DataFormatError naming file and field."""
  data = tmp_path / "locomo10.json"
  make(data)
  workdir = tmp_path / "run"
  done, seconds = _main(*SMOKE_LOCOMO, f"--config.workdir={workdir}",
                        f"--config.data.path={data}")
  assert done.returncode == 1 and seconds < FAIL_FAST_S
  assert re.search(rf"^error: {re.escape(str(data))}: {expected}", done.stderr, re.M), done.stderr[-2000:]
  assert "Traceback" not in done.stderr
  assert not os.path.exists(workdir / "checkpoints")


@pytest.fixture
def damaged_copy(reference, tmp_path):
  """A copy of the reference run's checkpoints: (Checkpointer, the state's abstract tree at step 3)."""
  directory = tmp_path / "checkpoints"
  shutil.copytree(os.path.join(reference[0], "checkpoints"), directory)
  ckpt = Checkpointer(str(directory))
  yield ckpt, _saved_abstract(str(directory / "3"))
  ckpt.close()


def test_checkpoint_with_a_missing_shard_is_named(damaged_copy):
  """A step whose data file was lost fails to restore with a CheckpointError naming the step directory."""
  ckpt, abstract = damaged_copy
  data_files = glob.glob(os.path.join(ckpt.directory, "3", "state", "**", "d", "*"), recursive=True)
  assert data_files
  os.remove(max(data_files, key=os.path.getsize))
  start = time.monotonic()
  with pytest.raises(CheckpointError, match=rf"{re.escape(ckpt.directory)}/3: cannot read the checkpoint .*"
                                            r"Other steps: \[1, 2\]"):
    ckpt.restore(abstract, 3)
  assert time.monotonic() - start < FAIL_FAST_S


def test_checkpoint_with_a_wrong_shape_is_named(damaged_copy):
  """Restoring into a state whose array has another shape names the array and both shapes before reading data."""
  ckpt, abstract = damaged_copy
  embed = abstract["learner"]["policy"]["embed_vd"]
  abstract["learner"]["policy"]["embed_vd"] = jax.ShapeDtypeStruct((embed.shape[0] + 8, embed.shape[1]), embed.dtype)
  with pytest.raises(CheckpointError, match=rf"3/state: array 'learner.policy.embed_vd' has shape "
                                            rf"\({embed.shape[0]}, {embed.shape[1]}\) in the checkpoint but "
                                            rf"\({embed.shape[0] + 8}, {embed.shape[1]}\) in this run"):
    ckpt.restore(abstract, 3)


def test_checkpoint_without_a_requested_array_is_named(damaged_copy):
  """Restoring a state with an array the checkpoint lacks (e.g. LoRA added since) names that array."""
  ckpt, abstract = damaged_copy
  abstract["learner"]["policy"]["lora_a"] = jax.ShapeDtypeStruct((4, 4), np.float32)
  with pytest.raises(CheckpointError, match=r"array 'learner.policy.lora_a' is not in the checkpoint"):
    ckpt.restore(abstract, 3)


# ----------------------------------------------------------------------------- safety


_UNSAFE_LOADING = re.compile(
    r"\bimport (?:c?pickle|dill|cloudpickle|joblib|shelve|marshal)\b|\bpickle\.loads?\(|torch\.load\(|"
    r"allow_pickle\s*=\s*True|trust_remote_code\s*=\s*True|yaml\.load\((?![^)]*SafeLoader)|(?<![.\w])(?:eval|exec)\(")


def test_package_never_unpickles_or_runs_remote_code():
  """No module of memr1_jax unpickles, torch.loads, allows pickled numpy, trusts remote code, or evals strings."""
  offenders = []
  for path in glob.glob(os.path.join(REPO, "memr1_jax", "**", "*.py"), recursive=True):
    for number, line in enumerate(_read(path).splitlines(), 1):
      if _UNSAFE_LOADING.search(line):
        offenders.append(f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}")
  assert not offenders, "\n".join(offenders)


class _Marker:
  """Unpickling this creates the file `path` (what a malicious pickle checkpoint could do)."""

  def __init__(self, path: str):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_pickle_weights_are_refused_unread(tmp_path):
  """A model directory with only pytorch_model.bin is refused with a message saying why; the pickle never runs."""
  marker = tmp_path / "unpickled"
  (tmp_path / "model").mkdir()
  with open(tmp_path / "model" / "pytorch_model.bin", "wb") as f:
    pickle.dump(_Marker(str(marker)), f)
  with pytest.raises(ModelFilesError, match="pickle checkpoints are not loaded"):
    CheckpointReader(str(tmp_path / "model"))
  assert not marker.exists()


def test_tokenizer_with_custom_code_is_refused_and_not_run(tmp_path):
  """A tokenizer directory asking for custom code (auto_map) fails to load and its Python file is never executed."""
  directory = tmp_path / "tok"
  shutil.copytree(DEMO_TOKENIZER_DIR, directory)
  marker = tmp_path / "custom_code_ran"
  config = json.loads((directory / "tokenizer_config.json").read_text())
  config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
  (directory / "tokenizer_config.json").write_text(json.dumps(config))
  (directory / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                     "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
  with pytest.raises(ModelFilesError, match="custom code|trust_remote_code"):
    Tokenizer.from_pretrained(str(directory))
  assert not marker.exists()


def test_judge_key_in_the_environment_never_reaches_logs_or_files(reference):
  """With the key in OPENAI_API_KEY, a training run's log and every file it wrote (checkpoints, metrics) lack it."""
  workdir, log = reference
  assert SECRET not in log
  for root, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        assert SECRET.encode() not in f.read(), os.path.join(root, name)
  _, meta = _saved_arrays(workdir)
  assert meta["config"]["eval"]["judge_api_key_env"] == "OPENAI_API_KEY"


def test_key_pasted_into_the_config_is_redacted_from_checkpoint_metadata(monkeypatch):
  """Should the key's value sit in a config field, the trainer's checkpoint metadata holds '<redacted>' instead."""
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)
  config = defaults.default_config()
  config.eval.judge = f"https://judge.example/v1?key={SECRET}"
  saved = json.dumps(defaults.redacted(config))
  assert SECRET not in saved and "key=<redacted>" in saved


@pytest.mark.parametrize("override,field", [
    (f"--config.eval.judge_model={SECRET}", "config.eval.judge_model holds the value of $OPENAI_API_KEY"),
    (f"--config.eval.judge_api_key_env={SECRET}", "judge_api_key_env must be the NAME of an environment variable"),
])
def test_main_refuses_a_key_in_the_config_without_echoing_it(override, field, run_env, tmp_path):
  """main exits 1 before printing the config when a field holds the API key; no output contains the key."""
  done, seconds = _main(*SMOKE, f"--config.workdir={tmp_path / 'run'}", override, env=run_env)
  assert done.returncode == 1 and seconds < FAIL_FAST_S
  assert field in done.stderr
  assert SECRET not in done.stdout + done.stderr
