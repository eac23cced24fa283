"""Memory-mapped safetensors reading and writing (no torch, no pickle).

A checkpoint directory holds one `model.safetensors` or several shards listed in `model.safetensors.index.json`.
Tensors are returned as read-only numpy memmaps, so a sharded load copies only each device's slice.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np

from memr1_jax.models.config import CheckpointError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def _read_header(fname: str) -> tuple[dict, int]:
  size = os.path.getsize(fname)
  with open(fname, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointError(f"{fname}: truncated safetensors file (no header)")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
      raise CheckpointError(f"{fname}: truncated safetensors file (header of {n} bytes, file of {size})")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{fname}: corrupt safetensors header ({e})") from None
  header.pop("__metadata__", None)
  return header, 8 + n


class SafetensorsFile:
  """One memory-mapped safetensors file: `names()`, `shape(name)`, `get(name) -> np.ndarray` (a memmap view)."""

  def __init__(self, fname: str):
    self.fname = fname
    self.header, self.data_start = _read_header(fname)
    self._mm = None
    data_size = os.path.getsize(fname) - self.data_start
    cut = sorted(name for name, info in self.header.items() if info["data_offsets"][1] > data_size)
    if cut:
      raise CheckpointError(f"{fname}: truncated safetensors file (tensors {cut[:5]} end past the end of the file)")

  def names(self) -> list[str]:
    return list(self.header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    dtype = _DTYPES.get(info["dtype"])
    if dtype is None:
      raise CheckpointError(f"{self.fname}: tensor {name!r} has unsupported dtype {info['dtype']}")
    if self._mm is None:
      self._mm = np.memmap(self.fname, dtype=np.uint8, mode="r")
    start, end = info["data_offsets"]
    buf = self._mm[self.data_start + start:self.data_start + end]
    return buf.view(dtype).reshape(info["shape"])


class CheckpointReader:
  """All tensors of a Hugging Face checkpoint directory (single file or index + shards), memory-mapped."""

  def __init__(self, path: str):
    self.path = path
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: malformed index file ({e!r})") from None
      files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
      files, weight_map = ["model.safetensors"], None
    else:
      pickles = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))] if os.path.isdir(path) else []
      hint = f" (found {pickles}: pickle checkpoints are not loaded; convert them to safetensors)" if pickles else ""
      raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")
    self.files: dict[str, SafetensorsFile] = {}
    for fn in files:
      full = os.path.join(path, fn)
      if not os.path.exists(full):
        raise CheckpointError(f"{full}: shard listed in model.safetensors.index.json is missing")
      self.files[fn] = SafetensorsFile(full)
    self._where = {}
    for fn, f in self.files.items():
      for name in f.names():
        self._where[name] = f
    if weight_map is not None:
      missing = [n for n in weight_map if n not in self._where]
      if missing:
        raise CheckpointError(f"{path}: tensors {missing[:5]} listed in the index are absent from their shard files")

  def names(self) -> list[str]:
    return list(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def file_of(self, name: str) -> str:
    return self._where[name].fname

  def get(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise CheckpointError(f"{self.path}: tensor {name!r} not found in the checkpoint")
    return self._where[name].get(name)


def write_safetensors(fname: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` (numpy, any supported dtype) to `fname` in the safetensors format, atomically."""
  header: dict = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  items = sorted(tensors.items())
  for name, arr in items:
    dt = np.dtype(arr.dtype)
    if dt not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {dt} cannot be written to safetensors")
    nbytes = arr.size * dt.itemsize
    header[name] = {"dtype": _NAMES[dt], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  tmp = fname + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for _, arr in items:
      f.write(np.ascontiguousarray(arr).tobytes())
  os.replace(tmp, fname)


def iter_shards(tensors: dict[str, np.ndarray], max_shard_bytes: int) -> Iterator[dict[str, np.ndarray]]:
  """Splits `tensors` into consecutive groups of at most `max_shard_bytes` (a tensor larger than that stands alone)."""
  group, size = {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if group and size + nbytes > max_shard_bytes:
      yield group
      group, size = {}, 0
    group[name] = tensors[name]
    size += nbytes
  if group:
    yield group
