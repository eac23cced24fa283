"""What machine a benchmark ran on, for its printed header (CPU results differ between CPU models)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
  """The CPU model with its family / model numbers (XLA's CPU results differ between CPU models)."""
  fields = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    return platform.processor() or platform.machine()
  return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}),"
          f" {os.cpu_count()} cores")
