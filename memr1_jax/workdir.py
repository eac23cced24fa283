"""A run's claim on its workdir: one live run at a time (a lock), and a resume only of the same run (its config).

`claim` takes `<workdir>/.lock` with an exclusive `flock` held for the life of the process and writes its owner
(host, pid, start time) into it. A second live run on the workdir fails with `WorkdirError` naming that owner; a lock
whose owner died (the kernel drops a dead process's flock) is taken over with one line saying so. The hosts of a
multi-host run (mesh.distributed) share their workdir and take no lock.

The run's config is saved to `<workdir>/config.json` (secrets redacted). A workdir that already holds one is a run to
resume: the fields that make a run what it is (`IDENTITY_FIELDS`) must match, or `WorkdirError` lists the differences
(main's --allow_config_change lets them pass); the others (step counts, eval cadence, ...) may change.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket

from memr1_jax import defaults, errors

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
# Modes that train into their workdir (and so resume from it); eval and export only read a run's workdir.
TRAINING_MODES = ("train", "sft", "demo")
# Dotted fields that a resumed run must share with the run that wrote the workdir.
IDENTITY_FIELDS = ("mode", "agent", "algorithm", "seed", "model.path", "model.preset", "model.lora_rank",
                   "model.param_dtype", "data.name", "data.path", "sft.path")


class WorkdirError(errors.Error):
  """The workdir is in use by another live run, or holds a different run (the message says which and how)."""


class Lock:
  """An exclusive flock on `<workdir>/.lock` (fd None: no lock taken); `release` (or process exit) frees it."""

  def __init__(self, path: str, fd: int | None):
    self.path, self._fd = path, fd

  def release(self) -> None:
    """Clears the owner record and drops the lock."""
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


def _owner() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _describe(owner: dict) -> str:
  return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"


def _read_owner(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode("utf-8", "replace").strip()
  try:
    return json.loads(text) if text else {}
  except json.JSONDecodeError:
    return {"host": "?", "pid": text[:40]}


def lock(workdir: str) -> Lock:
  """Takes the workdir's lock for this process; raises WorkdirError while another live process holds it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    owner = _read_owner(fd)
    os.close(fd)
    raise WorkdirError(f"{workdir}: another run is using this workdir ({_describe(owner)}); wait for it to end or "
                       "choose another config.workdir") from None
  previous = _read_owner(fd)
  if previous:  # Its owner ended without releasing: killed, or the machine went down.
    logger.warning("%s: taking over the lock of a run that is gone (%s)", workdir, _describe(previous))
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(_owner()).encode())
  os.fsync(fd)
  return Lock(path, fd)


def _field(tree: dict, dotted: str):
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def config_differences(saved: dict, config) -> list[str]:
  """The IDENTITY_FIELDS whose value in `config` differs from the `saved` config dict, as "field: old -> new"."""
  current = defaults.redacted(config)
  return [f"{name}: {_field(saved, name)!r} -> {_field(current, name)!r}" for name in IDENTITY_FIELDS
          if _field(saved, name) != _field(current, name)]


def claim(config, source: str, allow_config_change: bool = False) -> Lock | None:
  """For a training mode: locks config.workdir, checks a saved config.json against `config` (WorkdirError listing
  the differences unless `allow_config_change`), then saves `config` there. Returns the lock (None for eval /
  export, which only read a workdir and claim nothing)."""
  if config.mode not in TRAINING_MODES:
    return None
  # Every host of a multi-host run runs the same command on the same (shared) workdir: no lock between them.
  held = Lock("", None) if config.mesh.distributed else lock(config.workdir)
  path = os.path.join(config.workdir, CONFIG_FILE)
  try:
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        try:
          saved = json.load(f)
        except json.JSONDecodeError:
          saved = None
      changes = config_differences(saved, config) if saved is not None else []
      if changes and not allow_config_change:
        raise WorkdirError(f"{config.workdir} holds another run ({path}); {source} differs in: "
                           f"{'; '.join(changes)}. Choose another config.workdir, or pass --allow_config_change to "
                           "continue this run with the new values")
      if changes:
        logger.warning("%s: continuing with a changed config (%s)", config.workdir, "; ".join(changes))
    defaults.save(config, path)
  except BaseException:
    held.release()
    raise
  return held
