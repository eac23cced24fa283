"""Orbax checkpoints of a training run: array state + JSON metadata, keep-last-N plus best-by-validation.

Every save goes through orbax's atomic commit (written to a temporary directory, renamed when complete), so a run
killed mid-save resumes from the last complete step; half-written directories are never restored. A step that
cannot be restored (a missing or damaged file, an array whose shape differs from the requested state) raises
`CheckpointError` naming the step directory and the array, before any array is read.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers




def _drop_missing_metric_warning(record) -> bool:
  """Steps without an evaluation save no metrics by design; orbax warns about each such save."""
  return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_drop_missing_metric_warning)


class CheckpointError(ValueError):
  """A checkpoint step that cannot be restored into the requested state (the message names the step directory)."""


class Checkpointer:
  """Saves and restores (state pytree, metadata dict) pairs under `directory/<step>/`.

  Args:
    directory: where the step directories live (created if absent).
    keep_last: how many most recent steps to keep.
    best_metric: a key of the `metrics` passed to `save`; the best step by it is kept as well (None: off).
    best_mode: "max" or "min" for `best_metric`.
    async_save: write in a background thread (call `wait()` before reading or exiting).
  """

  def __init__(self, directory: str, *, keep_last: int = 3, best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = False):
    self.directory = os.path.abspath(directory)
    policies = [checkpoint_managers.LatestN(n=keep_last)]
    if best_metric is not None:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    self.best_metric, self.best_mode = best_metric, best_mode
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True,
        # best_fn makes orbax persist the per-step metrics that BestN and `best_step` read.
        best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode=best_mode)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    """Saves `state` (a pytree of jax / numpy arrays; scalars as 0-d arrays) and JSON-able `meta` at `step`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
    self._manager.save(step, args=args, metrics=metrics, force=True)

  def latest_step(self) -> int | None:
    """The newest complete step, or None when there is none."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best `best_metric` so far (None when off or no metrics were saved)."""
    if not self.best_metric:
      return None
    scored = [(m[self.best_metric], s) for s in self.all_steps() if (m := self._manager.metrics(s))
              and self.best_metric in m]
    if not scored:
      return None
    return (max(scored) if self.best_mode == "max" else min(scored))[1]

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores (state, meta, step) at `step` (default: latest) into the shapes / shardings of `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with `sharding`) or arrays of the same structure.
    Raises FileNotFoundError when there is no complete checkpoint, CheckpointError when the step's files are
    missing or damaged or an array's saved shape differs from `abstract_state`'s.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no complete checkpoint to restore")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    self._check_shapes(step, abstract)
    try:
      out = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-exception-caught  # orbax / tensorstore raise bare Exception.
      raise self._unreadable(step, e) from e
    return out.state, out.meta, step

  def _check_shapes(self, step: int, abstract: Any) -> None:
    """Raises CheckpointError unless every array of `abstract` is saved at `step` with the same shape."""
    path = os.path.join(self.directory, str(step), "state")
    handler = ocp.PyTreeCheckpointHandler()
    try:
      saved_tree = handler.metadata(epath.Path(path)).tree
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise self._unreadable(step, e) from e
    finally:
      handler.close()
    is_array = lambda x: isinstance(x, ocp.metadata.ArrayMetadata)
    saved = {m.name: m for m in jax.tree.leaves(saved_tree, is_leaf=is_array)}
    for keypath, want in jax.tree_util.tree_flatten_with_path(abstract)[0]:
      name = ".".join(ocp.tree.str_keypath(keypath))
      got = saved.get(name)
      if got is None:
        raise CheckpointError(f"{path}: array {name!r} is not in the checkpoint (it holds {len(saved)} arrays)")
      if tuple(got.shape) != tuple(want.shape):
        raise CheckpointError(f"{path}: array {name!r} has shape {tuple(got.shape)} in the checkpoint but "
                              f"{tuple(want.shape)} in this run (a different model or config?)")

  def _unreadable(self, step: int, error: Exception) -> CheckpointError:
    reason = str(error).split(". See full TensorStore details", 1)[0][:300]
    return CheckpointError(f"{os.path.join(self.directory, str(step))}: cannot read the checkpoint "
                           f"({type(error).__name__}: {reason}); it is damaged or incomplete. Complete steps: "
                           f"{self.all_steps()}")

  def restore_partial(self, abstract_subtree: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores only the arrays named by `abstract_subtree` at `step` (default: latest); the rest is not read.

    `abstract_subtree` holds a subset of the saved state's keys (e.g. {"learner": {"policy": ...}}) with
    jax.ShapeDtypeStruct (with `sharding`) or array leaves. Returns (subtree, meta, step); raises FileNotFoundError
    when there is no complete checkpoint and CheckpointError as `restore` does. Use a Checkpointer that has not
    saved in this process (orbax binds one handler per item).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no complete checkpoint to restore")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_subtree)
    self._check_shapes(step, abstract)
    state_args = ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                        partial_restore=True)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-exception-caught  # orbax / tensorstore raise bare Exception.
      raise self._unreadable(step, e) from e
    return out.state, out.meta, step

  def wait(self) -> None:
    """Blocks until any background save has finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
