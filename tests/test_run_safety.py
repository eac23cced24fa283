"""A run's claim on its workdir (lock, resume of the same run only) and main's handling of nonsense input: each a
named one-line `error:` before anything is built."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from memr1_jax import defaults, workdir
from memr1_jax.testing.smoke import smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/smoke.py", "--config.train.num_steps=3", "--config.train.eval_every=0"]
SMOKE_LOCOMO = ["--config=configs/smoke.py:locomo", *SMOKE[1:]]
FAIL_FAST_S = 20.0  # Refused before JAX builds anything (a training step alone takes longer).


def _main(*args: str) -> tuple[subprocess.CompletedProcess, float]:
  """Runs `python -m memr1_jax.main <args>`; returns (completed process, seconds)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  start = time.monotonic()
  done = subprocess.run([sys.executable, "-m", "memr1_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120, check=False)
  return done, time.monotonic() - start


_HOLDER = """
import sys, time
from memr1_jax import workdir
workdir.lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(path) -> subprocess.Popen:
  """A process that takes the workdir lock and sleeps; returns once it holds the lock."""
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_live_run_on_a_workdir_is_refused_naming_the_owner(tmp_path):
  """While one process holds the workdir, main on it exits 1 in seconds naming that process; nothing is written."""
  run = tmp_path / "run"
  holder = _hold_lock(run)
  try:
    done, seconds = _main(*SMOKE, f"--config.workdir={run}")
  finally:
    holder.kill()
    holder.wait()
  assert done.returncode == 1 and seconds < FAIL_FAST_S, done.stderr[-2000:]
  assert f"error: {run}: another run is using this workdir (pid {holder.pid} on " in done.stderr
  assert "Traceback" not in done.stderr and sorted(os.listdir(run)) == [workdir.LOCK_FILE]


def test_lock_of_a_killed_run_is_taken_over_with_one_line(tmp_path, caplog):
  """After its holder is killed with -9 the lock is free: the next claim takes it and says whose it was."""
  holder = _hold_lock(tmp_path)
  with pytest.raises(workdir.WorkdirError, match=f"pid {holder.pid} on "):
    workdir.lock(str(tmp_path))
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with caplog.at_level(logging.WARNING, logger="memr1_jax"):
    held = workdir.lock(str(tmp_path))
  held.release()
  (line,) = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
  assert line.startswith(f"{tmp_path}: taking over the lock of a run that is gone (pid {holder.pid} on ")
  again = workdir.lock(str(tmp_path))  # Released cleanly: no takeover line.
  again.release()
  assert sum("taking over" in r.getMessage() for r in caplog.records) == 1


def test_resume_with_another_agent_is_refused_listing_the_differences(tmp_path):
  """A workdir written by an answer-agent run refuses a manager run (exit 1, the field and both values), keeps its
  config.json, and --allow_config_change lets the same command pass the check."""
  run = tmp_path / "run"
  held = workdir.claim(smoke_config(run), "configs/smoke.py")
  held.release()
  saved = (run / workdir.CONFIG_FILE).read_text()
  done, seconds = _main(*SMOKE, f"--config.workdir={run}", "--config.agent=manager", "--config.seed=3")
  assert done.returncode == 1 and seconds < FAIL_FAST_S, done.stderr[-2000:]
  assert (f"error: {run} holds another run ({run / workdir.CONFIG_FILE}); configs/smoke.py differs in: "
          "agent: 'answer' -> 'manager'; seed: 0 -> 3.") in done.stderr
  assert (run / workdir.CONFIG_FILE).read_text() == saved
  changed = smoke_config(run, agent="manager")
  with pytest.raises(workdir.WorkdirError, match="agent: 'answer' -> 'manager'"):
    workdir.claim(changed, "configs/smoke.py")
  workdir.claim(changed, "configs/smoke.py", allow_config_change=True).release()
  assert json.loads((run / workdir.CONFIG_FILE).read_text())["agent"] == "manager"


def test_config_json_is_redacted_and_other_fields_may_change_on_resume(tmp_path, monkeypatch):
  """config.json never holds the judge key's value; a changed step count is no reason to refuse a resume."""
  monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
  config = smoke_config(tmp_path, **{"eval.judge": "https://judge.example/v1?k=sk-test-0123456789"})
  workdir.claim(config, "smoke").release()
  assert "sk-test-0123456789" not in (tmp_path / workdir.CONFIG_FILE).read_text()
  workdir.claim(smoke_config(tmp_path, **{"train.num_steps": 9}), "smoke").release()
  assert json.loads((tmp_path / workdir.CONFIG_FILE).read_text())["train"]["num_steps"] == 9


@pytest.mark.parametrize("override,expected", [
    ("--config.rollout.batch_size=0", "config.rollout.batch_size=0 is out of range: at least 1 prompt per step"),
    ("--config.rollout.batch_size=-4", "config.rollout.batch_size=-4 is out of range"),
    ("--config.rollout.group_size=1", "config.rollout.group_size=1 with algorithm=grpo: a group needs at least 2"),
    ("--config.rollout.max_new_tokens=0", "config.rollout.max_new_tokens=0 is out of range"),
    ("--config.train.checkpoint_every=0", "config.train.checkpoint_every=0 is out of range"),
    ("--config.rollout.temperature=-0.5", "config.rollout.temperature=-0.5 is out of range: 0 (greedy) or more"),
    ("--config.demo.train_conversations=0",
     "config.demo.train_conversations=0 is out of range: at least 1 conversation"),
    ("--config.rl.lam=1.5", "config.rl.lam=1.5 is out of range: in [0, 1]"),
])
def test_nonsense_values_fail_fast_with_one_error_line(override, expected, tmp_path):
  """Each out-of-range value exits 1 in seconds with one `error:` line naming file and field; no workdir is made."""
  done, seconds = _main(*SMOKE, f"--config.workdir={tmp_path / 'run'}", override)
  assert done.returncode == 1 and seconds < FAIL_FAST_S
  assert f"error: configs/smoke.py: {expected}" in done.stderr and "Traceback" not in done.stderr
  assert not os.path.exists(tmp_path / "run")


def test_ppo_with_one_response_per_prompt_is_accepted():
  """group_size 1 is PPO's normal setting: the GRPO rule does not apply to it."""
  from memr1_jax import main  # pylint: disable=g-import-not-at-top
  main.validate_config(smoke_config("unused", algorithm="ppo", **{"rollout.group_size": 1}), "smoke")


def test_missing_config_file_is_one_error_line():
  """A --config path that does not exist exits 1 with one line naming it and the shipped configs."""
  done, _ = _main("--config=configs/nope.py")
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.startswith("error: --config=configs/nope.py: no such file (configs/ holds the shipped ones: ")
  assert "demo.py" in done.stderr


def _locomo_copy(tmp_path, keep: tuple[str, ...]):
  with open(os.path.join(REPO, "tests", "fixtures", "locomo_small.json"), encoding="utf-8") as f:
    records = [r for r in json.load(f) if r["sample_id"] in keep]
  path = tmp_path / "locomo10.json"
  path.write_text(json.dumps(records), encoding="utf-8")
  return path


def test_non_utf8_dataset_is_a_named_error(tmp_path):
  """A dataset file with Latin-1 bytes fails in seconds naming the file and the byte, without a traceback."""
  path = _locomo_copy(tmp_path, ("conv-26", "conv-30"))
  data = path.read_bytes()
  assert b'"text": "' in data
  path.write_bytes(data.replace(b'"text": "', b'"text": "na\xefve ', 1))  # Latin-1 for "i with diaeresis".
  done, seconds = _main(*SMOKE_LOCOMO, f"--config.workdir={tmp_path / 'run'}", f"--config.data.path={path}")
  assert done.returncode == 1 and seconds < FAIL_FAST_S and "Traceback" not in done.stderr
  assert f"error: {path}: record <file>: field '<encoding>': not UTF-8 text (byte " in done.stderr


def test_empty_training_split_is_a_named_error(tmp_path):
  """A LoCoMo file without the training conversation (conv-26) stops with an error naming the split, not a
  ZeroDivisionError."""
  path = _locomo_copy(tmp_path, ("conv-30",))
  done, _ = _main(*SMOKE_LOCOMO, f"--config.workdir={tmp_path / 'run'}", f"--config.data.path={path}")
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert f"error: config.data: the training split of {path} holds no questions to train the answer agent on" in (
      done.stderr)


def test_verbose_shows_the_traceback_of_a_named_error(tmp_path):
  """--verbose keeps the traceback behind an error for debugging."""
  path = _locomo_copy(tmp_path, ("conv-30",))
  done, _ = _main(*SMOKE_LOCOMO, "--verbose", f"--config.workdir={tmp_path / 'run'}", f"--config.data.path={path}")
  assert done.returncode == 1 and "Traceback" in done.stderr and "ConfigError" in done.stderr


def test_redacted_config_round_trips_through_json():
  """defaults.redacted is plain JSON equal to the config's own JSON when no key is set."""
  config = defaults.default_config()
  assert defaults.redacted(config) == json.loads(config.to_json_best_effort())
