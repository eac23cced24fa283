"""Memory operations: the structured output of the Memory Manager.

A manager response is parsed into a list of `MemoryOp`; `MemoryBank.apply` carries them out.
"""

from __future__ import annotations

import dataclasses
import enum


class OpKind(str, enum.Enum):
  """The four operations of the Memory-R1 manager."""

  ADD = "ADD"
  UPDATE = "UPDATE"
  DELETE = "DELETE"
  NOOP = "NOOP"


@dataclasses.dataclass(frozen=True)
class MemoryOp:
  """One operation on a memory bank.

  Attributes:
    kind: ADD / UPDATE / DELETE / NOOP.
    memory_id: target entry id for UPDATE / DELETE (None for ADD / NOOP).
    text: the new memory text for ADD / UPDATE (None for DELETE / NOOP).
    speaker: whose memory this is ("" when the bank is not split by speaker).
  """

  kind: OpKind
  memory_id: int | None = None
  text: str | None = None
  speaker: str = ""


NOOP = MemoryOp(OpKind.NOOP)
