"""What a run prints: quiet library logging, one progress bar per stage, bars of other processes drawn by this one.

At the default verbosity the INFO records of the libraries (orbax, absl, jax, transformers) are hidden, and this
package's own INFO records print as plain lines above the progress bars; `--verbose` shows every INFO record with
absl's prefix. Per-step metrics go to metrics.jsonl and TensorBoard (metrics_writer), not to the console.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from absl import logging as absl_logging
from tqdm import tqdm

# Set by `setup` so that spawned worker processes (the demo's parallel RL stages) log as their parent does.
VERBOSE_ENV = "MEMR1_VERBOSE"
_PACKAGE = "memr1_jax"


class _TqdmHandler(logging.Handler):
  """Writes records through tqdm.write, so a log line never cuts through a progress bar."""

  def emit(self, record):
    try:
      tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def setup(verbose: bool | None = None) -> None:
  """Configures logging for a run; `verbose=None` takes the choice of a parent process ($MEMR1_VERBOSE)."""
  if verbose is None:
    verbose = os.environ.get(VERBOSE_ENV) == "1"
  os.environ[VERBOSE_ENV] = "1" if verbose else "0"
  package = logging.getLogger(_PACKAGE)
  for handler in [h for h in package.handlers if isinstance(h, _TqdmHandler)]:
    package.removeHandler(handler)
  if verbose:
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger().setLevel(logging.INFO)
    package.setLevel(logging.NOTSET)
    package.propagate = True
    return
  # Before transformers is first imported: its import-time advice ("PyTorch was not found") and INFO records.
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)
  handler = _TqdmHandler()
  handler.setFormatter(logging.Formatter("%(levelname_short)s%(message)s", defaults={"levelname_short": ""}))
  handler.addFilter(_prefix_warnings)
  package.addHandler(handler)
  package.setLevel(logging.INFO)
  package.propagate = False


def _prefix_warnings(record) -> bool:
  """Marks WARNING and worse records ("warning: ...") on the plain console; INFO prints as is."""
  record.levelname_short = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
  return True


def bar(total: int, *, initial: int = 0, desc: str = "", position: int = 0, disable: bool = False):
  """A progress bar over `total` steps (`initial` already done) on stderr: a tqdm bar on a terminal; elsewhere (a log
  file, CI) a plain line at most every 30 s and one at the end. Both have update(n), set_postfix(dict), close()."""
  if not sys.stderr.isatty():
    return _LineBar(total, initial, desc, disable)
  return tqdm(total=total, initial=initial, desc=desc, unit="step", position=position, disable=disable,
              dynamic_ncols=True, leave=True, file=sys.stderr)


class _LineBar:
  """The progress of a stage as plain lines, for output that is not a terminal."""

  def __init__(self, total: int, initial: int, desc: str, disable: bool, every_s: float = 30.0):
    self.total, self.n, self.desc, self.disable, self.every_s = total, initial, desc, disable, every_s
    self.start = self.last = time.monotonic()
    self.postfix = {}

  def _print(self) -> None:
    now = time.monotonic()
    self.last = now
    postfix = "".join(f", {k}={v}" for k, v in self.postfix.items())
    tqdm.write(f"{self.desc}: {self.n}/{self.total} steps, {now - self.start:.0f} s{postfix}", file=sys.stderr)

  def update(self, n: int = 1) -> None:
    self.n += n
    if not self.disable and time.monotonic() - self.last >= self.every_s and self.n < self.total:
      self._print()

  def set_postfix(self, postfix: dict | None = None, refresh: bool = True, **kwargs) -> None:
    del refresh
    self.postfix = {**(postfix or {}), **kwargs}

  def close(self) -> None:
    if not self.disable:
      self._print()
      self.disable = True


class QueueBar:
  """A progress bar whose updates travel through a queue to the process that draws it (`BarRenderer`).

  Picklable (a multiprocessing.Manager queue and a key), so a spawned worker can hold one; the same methods as the
  tqdm bars the training loops use: update, set_postfix, close.
  """

  def __init__(self, queue, key: int):
    self.queue, self.key = queue, key

  def __call__(self, total: int, *, initial: int = 0, desc: str = "", position: int = 0, disable: bool = False):
    del position  # The renderer places each key's bar.
    if not disable:
      self.queue.put((self.key, "open", (total, initial, desc)))
    return _QueueBarHandle(self.queue, self.key, disable)


class _QueueBarHandle:

  def __init__(self, queue, key, disable):
    self.queue, self.key, self.disable = queue, key, disable

  def update(self, n: int = 1) -> None:
    if not self.disable:
      self.queue.put((self.key, "update", n))

  def set_postfix(self, postfix: dict, refresh: bool = True) -> None:
    del refresh  # The renderer redraws on the next update.
    if not self.disable:
      self.queue.put((self.key, "postfix", dict(postfix)))

  def close(self) -> None:
    if not self.disable:
      self.queue.put((self.key, "close", None))


class BarRenderer:
  """Draws the bars of `QueueBar`s (one line each, by key) from a thread of this process until `stop`."""

  def __init__(self, queue):
    self.queue = queue
    self.bars: dict[int, tqdm] = {}
    self.thread = threading.Thread(target=self._loop, daemon=True)
    self.thread.start()

  def _loop(self):
    while True:
      key, event, value = self.queue.get()
      if event == "stop":
        return
      if event == "open":
        total, initial, desc = value
        self.bars[key] = bar(total, initial=initial, desc=desc, position=key)
      elif key in self.bars:
        b = self.bars[key]
        if event == "update":
          b.update(value)
        elif event == "postfix":
          b.set_postfix(value, refresh=False)
        else:
          b.close()

  def stop(self) -> None:
    """Waits for the queued updates, then closes every bar in line order."""
    self.queue.put((None, "stop", None))
    self.thread.join()
    for key in sorted(self.bars):
      self.bars[key].close()
