"""Orbax checkpoints of a training run: array state + JSON metadata, keep-last-N plus best-by-validation, verified.

Every save goes through orbax's atomic commit (written to a temporary directory, renamed when complete), so a run
killed mid-save resumes from the last complete step; half-written directories are never restored. Each step also
holds an `integrity` JSON item: the sha256 digest of every array by name, of the metadata, and the names of arrays
holding NaN / inf. A restore recomputes the digests of what it read, so a flipped byte anywhere is caught.

Restoring the latest step skips a damaged step (a file missing, cut short or changed): it restores the newest older
step that verifies, moves the damaged ones aside to `<step>.damaged` (kept, not deleted; orbax ignores that name, so
the resumed run can save those steps again) and logs one warning line. An explicitly requested step that is damaged,
or an array whose shape differs from the requested state, raises `CheckpointError` naming the step directory. Steps
saved before digests existed restore unverified. keep-last-N never deletes the newest step whose arrays are all
finite (`last_finite_step`).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import re
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from memr1_jax import errors, multihost

logger = logging.getLogger(__name__)

# The JSON item holding a step's digests; orbax's JsonSave writes an item to <step>/<item>/metadata.
INTEGRITY = "integrity"


def _drop_missing_metric_warning(record) -> bool:
  """Steps without an evaluation save no metrics by design; orbax warns about each such save."""
  return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_drop_missing_metric_warning)


class CheckpointError(errors.Error, ValueError):
  """A checkpoint step that cannot be restored into the requested state (the message names the step directory)."""


class _DamagedStep(CheckpointError):
  """A step whose files cannot be read or whose contents differ from their saved digests."""

  def __init__(self, step_dir: str, step: int, reason: str):
    self.step, self.reason = step, " ".join(reason.split())  # One line: the reason goes into a log line.
    super().__init__(f"{step_dir}: {self.reason}; it is damaged or incomplete")


def _named_leaves(tree) -> list[tuple[str, Any]]:
  """[(orbax's name of the leaf, e.g. "learner.policy.embed_vd", leaf)] of every leaf of `tree`."""
  return [(".".join(ocp.tree.str_keypath(path)), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _digests(named: dict[str, Any]) -> dict[str, tuple[str, bool]]:
  """{name: (sha256 of the array's dtype, shape and bytes, whether all its values are finite)} of `named` arrays.

  Each array is fetched to the host on its own (all-gathered across processes, so every process must call this),
  so the digest does not depend on how the array is sharded and host memory holds one array (and the copy that
  `tree_checksum` hashes) at a time. Cost, at every save and every verified restore: one device-to-host pass over
  the state, an isfinite pass and sha256 over its bytes, on one core (3.5 s per 256 MiB measured on a busy 2-core
  host, about half of it sha256); the save waits for it, even with async_save.
  """
  out = {}
  for name, leaf in named.items():
    host = np.asarray(multihost.to_host(leaf))
    finite = not jnp.issubdtype(host.dtype, jnp.inexact) or bool(np.isfinite(host).all())
    out[name] = (multihost.tree_checksum(host), finite)
  return out


def _meta_digest(meta: dict) -> str:
  """sha256 of `meta` as orbax's JsonSave writes it (json.dumps); a JSON round trip gives the same text."""
  return hashlib.sha256(json.dumps(meta).encode()).hexdigest()


def _cannot_read(error: Exception) -> str:
  """The reason a read failed: its innermost cause (orbax wraps TensorStore's error), without TensorStore's spec."""
  while error.__cause__ is not None:
    error = error.__cause__
  reason = re.split(r"\. See full TensorStore details| \[tensorstore_spec=", str(error), maxsplit=1)[0][:300]
  return f"cannot read the checkpoint ({type(error).__name__}: {reason})"


def _orbax_read_debris(unraisable) -> bool:
  """Whether an unraisable exception is what a failed orbax read leaves behind: its abandoned read coroutines
  raising while being closed, or TensorStore callbacks finding orbax's event loop closed."""
  return (getattr(getattr(unraisable.object, "cr_code", None), "co_name", "") == "_read_array_index_and_device_put"
          or (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"))


def _silence_orbax_read_debris() -> None:
  """After a failed read, keeps its debris (a traceback of dozens of lines each, printed at garbage collection)
  off stderr: installs, once, an unraisable hook that drops it, then collects the abandoned coroutines now."""
  if not getattr(sys.unraisablehook, "drops_orbax_read_debris", False):
    previous = sys.unraisablehook

    def hook(unraisable):
      if not _orbax_read_debris(unraisable):
        previous(unraisable)

    hook.drops_orbax_read_debris = True
    sys.unraisablehook = hook
  gc.collect()


@dataclasses.dataclass
class _KeepNewestWhere(checkpoint_managers.PreservationPolicy):
  """Preserves the newest checkpoint whose step satisfies `keep`, whatever the other policies decide."""

  keep: Callable[[int], bool]

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
    """One flag per checkpoint (oldest first): True only for the newest one with keep(step)."""
    del context
    newest = next((c.step for c in reversed(checkpoints) if self.keep(c.step)), None)
    return [c.step == newest for c in checkpoints]


class Checkpointer:
  """Saves and restores (state pytree, metadata dict) pairs under `directory/<step>/`.

  Args:
    directory: where the step directories live (created if absent).
    keep_last: how many most recent steps to keep (plus the newest step whose arrays are all finite).
    best_metric: a key of the `metrics` passed to `save`; the best step by it is kept as well (None: off).
    best_mode: "max" or "min" for `best_metric`.
    async_save: write in a background thread (call `wait()` before reading or exiting).
  """

  def __init__(self, directory: str, *, keep_last: int = 3, best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = False):
    self.directory = os.path.abspath(directory)
    self._finite: dict[int, bool | None] = {}  # step -> all arrays finite (None: saved without digests).
    policies = [checkpoint_managers.LatestN(n=keep_last), _KeepNewestWhere(self._is_finite)]
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
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta", INTEGRITY))

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    """Saves `state` (a pytree of jax / numpy arrays; scalars as 0-d arrays) and JSON-able `meta` at `step`.

    The step also records the digest and finiteness of every array (one host pass over `state`, see `_digests`).
    """
    digests = _digests(dict(_named_leaves(state)))
    record = {"sha256": {name: digest for name, (digest, _) in digests.items()},
              "nonfinite": [name for name, (_, finite) in digests.items() if not finite],
              "meta_sha256": _meta_digest(meta)}
    # Known before orbax's preservation policy runs at the end of this save (or of its background commit).
    self._finite[step] = not record["nonfinite"]
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                              **{INTEGRITY: ocp.args.JsonSave(record)})
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
    try:
      self._manager.save(step, args=args, metrics=metrics, force=True)
    except BaseException:
      self._finite.pop(step, None)  # Re-read from disk when asked: the step there (if any) is not this one.
      raise

  def latest_step(self) -> int | None:
    """The newest complete step (not yet verified), or None when there is none."""
    return self._manager.latest_step()

  def last_finite_step(self) -> int | None:
    """The newest step whose arrays were all finite when saved (by its digest record), or None when there is none."""
    return next((s for s in sorted(self.all_steps(), reverse=True) if self._is_finite(s)), None)

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
    """Every complete step on disk (damaged ones included until a restore moves them aside)."""
    return list(self._manager.all_steps())

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores (state, meta, step) at `step` (default: the newest step that verifies) into `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with `sharding`) or arrays of the same structure; the
    result has its shapes / shardings. Every array read is checked against the step's digests. With `step=None` a
    damaged step is skipped for the newest older one that verifies (one warning line; see the module docstring).
    Raises FileNotFoundError when there is no complete checkpoint; CheckpointError when the requested step (or, by
    default, every step) is damaged, or an array's saved shape differs from `abstract_state`'s.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    return self._restore(abstract, step, ocp.args.StandardRestore(abstract))

  def restore_partial(self, abstract_subtree: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores only the arrays named by `abstract_subtree` at `step` (default: as `restore`); the rest is not read.

    `abstract_subtree` holds a subset of the saved state's keys (e.g. {"learner": {"policy": ...}}) with
    jax.ShapeDtypeStruct (with `sharding`) or array leaves. Returns (subtree, meta, step); the arrays read are
    checked against their digests. Raises as `restore` does. Use a Checkpointer that has not saved in this process
    (orbax binds one handler per item).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_subtree)
    args = ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)
    return self._restore(abstract, step, args)

  def _restore(self, abstract: Any, step: int | None, state_args: Any) -> tuple[Any, dict, int]:
    """(state, meta, step) of `step`, or of the newest step that verifies when `step` is None."""
    if step is not None:
      try:
        return (*self._read_verified(step, abstract, state_args), step)
      except _DamagedStep as e:
        raise CheckpointError(f"{e}. Other steps: {[s for s in self.all_steps() if s != step]}") from None
    damaged = []
    for candidate in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self._read_verified(candidate, abstract, state_args)
      except _DamagedStep as e:
        damaged.append(e)
        continue
      if damaged:
        self._set_aside(damaged, candidate)
      return state, meta, candidate
    if not damaged:
      raise FileNotFoundError(f"{self.directory}: no complete checkpoint to restore")
    raise CheckpointError(f"{self.directory}: no checkpoint step can be restored, each is damaged or incomplete: "
                          + "; ".join(f"step {e.step}: {e.reason}" for e in damaged))

  def _read_verified(self, step: int, abstract: Any, state_args: Any) -> tuple[Any, dict]:
    """(state, meta) of `step`, checked against the step's digests when it has them (steps of older code do not).

    Raises _DamagedStep when a file cannot be read or the contents differ from the digests, CheckpointError when
    `abstract` does not fit the step.
    """
    step_dir = os.path.join(self.directory, str(step))
    saved = self._check_shapes(step, abstract)
    record = self._integrity(step)
    failure = None
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-exception-caught  # orbax / tensorstore raise bare Exception.
      failure = _cannot_read(e)
    if failure:  # Outside the except block: the exception's traceback keeps orbax's abandoned coroutines alive.
      _silence_orbax_read_debris()
      raise _DamagedStep(step_dir, step, failure)
    if record is None:
      return out.state, out.meta
    # An array restored into another dtype than it was saved in has other bytes: it is read but not verified.
    named = {name: x for name, x in _named_leaves(out.state) if np.dtype(x.dtype) == np.dtype(saved[name].dtype)}
    wrong = [f"array {name!r}" for name, (digest, _) in _digests(named).items() if digest != record["sha256"].get(name)]
    if _meta_digest(out.meta) != record["meta_sha256"]:
      wrong.append("the metadata")
    if wrong:
      raise _DamagedStep(step_dir, step, f"{len(wrong)} item(s) differ from their saved sha256 digest: "
                                         + ", ".join(wrong[:3]) + (", ..." if len(wrong) > 3 else ""))
    return out.state, out.meta

  def _check_shapes(self, step: int, abstract: Any) -> dict[str, Any]:
    """The saved arrays' orbax metadata by name; raises CheckpointError unless every array of `abstract` is saved
    at `step` with the same shape (_DamagedStep when the metadata cannot be read)."""
    step_dir = os.path.join(self.directory, str(step))
    path = os.path.join(step_dir, "state")
    handler = ocp.PyTreeCheckpointHandler()
    try:
      saved_tree = handler.metadata(epath.Path(path)).tree
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise _DamagedStep(step_dir, step, _cannot_read(e)) from None
    finally:
      handler.close()
    is_array = lambda x: isinstance(x, ocp.metadata.ArrayMetadata)
    saved = {m.name: m for m in jax.tree.leaves(saved_tree, is_leaf=is_array)}
    for name, want in _named_leaves(abstract):
      got = saved.get(name)
      if got is None:
        raise CheckpointError(f"{path}: array {name!r} is not in the checkpoint (it holds {len(saved)} arrays)")
      if tuple(got.shape) != tuple(want.shape):
        raise CheckpointError(f"{path}: array {name!r} has shape {tuple(got.shape)} in the checkpoint but "
                              f"{tuple(want.shape)} in this run (a different model or config?)")
    return saved

  def _integrity(self, step: int) -> dict | None:
    """The digest record of `step`; None for a step saved without one (by older code).

    Raises _DamagedStep when the record of a step saved with one is missing or unreadable.
    """
    step_dir = os.path.join(self.directory, str(step))
    path = os.path.join(step_dir, INTEGRITY, "metadata")
    try:
      with open(path, encoding="utf-8") as f:
        record = json.load(f)
      return {"sha256": dict(record["sha256"]), "nonfinite": list(record["nonfinite"]),
              "meta_sha256": str(record["meta_sha256"])}
    except FileNotFoundError:
      if not os.path.isdir(os.path.dirname(path)) and INTEGRITY not in self._saved_items(step):
        return None
      raise _DamagedStep(step_dir, step, f"its digest record {path} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise _DamagedStep(step_dir, step, f"its digest record {path} is unreadable ({type(e).__name__}: {e})") from None

  def _saved_items(self, step: int) -> list[str]:
    """The item names orbax recorded in the step's _CHECKPOINT_METADATA ([] when it cannot be read)."""
    try:
      with open(os.path.join(self.directory, str(step), "_CHECKPOINT_METADATA"), encoding="utf-8") as f:
        return list(json.load(f)["item_handlers"])
    except (OSError, ValueError, KeyError, TypeError):
      return []

  def _is_finite(self, step: int) -> bool:
    """Whether the digest record of `step` says all its arrays were finite (False when it has none or is damaged)."""
    if step not in self._finite:
      try:
        record = self._integrity(step)
        self._finite[step] = None if record is None else not record["nonfinite"]
      except CheckpointError:
        self._finite[step] = False  # A damaged record vouches for nothing.
    return bool(self._finite[step])

  def _set_aside(self, damaged: list[_DamagedStep], used: int) -> None:
    """Renames the `damaged` steps' directories to `<step>.damaged` and logs one warning line: which steps, why,
    where they went and the step `used` instead. Orbax ignores those names, so the run can save those steps again;
    nothing is deleted."""
    moved = []
    for e in damaged:
      src = os.path.join(self.directory, str(e.step))
      dst, n = f"{src}.damaged", 1
      while os.path.exists(dst):
        dst, n = f"{src}.damaged{n}", n + 1
      try:
        if jax.process_index() == 0:
          os.rename(src, dst)
        moved.append(os.path.basename(dst))
      except OSError as err:
        moved.append(f"not moved ({type(err).__name__}: {err})")
      self._finite.pop(e.step, None)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("memr1_jax.checkpoint.set_aside")
    self._manager.reload()
    logger.warning("%s: restored step %d instead of damaged step(s) %s (kept as %s)", self.directory, used,
                   "; ".join(f"{e.step}: {e.reason}" for e in damaged), ", ".join(moved))

  def wait(self) -> None:
    """Blocks until any background save has finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for background saves, then releases orbax's resources."""
    self._manager.wait_until_finished()
    self._manager.close()
