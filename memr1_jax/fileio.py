"""Writing a file so that a reader, or a run killed mid-write, sees either the old file or the new one."""

from __future__ import annotations

import os
import pathlib


def write_atomic(path: str | pathlib.Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file, fsync and a rename: a reader sees the old file or the new one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
