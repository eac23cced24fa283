"""Persistent per-user memory banks: a snapshot file and a write-ahead log per user.

Layout under the store directory (docs/service.md):

  users/<user_id>/log.jsonl      one JSON line per change (an add's operations, a delete, an import), with the old and
                                 new text of each operation and a CRC; appended and fsynced before the change is
                                 acknowledged. Never rewritten: it is also the user's history.
  users/<user_id>/snapshot.json  the bank as of log record `seq` (entries, base64 float32 embeddings, next id),
                                 written atomically (`fileio.write_atomic`) every `snapshot_every` records and on close.

Opening a user reads the snapshot (none: an empty bank) and replays the log records after its `seq`. A torn last line
(a process killed inside the append) is cut off: that change was never acknowledged. Any other damage raises
`StoreError` naming the file.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
import re
import zlib
from collections.abc import Callable

import numpy as np

from memr1_jax import errors, fileio
from memr1_jax.memory.bank import MemoryBank, MemoryEntry, fill_banks
from memr1_jax.memory.operations import MemoryOp, OpKind

SNAPSHOT_FORMAT = "memr1_jax.service.snapshot"
SNAPSHOT_VERSION = 1
LOG_FILE = "log.jsonl"
SNAPSHOT_FILE = "snapshot.json"
# A user id: 1-128 characters of letters, digits and "_ - . @", starting with a letter or digit (so never "." or
# ".."; it names a directory of the store).
USER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")


class StoreError(errors.Error, RuntimeError):
  """A store file that cannot be read back (the message names it): damage that is not a torn last log line."""


class InvalidUserId(errors.Error, ValueError):
  """A user id the store refuses (it would not name one directory of the store)."""


def check_user_id(user_id: object) -> str:
  """`user_id` when it matches USER_ID_RE (1-128 of letters, digits, _ - . @; a letter or digit first), else
  InvalidUserId."""
  if not isinstance(user_id, str) or not USER_ID_RE.fullmatch(user_id):
    raise InvalidUserId(f"user id {user_id!r:.80}: expected 1-128 characters of letters, digits and '_-.@', "
                        "starting with a letter or digit")
  return user_id


@dataclasses.dataclass
class UserBank:
  """One user's open bank: the bank, the seq of the last log record in it and of the last snapshot."""

  user_id: str
  bank: MemoryBank
  seq: int = 0
  snapshot_seq: int = 0


