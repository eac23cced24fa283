"""A small batching queue in front of a `Memory`: concurrent calls of many users share engine calls.

Callers (the HTTP server's request handlers, on any thread) `submit` a call and get a future. One worker thread takes
the first waiting call, collects more for up to `window_s` (or until `max_batch`), then runs every add of the batch in
one `Memory.add_many` (users in lock step: one manager call per message index), every answer in one
`Memory.answer_many`, and the other calls (search, get_all, delete, ...) one by one. With `max_batch=1` calls run one
at a time, as without the queue. The worker is the only thread that touches the banks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time

logger = logging.getLogger(__name__)

# Calls that run one by one (the Memory method of the same name).
SINGLE_CALLS = ("search", "get_all", "delete", "history", "export", "import_", "stats")


@dataclasses.dataclass
class _Call:
  kind: str
  args: tuple
  future: concurrent.futures.Future


class Batcher:
  """Runs the calls of many threads on one worker thread, batching adds and answers.

  Args:
    memory: the `memr1_jax.service.api.Memory` served.
    window_s: how long the worker waits for more calls after the first of a batch.
    max_batch: calls per batch at most (1: no batching).
  """

  def __init__(self, memory, *, window_s: float = 0.005, max_batch: int = 64):
    if max_batch < 1 or window_s < 0:
      raise ValueError(f"Batcher: max_batch must be >= 1 and window_s >= 0, got {max_batch}, {window_s}")
    self.memory, self.window_s, self.max_batch = memory, float(window_s), int(max_batch)
    self.batches = 0  # Batches run so far (for tests and logs).
    self._queue: queue.Queue = queue.Queue()
    self._closed = False
    self._worker = threading.Thread(target=self._run, name="memr1-batcher", daemon=True)
    self._worker.start()

  def submit(self, kind: str, *args) -> concurrent.futures.Future:
    """Queues `memory.<kind>(*args)`: kind "add" takes an `AddRequest`, "answer" an `AnswerRequest`, the others
    (SINGLE_CALLS) the method's own arguments. Returns the future of its result."""
    if kind not in ("add", "answer") + SINGLE_CALLS:
      raise ValueError(f"Batcher.submit: unknown call {kind!r}")
    future: concurrent.futures.Future = concurrent.futures.Future()
    if self._closed:
      future.set_exception(RuntimeError("the service is shutting down"))
      return future
    self._queue.put(_Call(kind, args, future))
    return future

  def close(self) -> None:
    """Runs the calls already queued, then stops the worker."""
    self._closed = True
    self._queue.put(None)
    self._worker.join()

  def _collect(self) -> list[_Call] | None:
    first = self._queue.get()
    if first is None:
      return None
    batch = [first]
    deadline = time.monotonic() + self.window_s
    while len(batch) < self.max_batch:
      try:
        call = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
      except queue.Empty:
        break
      if call is None:
        self._queue.put(None)  # Stop after this batch.
        break
      batch.append(call)
    return batch

  def _run(self) -> None:
    while (batch := self._collect()) is not None:
      self.batches += 1
      for kind, method in (("add", self.memory.add_many), ("answer", self.memory.answer_many)):
        calls = [c for c in batch if c.kind == kind]
        if calls:
          _resolve(calls, lambda m=method, cs=calls: m([c.args[0] for c in cs]))
      for call in batch:
        if call.kind in SINGLE_CALLS:
          _resolve([call], lambda c=call: [getattr(self.memory, c.kind)(*c.args)])


def _resolve(calls: list[_Call], run) -> None:
  """Sets each call's future to its item of `run()`, or every future to the exception `run` raised."""
  try:
    results = run()
  except Exception as e:  # pylint: disable=broad-except  # Handed to the callers, who raise it.
    for call in calls:
      call.future.set_exception(e)
    return
  for call, result in zip(calls, results):
    call.future.set_result(result)
