"""The training loop of mode=train and mode=sft: resume, steps, metrics, checkpoints, evaluation, SIGTERM and the
non-finite guard.

A `TrainingRun` owns a run's learner (`learner.Learner`), its checkpoints (`<workdir>/checkpoints/<step>`: the
state `{"learner": TrainState, "step": int32}` and the meta `{"next_step", ..., "config"}`) and its metrics log
(`MetricsWriter`: `<workdir>/tb` and `metrics.jsonl`). `TrainingRun.run_steps(step_fn, num_steps, ...)` runs a
mode's `step_fn(step) -> metrics` from the newest checkpoint to `num_steps`:
  - metrics are written every config.train.log_every steps, at an evaluated step and at the last step;
  - a checkpoint is saved every `checkpoint_every` steps (0: none in between) and after the last step;
  - after config.train.max_nonfinite_steps updates in a row that were skipped for a non-finite loss or gradient, the
    run stops with `NonFiniteError` naming the newest checkpoint that holds only finite values;
  - SIGTERM lets the current step finish, saves its checkpoint and raises `errors.Preempted` (main exits with
    `errors.PREEMPTED_EXIT_CODE`; the same command resumes).
Every random choice of a step derives from (config.seed, step), so a resumed run continues exactly as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable, Sequence

import jax
import numpy as np

from memr1_jax import console, defaults, errors, faults, multihost
from memr1_jax.checkpoint import Checkpointer
from memr1_jax.metrics_writer import MetricsWriter

logger = logging.getLogger(__name__)


class NonFiniteError(errors.Error, RuntimeError):
  """Too many consecutive updates had a non-finite loss or gradient."""


def _update_failed(metrics: dict, prefix: str) -> bool | None:
  """Whether the step's update (metrics `<prefix>loss`, `<prefix>skipped`) was skipped or had a non-finite loss;
  None when the step ran no update."""
  loss, skipped = f"{prefix}loss", f"{prefix}skipped"
  if loss not in metrics and skipped not in metrics:
    return None
  return metrics.get(skipped, 0.0) > 0 or not math.isfinite(metrics.get(loss, 0.0))


class TrainingRun:
  """One training run's learner, checkpoints and metrics log, and the step loop of every training mode.

  Args:
    config: the run's config (workdir, seed, train.keep_checkpoints / log_every / max_nonfinite_steps /
      log_param_checksum; saved, redacted, in every checkpoint's meta).
    learner: the `learner.Learner` whose state is checkpointed and restored.
    mesh: the run's mesh (the checkpoint's step counter is replicated over it).
    progress: makes the run's progress bar like `console.bar` (a `console.QueueBar` in a worker process); None: no
      bar.
    best_metric: the metric by which the best checkpoint is kept as well (None: off).
    meta: more entries of every checkpoint's meta (mode=sft: {"mode": "sft"}).
  """

  def __init__(self, config, learner, mesh, *, progress: Callable | None = console.bar,
               best_metric: str | None = None, meta: dict | None = None):
    self.config = config
    self.learner = learner
    self.mesh = mesh
    self.progress = progress
    self.best_metric = best_metric
    self.meta = dict(meta or {})
    self.workdir = config.workdir
    self.faults = faults.from_env()  # Test-only fault injection (MEMR1_FAULT); {} in normal runs.
    self.ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), keep_last=config.train.keep_checkpoints,
                             best_metric=best_metric)
    self._writer = None  # Opened on first use, or at the restored step by `restore`.
    self.start_step = 0
    self._stop_signal = None

  @property
  def writer(self) -> MetricsWriter:
    """The run's metrics writer (process 0 writes)."""
    if self._writer is None:
      self._writer = MetricsWriter(self.workdir, enabled=jax.process_index() == 0)
    return self._writer

  # Checkpoints.

  def _ckpt_state(self, step: int) -> dict:
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    return {"learner": self.learner.state, "step": multihost.put_global(np.asarray(step, np.int32), replicated)}

  def restore(self) -> None:
    """Resumes from the newest complete checkpoint of this workdir, if any (sets the learner's state and
    `start_step`, and reopens the metrics writer at that step)."""
    if self.ckpt.latest_step() is None:
      return
    restored, meta, _ = self.ckpt.restore(self._ckpt_state(0))
    self.learner.state = restored["learner"]
    self.start_step = int(meta["next_step"])
    logger.info("resumed from %s at step %d", self.ckpt.directory, self.start_step)
    # Reopened at the restored step: what a killed run logged after its checkpoint leaves metrics.jsonl and TensorBoard.
    if self._writer is not None:
      self._writer.close()
    self._writer = MetricsWriter(self.workdir, enabled=jax.process_index() == 0, resume_step=self.start_step)

  def save(self, next_step: int, metrics: dict | None = None) -> None:
    """Checkpoints the learner as of `next_step` (the step a resumed run starts at); `metrics` may hold the
    `best_metric` score of that state."""
    meta = {"next_step": next_step, **self.meta, "config": defaults.redacted(self.config)}
    scores = {k: v for k, v in (metrics or {}).items() if k == self.best_metric} or None
    self.ckpt.save(next_step, self._ckpt_state(next_step), meta, metrics=scores)

  # The loop.

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    self._stop_signal = signum
    logger.warning("signal %d: will checkpoint and exit after the current step", signum)

  def run_steps(self, step_fn: Callable[[int], dict], num_steps: int, *, checkpoint_every: int, desc: str,
                update_prefix: str, bar_keys: Sequence[str] = (), evaluate: Callable[[], dict] | None = None,
                eval_every: int = 0, batch_labels: Callable[[int], str] | None = None) -> dict:
    """Restores the newest checkpoint, then runs `step_fn` on steps [restored step, num_steps); returns the last
    step's metrics ({} when no step ran). Closes the checkpointer and the metrics writer at the end.

    Args:
      step_fn: step -> {name: float}, the step's metrics; its update's are `<update_prefix>loss` and
        `<update_prefix>skipped` (neither, when the step ran no update).
      num_steps: the step count the run ends at.
      checkpoint_every: save after every this many steps (0: only after the last step; also on SIGTERM).
      desc: the progress bar's label.
      update_prefix: see `step_fn` ("train/", "sft/").
      bar_keys: metrics shown beside the bar, named by their last part.
      evaluate: () -> metrics merged into those of every `eval_every`-th step (0: never).
      batch_labels: step -> what the step trained on, in words, for the log line of a non-finite update.

    Raises:
      NonFiniteError: config.train.max_nonfinite_steps non-finite updates in a row (the error names the newest
        checkpoint holding only finite values).
      errors.Preempted: after SIGTERM, once the current step is finished and checkpointed.
    """
    c = self.config.train
    self.restore()
    writer = self.writer
    previous = signal.signal(signal.SIGTERM, self._on_signal)
    nonfinite, last, bar, stopped_after = 0, {}, None, None
    try:
      bar = (self.progress or console.bar)(num_steps, initial=self.start_step, desc=desc,
                                           disable=self.progress is None or jax.process_index() != 0)
      for step in range(self.start_step, num_steps):
        metrics = step_fn(step)
        faults.send_signal(self.faults, step)
        failed = _update_failed(metrics, update_prefix)
        if failed:
          nonfinite += 1
          logger.error("step %d: non-finite loss or gradient, update skipped (%d in a row)%s", step, nonfinite,
                       f"; batch: {batch_labels(step)}" if batch_labels else "")
          if nonfinite >= c.max_nonfinite_steps:
            good = self.ckpt.last_finite_step()  # Newer checkpoints may hold NaN / inf.
            raise NonFiniteError(
                f"{nonfinite} consecutive non-finite updates (last at step {step}); stopping. "
                + (f"The last good checkpoint is step {good} in {self.ckpt.directory}" if good is not None else
                   f"No checkpoint in {self.ckpt.directory} holds only finite values"))
        elif failed is not None:
          nonfinite = 0
        evaluated = bool(eval_every and evaluate and (step + 1) % eval_every == 0)
        if evaluated:
          metrics.update(evaluate())
        end = step + 1 == num_steps or self._stop_signal is not None  # This step is the run's last.
        if (step + 1) % c.log_every == 0 or evaluated or end:
          writer.write(step + 1, metrics)
        bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in bar_keys if k in metrics}, refresh=False)
        bar.update(1)
        last = metrics
        if (checkpoint_every and (step + 1) % checkpoint_every == 0) or end:
          self.save(step + 1, metrics)
        if self._stop_signal is not None:
          stopped_after = step + 1
          break
      if c.log_param_checksum:  # Every process prints its view: equal digests = the hosts agree.
        updates = int(multihost.to_host(self.learner.state.updates))
        print(f"param_checksum process={jax.process_index()} updates={updates} "
              f"sha256={multihost.tree_checksum(self.learner.state)}", flush=True)
    finally:
      if bar is not None:
        bar.close()
      signal.signal(signal.SIGTERM, previous)
      self.ckpt.close()
      writer.close()
    if stopped_after is not None:
      raise errors.Preempted(f"stopped by signal {self._stop_signal} after step {stopped_after} (checkpoint saved in "
                             f"{self.ckpt.directory})")
    return last
