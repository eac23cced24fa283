"""What a run prints: library INFO records hidden by default, this package's records as plain lines, progress as
bars or plain lines, worker processes' bars drawn by the parent."""

from __future__ import annotations

import queue
import subprocess
import sys

from memr1_jax import console

REPO = __file__.rsplit("/tests/", 1)[0]

_LOGS = """
import logging, sys
from absl import logging as absl_logging
from memr1_jax import console
console.setup(verbose=sys.argv[1] == "1")
absl_logging.info("orbax-like library record")
logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
logging.getLogger("memr1_jax.train").info("resumed from /w at step 3")
logging.getLogger("memr1_jax.train").warning("signal 15: will checkpoint")
"""


def _stderr_of(verbose: bool) -> str:
  done = subprocess.run([sys.executable, "-c", _LOGS, "1" if verbose else "0"], cwd=REPO, capture_output=True,
                        text=True, timeout=60, check=True)
  return done.stderr


def test_default_console_hides_library_info_and_prints_own_records_plainly():
  """By default only this package's records show: INFO as the bare message, WARNING with a 'warning:' prefix."""
  assert _stderr_of(False).splitlines() == ["resumed from /w at step 3", "warning: signal 15: will checkpoint"]


def test_verbose_console_shows_library_info_records():
  """With --verbose the libraries' INFO records are shown too (absl's prefixed format)."""
  err = _stderr_of(True)
  assert "orbax-like library record" in err and "resumed from /w at step 3" in err


def test_progress_off_a_terminal_is_a_few_plain_lines(capsys):
  """Off a terminal a bar prints no line per step: one at the end (and at most one per 30 s) with its postfix."""
  bar = console.bar(50, desc="sft")
  for _ in range(50):
    bar.set_postfix({"loss": "0.123"})
    bar.update(1)
  bar.close()
  bar.close()  # A second close prints nothing.
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("sft: 50/50 steps, ") and lines[0].endswith(", loss=0.123")


def test_queue_bars_are_drawn_by_the_renderer_one_line_each(capsys):
  """Two workers' QueueBar updates arrive in the parent's renderer and end as one closing line per stage."""
  events = queue.Queue()
  renderer = console.BarRenderer(events)
  bars = [console.QueueBar(events, key)(total, desc=name) for key, (name, total) in
          enumerate((("answer grpo", 4), ("manager grpo", 2)))]
  for step in range(4):
    for b, total in zip(bars, (4, 2)):
      if step < total:
        b.set_postfix({"reward": f"0.{step}"})
        b.update(1)
  for b in bars:
    b.close()
  renderer.stop()
  lines = sorted(capsys.readouterr().err.splitlines())
  assert [line.split(",")[0] for line in lines] == ["answer grpo: 4/4 steps", "manager grpo: 2/2 steps"]
  assert lines[0].endswith("reward=0.3") and lines[1].endswith("reward=0.1")
