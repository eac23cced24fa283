"""Metrics to TensorBoard (tensorboardX event files) and a JSONL log.

Only process 0 writes (`enabled`); every value is a Python float fetched once per step. A run resumed from the
checkpoint of step R opens its writer with `resume_step=R`: the records a killed run logged after R are dropped from
metrics.jsonl and hidden from TensorBoard (purge_step), so the log holds each step once.
"""

from __future__ import annotations

import json
import os
import time

from memr1_jax import fileio


class MetricsWriter:
  """Writes `{name: float}` per step to `<workdir>/tb` (TensorBoard) and `<workdir>/metrics.jsonl`.

  resume_step: the step of the checkpoint a run resumes from; records of later steps are discarded first (None: a
  fresh run, nothing is discarded). Either way a last line cut short by a kill is dropped before appending.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      path = os.path.join(workdir, "metrics.jsonl")
      truncate_jsonl(path, resume_step)
      # TensorBoard hides the events of steps >= purge_step from the event files that sort before this one. The
      # suffix (nanoseconds) keeps that order within one second, where tensorboardX would otherwise reuse, and so
      # truncate, the previous writer's file name.
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), filename_suffix=f".{time.time_ns():020d}",
                               purge_step=None if resume_step is None else resume_step + 1)
      self._jsonl = open(path, "a", encoding="utf-8")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Records `metrics` at `step`."""
    if not self.enabled:
      return
    for name, value in metrics.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _complete_lines(text: str) -> list[str]:
  """The lines of a metrics log's `text` without a last one that is not valid JSON (a record cut short by a kill)."""
  *complete, last = text.split("\n")  # On "\n" only, as a file's readlines() does.
  lines = [line + "\n" for line in complete] + ([last] if last else [])
  if lines:
    try:
      json.loads(lines[-1])
    except json.JSONDecodeError:
      if lines[-1].strip():
        lines.pop()
  return lines


def _step(line: str) -> int | None:
  """The step of a metrics.jsonl line, or None for a blank or unreadable one (kept as it is)."""
  try:
    rec = json.loads(line)
  except json.JSONDecodeError:
    return None
  step = rec.get("step") if isinstance(rec, dict) else None
  return step if isinstance(step, int) else None


def truncate_jsonl(path: str, last_step: int | None) -> None:
  """Rewrites the metrics log `path` atomically without the records of steps after `last_step` (None: keep all).

  A last line cut short by a kill is dropped too. A missing file, or one with nothing to drop, is left untouched.
  """
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    original = f.read()
  kept = "".join(line if line.endswith("\n") else line + "\n" for line in _complete_lines(original)
                 if last_step is None or (step := _step(line)) is None or step <= last_step)
  if kept != original:
    fileio.write_atomic(path, kept)


def read_jsonl(workdir: str) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl` by step (a later record of a step replaces an earlier one).

  A last line cut short by a kill is skipped.
  """
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    text = f.read()
  for line in _complete_lines(text):
    if line.strip():
      rec = json.loads(line)
      by_step[rec["step"]] = rec
  return [by_step[s] for s in sorted(by_step)]
