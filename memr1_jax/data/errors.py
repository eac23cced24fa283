"""Reporting malformed dataset files: one error type that names the file, the record and the field.

The readers load files through `load_json` / `load_jsonl` and pull fields through `require` /
`optional`, so every structural problem surfaces as a `DataFormatError` such as
`locomo10.json: record #3 (sample_id 'conv-43'): field 'qa[5].question': missing`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from memr1_jax import errors

_MISSING = object()


class DataFormatError(errors.Error, ValueError):
  """A dataset file without the expected structure; `path`, `record` and `field` say where."""

  def __init__(self, path: str | os.PathLike[str], record: str, field: str, problem: str):
    self.path = os.fspath(path)
    self.record = record
    self.field = field
    self.problem = problem
    super().__init__(f"{self.path}: record {record}: field {field!r}: {problem}")


@dataclasses.dataclass(frozen=True)
class RecordRef:
  """Where a record sits: its file and a human-readable record label (index and id)."""

  path: str
  record: str

  def error(self, field: str, problem: str) -> DataFormatError:
    """Returns a `DataFormatError` for `field` of this record."""
    return DataFormatError(self.path, self.record, field, problem)


_JSON_NAMES = {dict: "object", list: "list", str: "string", int: "integer", float: "number",
               bool: "boolean"}


def _type_names(kinds: type | tuple[type, ...]) -> str:
  kinds = kinds if isinstance(kinds, tuple) else (kinds,)
  return " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)


def check_type(value: Any, kinds: type | tuple[type, ...], ref: RecordRef, field: str) -> Any:
  """Returns `value` if it is one of `kinds` (a bool is not accepted as a number); else raises."""
  kinds_tuple = kinds if isinstance(kinds, tuple) else (kinds,)
  is_bad_bool = isinstance(value, bool) and bool not in kinds_tuple
  if not isinstance(value, kinds_tuple) or is_bad_bool:
    raise ref.error(field, f"expected {_type_names(kinds)}, got {type(value).__name__}")
  return value


def optional(obj: Any, key: str, kinds: type | tuple[type, ...], ref: RecordRef, prefix: str = "",
             default: Any = None) -> Any:
  """Returns `obj[key]` checked against `kinds`, or `default` when the key is absent.

  `prefix` is the path of `obj` inside the record (e.g. "qa[5]."), used in error messages.
  """
  if not isinstance(obj, dict):
    raise ref.error(prefix.rstrip(".") or "<record>", f"expected object, got {type(obj).__name__}")
  if key not in obj:
    return default
  return check_type(obj[key], kinds, ref, prefix + key)


def require(obj: Any, key: str, kinds: type | tuple[type, ...], ref: RecordRef,
            prefix: str = "") -> Any:
  """Returns `obj[key]` checked against `kinds`; raises `DataFormatError` when it is missing."""
  value = optional(obj, key, kinds, ref, prefix, default=_MISSING)
  if value is _MISSING:
    raise ref.error(prefix + key, "missing")
  return value


def read_text(path: str | os.PathLike[str]) -> str:
  """The file's text; bytes that are not UTF-8 become a `DataFormatError` naming the file and the byte offset."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as err:
    raise DataFormatError(path, "<file>", "<encoding>", f"not UTF-8 text (byte {err.start}: "
                          f"{data[err.start:err.start + 1]!r}); save it as UTF-8") from None


def load_json(path: str | os.PathLike[str]) -> Any:
  """Parses a JSON file; a syntax error (e.g. a truncated file) becomes a `DataFormatError`."""
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as err:
    problem = f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
    raise DataFormatError(path, "<file>", "<json>", problem) from err


def load_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, Any]]:
  """Parses a JSON-lines file; returns (line number from 1, value) for each non-blank line."""
  records = []
  # Split on "\n" only: str.splitlines would also split inside strings holding U+2028 and the like.
  for line_number, line in enumerate(read_text(path).split("\n"), start=1):
    if not line.strip():
      continue
    try:
      records.append((line_number, json.loads(line)))
    except json.JSONDecodeError as err:
      raise DataFormatError(path, f"line {line_number}", "<json>",
                            f"invalid JSON at column {err.colno}: {err.msg}") from err
  return records