def _crc(record: dict) -> int:
  return zlib.crc32(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def encode_record(record: dict) -> bytes:
  """One log line (UTF-8, newline-terminated) of `record` with its CRC."""
  return (json.dumps({**record, "crc": _crc(record)}, ensure_ascii=False) + "\n").encode("utf-8")


def _decode_record(line: bytes) -> dict | None:
  """The record of one log line, or None when it does not decode or its CRC differs."""
  try:
    record = json.loads(line.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
    return None
  crc = record.pop("crc", None)
  return record if crc == _crc(record) else None


def read_log(path: str, repair: bool = False) -> list[dict]:
  """The complete records of the log at `path` (none when absent). A last line that is torn (no newline, or bad JSON
  or CRC) is dropped, and with `repair` cut off the file so that the next append starts a clean line.

  Raises:
    StoreError: a damaged line before the last, or seqs that do not count up by one.
  """
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  records, offset, good_end = [], 0, 0
  lines = data.split(b"\n")  # The last piece is what follows the last newline: b"" or a torn line.
  last = len(lines) - 1 if lines[-1] else len(lines) - 2
  for i, line in enumerate(lines):
    record = _decode_record(line) if i < len(lines) - 1 else None
    if record is None and line:
      if i != last:
        raise StoreError(f"{path}: line {i + 1} is damaged (bad JSON or CRC) and is not the last; the log cannot be "
                         "replayed past it")
      break
    if record is not None:
      if record["seq"] != len(records) + 1:
        raise StoreError(f"{path}: line {i + 1} has seq {record['seq']}, expected {len(records) + 1}")
      records.append(record)
      good_end = offset + len(line) + 1
    offset += len(line) + 1
  if repair and good_end < len(data):
    with open(path, "r+b") as f:
      f.truncate(good_end)
      f.flush()
      os.fsync(f.fileno())
  return records


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def op_dict(kind: str, memory_id: int, text: str | None, speaker: str, old_text: str | None) -> dict:
  """One applied operation as logged and returned: kind, memory id, new and old text, speaker."""
  return {"kind": kind, "memory_id": int(memory_id), "text": text, "old_text": old_text, "speaker": speaker}


def entry_dict(entry: MemoryEntry) -> dict:
  """A memory as JSON: id, text, speaker, timestamp, source turn ids."""
  return {"memory_id": entry.memory_id, "text": entry.text, "speaker": entry.speaker, "timestamp": entry.timestamp,
          "source_turn_ids": list(entry.source_turn_ids)}


def _entry(raw: dict) -> MemoryEntry:
  return MemoryEntry(int(raw["memory_id"]), raw["text"], raw["speaker"], raw["timestamp"],
                     tuple(raw["source_turn_ids"]))


class BankStore:
  """Per-user banks under `root`, opened on first use and kept in memory; every change goes through `commit`.

  Args:
    root: the store directory (created when missing).
    bank_factory: makes an empty bank (the embedder, dim and index of every user's bank).
    encoder: the embedder's identity; a snapshot written with another is re-embedded when opened.
    snapshot_every: a user's snapshot is rewritten after this many log records (and on `close`).
  """

  def __init__(self, root: str, bank_factory: Callable[[], MemoryBank], *, encoder: str = "",
               snapshot_every: int = 32):
    if snapshot_every < 1:
      raise ValueError(f"BankStore: snapshot_every must be >= 1, got {snapshot_every}")
    self.root = os.path.abspath(root)
    self.bank_factory, self.encoder, self.snapshot_every = bank_factory, encoder, int(snapshot_every)
    os.makedirs(os.path.join(self.root, "users"), exist_ok=True)
    self._open: dict[str, UserBank] = {}

  def user_dir(self, user_id: str) -> str:
    """The directory of `user_id`'s files (InvalidUserId for an id the store refuses)."""
    return os.path.join(self.root, "users", check_user_id(user_id))

  def user(self, user_id: str) -> UserBank:
    """`user_id`'s bank (an empty one for a new user), opened from its snapshot and log on first use and kept open
    (a new user's only once `commit` has written its first record)."""
    found = self._open.get(user_id)
    if found is None:
      found = self._load(user_id)
      if os.path.isdir(self.user_dir(user_id)):
        self._open[user_id] = found
    return found

  def known_users(self) -> list[str]:
    """The ids of every user with files in the store, sorted."""
    return sorted(os.listdir(os.path.join(self.root, "users")))

  def evict(self, user_id: str) -> None:
    """Forgets the in-memory bank of `user_id` (after a failed change): the next use reopens it from disk."""
    self._open.pop(user_id, None)

  def records(self, user_id: str) -> list[dict]:
    """Every log record of `user_id`, oldest first (its history)."""
    return read_log(os.path.join(self.user_dir(user_id), LOG_FILE))

  def commit(self, user: UserBank, record: dict) -> dict:
    """Appends `record` (already applied to `user.bank`) to the user's log with the next seq and the time, fsyncs it,
    and rewrites the snapshot every `snapshot_every` records. Returns the record as logged. On an OSError the user's
    in-memory bank is evicted (it holds a change the log lacks) and the error raised."""
    record = {"seq": user.seq + 1, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(), **record}
    directory = self.user_dir(user.user_id)
    try:
      new = not os.path.isdir(directory)
      os.makedirs(directory, exist_ok=True)
      if new:
        _fsync_dir(os.path.dirname(directory))
      with open(os.path.join(directory, LOG_FILE), "ab") as f:
        f.write(encode_record(record))
        f.flush()
        os.fsync(f.fileno())
      if new:
        _fsync_dir(directory)
    except OSError:
      self.evict(user.user_id)
      raise
    user.seq = record["seq"]
    self._open[user.user_id] = user
    if user.seq - user.snapshot_seq >= self.snapshot_every:
      self.snapshot(user)
    return record

  def snapshot(self, user: UserBank) -> None:
    """Writes `user`'s bank as of its last record to its snapshot file (atomically)."""
    bank = user.bank
    entries = bank.entries()
    vecs_nd = (np.stack([bank.embedding(e.memory_id) for e in entries]) if entries
               else np.zeros((0, bank.dim), np.float32))
    payload = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "seq": user.seq, "next_id": bank.next_id,
               "encoder": self.encoder, "dim": bank.dim, "entries": [entry_dict(e) for e in entries],
               "embeddings": base64.b64encode(vecs_nd.astype("<f4").tobytes()).decode("ascii")}
    path = os.path.join(self.user_dir(user.user_id), SNAPSHOT_FILE)
    fileio.write_atomic(path, json.dumps(payload, ensure_ascii=False))
    user.snapshot_seq = user.seq

  def close(self) -> None:
    """Snapshots every open user with log records after its snapshot."""
    for user in self._open.values():
      if user.seq > user.snapshot_seq:
        self.snapshot(user)

  def _load(self, user_id: str) -> UserBank:
    directory = self.user_dir(user_id)
    user = self._read_snapshot(user_id, os.path.join(directory, SNAPSHOT_FILE))
    log_path = os.path.join(directory, LOG_FILE)
    records = read_log(log_path, repair=True)
    if len(records) < user.seq:
      raise StoreError(f"{log_path}: {len(records)} records, but the snapshot is at record {user.seq}")
    for record in records[user.seq:]:
      try:
        replay(user.bank, record)
      except (ValueError, TypeError, KeyError) as e:
        raise StoreError(f"{log_path}: record {record['seq']} does not replay onto the bank: {e}") from None
      user.seq = record["seq"]
    return user

  def _read_snapshot(self, user_id: str, path: str) -> UserBank:
    empty = self.bank_factory()
    if not os.path.exists(path):
      return UserBank(user_id, empty)
    try:
      with open(path, encoding="utf-8") as f:
        payload = json.load(f)
      if payload.get("format") != SNAPSHOT_FORMAT or payload.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"format/version {payload.get('format')!r}/{payload.get('version')!r}")
      entries = [_entry(raw) for raw in payload["entries"]]
      vecs_nd = None
      if payload["encoder"] == self.encoder and payload["dim"] == empty.dim:
        raw = base64.b64decode(payload["embeddings"], validate=True)
        vecs_nd = np.frombuffer(raw, "<f4").astype(np.float32).reshape(len(entries), empty.dim)
      bank = MemoryBank.restore(empty.embed_fn, empty.dim, entries, vecs_nd, payload["next_id"],
                                index=empty.index_kind, max_ops_per_call=empty.max_ops_per_call,
                                max_text_chars=empty.max_text_chars, scann_config=empty.scann_config)
    except (OSError, ValueError, TypeError, KeyError) as e:
      raise StoreError(f"{path}: cannot read the snapshot ({type(e).__name__}: {e})") from None
    seq = int(payload["seq"])
    return UserBank(user_id, bank, seq, seq)


def replay(bank: MemoryBank, record: dict) -> None:
  """Applies one log record to `bank` again, checking that each operation lands on the id it was logged with.

  Raises:
    ValueError: an operation that does not apply as logged (the log and the bank disagree).
  """
  if record["kind"] == "import":
    entries = [_entry(raw) for raw in record["entries"]]
    first = bank.next_id
    fill_banks([bank], [entries])
    if [e.memory_id for e in entries] != list(range(first, first + len(entries))):
      raise ValueError("imported ids differ from those logged")
    return
  for step in record["steps"]:
    ops = [MemoryOp(OpKind(op["kind"]), None if op["kind"] == "ADD" else op["memory_id"], op["text"], op["speaker"])
           for op in step["ops"]]
    results = bank.apply(ops, timestamp=step["timestamp"], source_turn_ids=step["turn_ids"])
    for op, result in zip(step["ops"], results):
      if not result.applied or result.memory_id != op["memory_id"]:
        raise ValueError(f"{op['kind']} of memory {op['memory_id']}: {result.error or f'got id {result.memory_id}'}")
