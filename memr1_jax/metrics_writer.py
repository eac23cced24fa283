"""Metrics to TensorBoard (tensorboardX event files) and a JSONL log.

Only process 0 writes (`enabled`); every value is a Python float fetched once per step.
"""

from __future__ import annotations

import json
import os


class MetricsWriter:
  """Writes `{name: float}` per step to `<workdir>/tb` (TensorBoard) and `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

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


def read_jsonl(workdir: str) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl` (later records for a step replace earlier ones after a resume)."""
  path = os.path.join(workdir, "metrics.jsonl")
  by_step = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        rec = json.loads(line)
        by_step[rec["step"]] = rec
  return [by_step[s] for s in sorted(by_step)]
