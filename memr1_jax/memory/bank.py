"""The memory bank: entries with embeddings in one vector index per speaker.

A `MemoryBank` holds the memories of one conversation. It carries out the Memory Manager's
ADD / UPDATE / DELETE / NOOP operations (`apply` never raises on a bad operation: it records why
the operation was not applied), answers top-k searches per speaker or over all speakers, and
saves to / loads from a directory (JSON + .npy, no pickle).

Each speaker's memories live in their own index (`ScannIndex` or the exact `ExactIndex`), so a
per-speaker search is exact in what it may return; a search over all speakers merges the
per-speaker top-k lists, which is the same top-k as one index over everything. Ranking is by
inner product of the L2-normalised embeddings (cosine), best first, ties broken by smaller id.

Memory ids count up from 0 and are never reused, so an id that a model remembers from an earlier
prompt can never silently point at a different memory after a DELETE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from memr1_jax.memory.index import ExactIndex, ScannConfig, ScannIndex, top_k_by_score
from memr1_jax.memory.operations import MemoryOp, OpKind

EmbedFn = Callable[[Sequence[str]], np.ndarray]
"""texts -> float32 [N, dim] L2-normalised embeddings."""

INDEX_KINDS = ("scann", "brute_force")
FORMAT = "memr1_jax.memory_bank"
FORMAT_VERSION = 1
BANK_FILE = "bank.json"
EMBEDDINGS_FILE = "embeddings.npy"


@dataclasses.dataclass(frozen=True)
class MemoryEntry:
  """One memory: its id, text, whose it is, when it was written and the turns it came from."""

  memory_id: int
  text: str
  speaker: str
  timestamp: str
  source_turn_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class OpResult:
  """What `MemoryBank.apply` did with one operation.

  Attributes:
    op: the operation as given (possibly malformed).
    applied: True when the bank now reflects the operation (always for a well-formed NOOP).
    memory_id: the id added / updated / deleted (None for NOOP and rejected operations).
    error: why the operation was not applied (None when applied).
    truncated: the text was longer than the bank's `max_text_chars` and was cut to it.
  """

  op: Any
  applied: bool
  memory_id: int | None = None
  error: str | None = None
  truncated: bool = False


Hit = tuple[MemoryEntry, float]


@dataclasses.dataclass(frozen=True)
class _Step:
  """A checked operation, ready to carry out (`speaker` None: UPDATE keeps the entry's speaker)."""

  op: Any
  kind: OpKind
  memory_id: int | None
  text: str | None
  speaker: str | None
  truncated: bool


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class MemoryBank:
  """Memories of one conversation with a vector index per speaker.

  Args:
    embed_fn: texts -> float32 [N, dim] L2-normalised embeddings; called once per `apply` /
      `search` with all the texts of that call.
    dim: embedding size.
    index: "scann" (ScaNN, brute force when small, tree-AH when large) or "brute_force" (exact
      numpy).
    max_ops_per_call: `apply` carries out at most this many operations; the rest are rejected.
    max_text_chars: memory texts longer than this are cut to this many characters.
    scann_config: build / search settings of the ScaNN indexes.
  """

  def __init__(self, embed_fn: EmbedFn, dim: int, *, index: str = "scann",
               max_ops_per_call: int = 64, max_text_chars: int = 2000,
               scann_config: ScannConfig | None = None):
    if index not in INDEX_KINDS:
      raise ValueError(f"MemoryBank: index must be one of {INDEX_KINDS}, got {index!r}")
    if not _is_int(dim) or dim < 1:
      raise ValueError(f"MemoryBank: dim must be a positive int, got {dim!r}")
    if not _is_int(max_ops_per_call) or max_ops_per_call < 0:
      raise ValueError(
          f"MemoryBank: max_ops_per_call must be an int >= 0, got {max_ops_per_call!r}")
    if not _is_int(max_text_chars) or max_text_chars < 1:
      raise ValueError(f"MemoryBank: max_text_chars must be an int >= 1, got {max_text_chars!r}")
    self.embed_fn = embed_fn
    self.dim = int(dim)
    self.index_kind = index
    self.max_ops_per_call = int(max_ops_per_call)
    self.max_text_chars = int(max_text_chars)
    self.scann_config = scann_config or ScannConfig()
    self._entries: dict[int, MemoryEntry] = {}
    self._indexes: dict[str, ExactIndex | ScannIndex] = {}
    self._next_id = 0

  # Reading.

  def __len__(self) -> int:
    return len(self._entries)

  def __contains__(self, memory_id: object) -> bool:
    return memory_id in self._entries

  @property
  def next_id(self) -> int:
    """The id the next ADD will get (ids are never reused)."""
    return self._next_id

  def get(self, memory_id: int) -> MemoryEntry | None:
    """The entry with `memory_id`, or None when there is none (never was, or deleted)."""
    return self._entries.get(memory_id)

  def entries(self, speaker: str | None = None) -> list[MemoryEntry]:
    """All live entries (of `speaker` only, when given) in id order."""
    return [e for _, e in sorted(self._entries.items()) if speaker is None or e.speaker == speaker]

  def speakers(self) -> list[str]:
    """The speakers that have at least one memory, sorted."""
    return sorted(self._indexes)

  def embedding(self, memory_id: int) -> np.ndarray:
    """A copy of the float32 [dim] embedding of `memory_id` (KeyError when absent)."""
    entry = self._entries[memory_id]
    return self._indexes[entry.speaker].table.vector(memory_id)

  def index_of(self, speaker: str) -> ExactIndex | ScannIndex | None:
    """The vector index of `speaker`'s memories (None when the speaker has none)."""
    return self._indexes.get(speaker)

  # Changing.

  def add(self, text: str, speaker: str = "", timestamp: str = "",
          source_turn_ids: Sequence[str] = ()) -> int:
    """Adds a memory and returns its new id; `text` is cut to `max_text_chars`.

    Raises:
      ValueError / TypeError: empty or non-string text, non-string speaker / timestamp.
    """
    text, _ = self._checked_text(text)
    _check_str(speaker, "speaker")
    _check_str(timestamp, "timestamp")
    turns = _turn_ids(source_turn_ids)
    (vec_d,) = self._embed([text])
    return self._insert(text, speaker, timestamp, turns, vec_d)

  def update(self, memory_id: int, text: str, *, speaker: str | None = None,
             timestamp: str | None = None, source_turn_ids: Sequence[str] = ()) -> None:
    """Replaces the text (and re-embeds) of `memory_id`, keeping the id.

    `speaker` / `timestamp` replace the entry's when given; `source_turn_ids` are appended to the
    entry's (without repeats).

    Raises:
      KeyError: no live memory has `memory_id`.
      ValueError / TypeError: empty or non-string text.
    """
    if memory_id not in self._entries:
      raise KeyError(f"MemoryBank.update: no memory with id {memory_id!r}")
    text, _ = self._checked_text(text)
    if speaker is not None:
      _check_str(speaker, "speaker")
    if timestamp is not None:
      _check_str(timestamp, "timestamp")
    turns = _turn_ids(source_turn_ids)
    (vec_d,) = self._embed([text])
    self._replace(memory_id, text, speaker, timestamp, turns, vec_d)

  def delete(self, memory_id: int) -> None:
    """Removes `memory_id` from the bank and its index (KeyError when absent)."""
    if memory_id not in self._entries:
      raise KeyError(f"MemoryBank.delete: no memory with id {memory_id!r}")
    self._remove(memory_id)

  def apply(self, ops: Sequence[MemoryOp], *, timestamp: str = "",
            source_turn_ids: Sequence[str] = ()) -> list[OpResult]:
    """Carries out Memory Manager operations in order; never raises on a bad operation.

    UPDATE / DELETE may target only memories that were live before this call and not deleted
    earlier in it. Rejected (with `error` set): anything that is not a `MemoryOp`, an unknown
    kind, a missing / non-int / unknown id, empty or non-string text, a non-string speaker, and
    every operation after the first `max_ops_per_call`. ADD ignores `memory_id`; UPDATE keeps the
    entry's speaker unless the op names one. All texts of the call are embedded in one batch.

    Args:
      ops: the parsed operations.
      timestamp: written on ADDed and UPDATEd entries ("" keeps an UPDATEd entry's timestamp).
      source_turn_ids: the dialogue turns these operations came from.

    Returns:
      One `OpResult` per operation, in order.
    """
    if not isinstance(ops, (list, tuple)):
      raise TypeError(f"MemoryBank.apply: ops must be a list or tuple, got {type(ops).__name__}")
    _check_str(timestamp, "timestamp")
    turns = _turn_ids(source_turn_ids)
    plan = self._plan(ops)
    vecs_nd = self._embed(_plan_texts(plan))
    return self._execute(plan, vecs_nd, timestamp, turns)

  # Searching.

  def search(self, query: str | Sequence[str], k: int,
             speaker: str | None = None) -> list[list[Hit]]:
    """Top-k memories for each query text.

    Args:
      query: one text or a sequence of texts (embedded together in one call).
      k: memories per query (fewer when the bank holds fewer).
      speaker: search only this speaker's memories; None searches all.

    Returns:
      Per query, a list of (entry, score) with score the inner product of the embeddings, best
      first, ties broken by smaller id.
    """
    queries = [query] if isinstance(query, str) else list(query)
    for i, q in enumerate(queries):
      if not isinstance(q, str):
        raise TypeError(f"MemoryBank.search: query[{i}] is {type(q).__name__}, not str")
    _check_k(k)
    if not self._searched_indexes(speaker) or k == 0:
      return [[] for _ in queries]
    return self.search_by_vector(self._embed(queries), k, speaker)

  def search_by_vector(self, queries: np.ndarray, k: int,
                       speaker: str | None = None) -> list[list[Hit]]:
    """Like `search`, for float32 [Q, dim] (or one [dim]) query embeddings."""
    queries_qd = np.asarray(queries, np.float32)
    if queries_qd.ndim == 1:
      queries_qd = queries_qd[None, :]
    if queries_qd.ndim != 2 or queries_qd.shape[1] != self.dim:
      raise ValueError(f"MemoryBank.search_by_vector: queries must be [Q, {self.dim}], "
                       f"got {queries_qd.shape}")
    _check_k(k)
    indexes = self._searched_indexes(speaker)
    if not indexes or k == 0:
      return [[] for _ in range(len(queries_qd))]
    parts = [index.search(queries_qd, k) for index in indexes]
    ids_qc = np.concatenate([ids for ids, _ in parts], axis=1)
    scores_qc = np.concatenate([scores for _, scores in parts], axis=1)
    ids_qk, scores_qk = top_k_by_score(ids_qc, scores_qc, k)
    return [[(self._entries[i], float(s))
             for i, s in zip(row_ids.tolist(), row_scores.tolist()) if i >= 0]
            for row_ids, row_scores in zip(ids_qk, scores_qk)]

  def fork(self) -> MemoryBank:
    """An independent copy with exact (numpy) indexes and the same entries, ids and embeddings; no re-embedding.

    For short-lived branches (one per sampled manager response): cheap to make, exact to search.
    """
    bank = MemoryBank(self.embed_fn, self.dim, index="brute_force", max_ops_per_call=self.max_ops_per_call,
                      max_text_chars=self.max_text_chars, scann_config=self.scann_config)
    bank._entries = dict(self._entries)
    bank._next_id = self._next_id
    for speaker, index in self._indexes.items():
      bank._indexes[speaker] = ExactIndex.from_vectors(self.dim, index.table.ids.copy(), index.table.vectors.copy())
    return bank

  # Saving.

  def save(self, directory: str) -> None:
    """Writes the bank to `directory` (replacing it): bank.json, embeddings.npy, index_<i>/.

    Everything is written to a temporary sibling directory first, then renamed into place (an
    existing directory is first renamed aside, so a crash between the two renames leaves the
    old copy as a `.<name>.old-*` sibling rather than a half-written bank).
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
      speakers = self.speakers()
      meta = {
          "format": FORMAT, "version": FORMAT_VERSION, "dim": self.dim, "index": self.index_kind,
          "max_ops_per_call": self.max_ops_per_call, "max_text_chars": self.max_text_chars,
          "scann_config": self.scann_config.to_json(), "next_id": self._next_id,
          "entries": [dataclasses.asdict(e) for e in self.entries()],
          "indexes": [{"speaker": s, "ids": self._indexes[s].table.ids.tolist()} for s in speakers],
      }
      with open(os.path.join(tmp, BANK_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)
      rows = [self._indexes[s].table.vectors for s in speakers]
      vecs_nd = np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)
      np.save(os.path.join(tmp, EMBEDDINGS_FILE), vecs_nd, allow_pickle=False)
      for i, s in enumerate(speakers):
        index_dir = os.path.join(tmp, f"index_{i}")
        os.makedirs(index_dir)
        self._indexes[s].save(index_dir)
      if os.path.exists(directory):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
        os.rmdir(old)
        os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old)
      else:
        os.rename(tmp, directory)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise

  @classmethod
  def load(cls, directory: str, embed_fn: EmbedFn) -> MemoryBank:
    """The bank that `save` wrote to `directory`, searching with `embed_fn` from now on.

    Raises:
      ValueError: a missing or malformed file or field (the message names the file and field).
    """
    path = os.path.join(directory, BANK_FILE)
    try:
      with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: cannot read the bank: {e}") from e
    if not isinstance(meta, dict):
      raise ValueError(f"{path}: expected a JSON object")
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
      raise ValueError(f"{path}: fields 'format'/'version' must be {FORMAT!r}/{FORMAT_VERSION}, "
                       f"got {meta.get('format')!r}/{meta.get('version')!r}")
    scann_fields = _field(meta, "scann_config", dict, path)
    try:
      bank = cls(embed_fn, _field(meta, "dim", int, path), index=_field(meta, "index", str, path),
                 max_ops_per_call=_field(meta, "max_ops_per_call", int, path),
                 max_text_chars=_field(meta, "max_text_chars", int, path),
                 scann_config=ScannConfig.from_json(scann_fields, "field 'scann_config'"))
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e
    bank._next_id = _field(meta, "next_id", int, path)
    for i, raw in enumerate(_field(meta, "entries", list, path)):
      entry = _entry_from_json(raw, f"{path}: entries[{i}]")
      if entry.memory_id in bank._entries or not 0 <= entry.memory_id < bank._next_id:
        raise ValueError(f"{path}: entries[{i}].memory_id {entry.memory_id} is repeated or "
                         "not below next_id")
      bank._entries[entry.memory_id] = entry
    emb_path = os.path.join(directory, EMBEDDINGS_FILE)
    try:
      vecs_nd = np.load(emb_path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{emb_path}: cannot read the embeddings: {e}") from e
    if vecs_nd.dtype != np.float32 or vecs_nd.shape != (len(bank._entries), bank.dim):
      raise ValueError(f"{emb_path}: expected float32 [{len(bank._entries)}, {bank.dim}], "
                       f"got {vecs_nd.dtype} {vecs_nd.shape}")
    start, seen = 0, set()
    for i, raw in enumerate(_field(meta, "indexes", list, path)):
      where = f"{path}: indexes[{i}]"
      if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object")
      speaker = _field(raw, "speaker", str, where)
      ids = _field(raw, "ids", list, where)
      for memory_id in ids:
        entry = bank._entries.get(memory_id) if _is_int(memory_id) else None
        if entry is None or entry.speaker != speaker or memory_id in seen:
          raise ValueError(f"{where}.ids: id {memory_id!r} is not an entry of speaker "
                           f"{speaker!r} or is repeated")
        seen.add(memory_id)
      ids_n = np.asarray(ids, np.int64)
      rows_nd = vecs_nd[start:start + len(ids)]
      start += len(ids)
      index_dir = os.path.join(directory, f"index_{i}")
      bank._indexes[speaker] = bank._restore_index(ids_n, rows_nd, index_dir)
    if seen != set(bank._entries):
      raise ValueError(f"{path}: field 'indexes' does not cover every entry exactly once")
    return bank

  @classmethod
  def restore(cls, embed_fn: EmbedFn, dim: int, entries: Sequence[MemoryEntry], vectors: np.ndarray | None,
              next_id: int, **kwargs) -> MemoryBank:
    """A bank holding `entries` under their own ids, with float32 [N, dim] `vectors` (None: embedded in one call)
    and ids counting on from `next_id`; `kwargs` as the constructor's. For snapshots kept outside `save`.

    Raises:
      ValueError: a repeated id, an id not below `next_id`, vectors of another shape, or an entry `add` refuses.
    """
    bank = cls(embed_fn, dim, **kwargs)
    entries = list(entries)
    ids = [e.memory_id for e in entries]
    if len(set(ids)) != len(ids) or not all(_is_int(i) and 0 <= i < next_id for i in ids):
      raise ValueError(f"MemoryBank.restore: memory ids must be distinct ints in [0, next_id={next_id})")
    for e in entries:
      bank._checked_text(e.text)
      _check_str(e.speaker, "speaker")
      _check_str(e.timestamp, "timestamp")
    vecs_nd = bank._embed([e.text for e in entries]) if vectors is None else np.asarray(vectors, np.float32)
    if vecs_nd.shape != (len(entries), bank.dim):
      raise ValueError(f"MemoryBank.restore: vectors must be [{len(entries)}, {bank.dim}], got {vecs_nd.shape}")
    for entry, vec_d in zip(entries, vecs_nd):
      bank._next_id = entry.memory_id
      bank._insert(entry.text, entry.speaker, entry.timestamp, _turn_ids(entry.source_turn_ids), vec_d)
    bank._next_id = int(next_id)
    return bank

  # Internals.

  def _new_index(self) -> ExactIndex | ScannIndex:
    if self.index_kind == "scann":
      return ScannIndex(self.dim, self.scann_config)
    return ExactIndex(self.dim)

  def _restore_index(self, ids_n: np.ndarray, rows_nd: np.ndarray,
                     index_dir: str) -> ExactIndex | ScannIndex:
    if self.index_kind == "scann":
      return ScannIndex.restore(self.dim, ids_n, rows_nd, index_dir, self.scann_config)
    return ExactIndex.restore(self.dim, ids_n, rows_nd, index_dir)

  def _searched_indexes(self, speaker: str | None) -> list[ExactIndex | ScannIndex]:
    if speaker is None:
      return [self._indexes[s] for s in sorted(self._indexes)]
    index = self._indexes.get(speaker)
    return [] if index is None else [index]

  def _embed(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [N, dim] embeddings of `texts`, checked (embed_fn is not called for no texts)."""
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    vecs_nd = np.asarray(self.embed_fn(list(texts)), dtype=np.float32)
    if vecs_nd.shape != (len(texts), self.dim):
      raise ValueError(f"embed_fn returned shape {vecs_nd.shape} for {len(texts)} texts; "
                       f"expected ({len(texts)}, {self.dim})")
    if not np.all(np.isfinite(vecs_nd)):
      raise ValueError("embed_fn returned non-finite values")
    return vecs_nd

  def _checked_text(self, text: Any) -> tuple[str, bool]:
    """(text cut to max_text_chars, whether it was cut); TypeError / ValueError when unusable."""
    if not isinstance(text, str):
      raise TypeError(f"memory text must be a str, got {type(text).__name__}")
    if not text.strip():
      raise ValueError("memory text is empty")
    return text[:self.max_text_chars], len(text) > self.max_text_chars

  def _insert(self, text: str, speaker: str, timestamp: str, source_turn_ids: tuple[str, ...],
              vec_d: np.ndarray) -> int:
    memory_id = self._next_id
    index = self._indexes.get(speaker)
    if index is None:
      index = self._indexes[speaker] = self._new_index()
    index.upsert(memory_id, vec_d)
    self._next_id += 1
    self._entries[memory_id] = MemoryEntry(memory_id, text, speaker, timestamp, source_turn_ids)
    return memory_id

  def _replace(self, memory_id: int, text: str, speaker: str | None, timestamp: str | None,
               source_turn_ids: tuple[str, ...], vec_d: np.ndarray) -> None:
    old = self._entries[memory_id]
    speaker = old.speaker if speaker is None else speaker
    if speaker != old.speaker:
      self._remove(memory_id)
      index = self._indexes.get(speaker)
      if index is None:
        index = self._indexes[speaker] = self._new_index()
    else:
      index = self._indexes[speaker]
    index.upsert(memory_id, vec_d)
    merged_turns = old.source_turn_ids + tuple(t for t in dict.fromkeys(source_turn_ids)
                                               if t not in old.source_turn_ids)
    stamp = old.timestamp if timestamp is None else timestamp
    self._entries[memory_id] = MemoryEntry(memory_id, text, speaker, stamp, merged_turns)

  def _remove(self, memory_id: int) -> None:
    speaker = self._entries.pop(memory_id).speaker
    index = self._indexes[speaker]
    index.delete(memory_id)
    if not len(index):
      del self._indexes[speaker]

  def _plan(self, ops: Sequence[Any]) -> list[_Step | OpResult]:
    """Checks every operation against the bank as it will be when the operation runs."""
    live = set(self._entries)
    plan: list[_Step | OpResult] = []
    for i, op in enumerate(ops):
      if i >= self.max_ops_per_call:
        cap_error = f"over the cap of {self.max_ops_per_call} operations per call"
        plan.append(OpResult(op, False, error=cap_error))
        continue
      step = self._check_op(op, live)
      if isinstance(step, _Step) and step.kind == OpKind.DELETE:
        live.discard(step.memory_id)
      plan.append(step)
    return plan

  def _check_op(self, op: Any, live: set[int]) -> _Step | OpResult:
    """A `_Step` for a usable operation, else the rejecting `OpResult`."""
    if not isinstance(op, MemoryOp):
      return OpResult(op, False, error=f"not a MemoryOp: {type(op).__name__}")
    kind = op.kind
    if not isinstance(kind, OpKind):
      try:
        kind = OpKind(kind)
      except ValueError:
        return OpResult(op, False, error=f"unknown operation kind {op.kind!r}")
    if kind == OpKind.NOOP:
      return _Step(op, kind, None, None, None, False)
    speaker = "" if op.speaker is None else op.speaker
    if not isinstance(speaker, str):
      return OpResult(op, False,
                      error=f"{kind.value}: speaker is {type(speaker).__name__}, not str")
    memory_id = None
    if kind in (OpKind.UPDATE, OpKind.DELETE):
      if not _is_int(op.memory_id):
        return OpResult(op, False, error=f"{kind.value}: memory_id {op.memory_id!r} is not an int")
      memory_id = int(op.memory_id)
      if memory_id not in live:
        return OpResult(op, False, error=f"{kind.value}: no memory with id {memory_id}")
      if kind == OpKind.DELETE:
        return _Step(op, kind, memory_id, None, None, False)
    try:
      text, truncated = self._checked_text(op.text)
    except (TypeError, ValueError) as e:
      return OpResult(op, False, error=f"{kind.value}: {e}")
    if kind == OpKind.UPDATE and not speaker:
      return _Step(op, kind, memory_id, text, None, truncated)
    return _Step(op, kind, memory_id, text, speaker, truncated)

  def _execute(self, plan: list[_Step | OpResult], vecs_nd: np.ndarray, timestamp: str,
               source_turn_ids: tuple[str, ...]) -> list[OpResult]:
    """Carries out a checked plan; `vecs_nd` [N, dim] embeds `_plan_texts(plan)` in order."""
    results, row = [], 0
    for step in plan:
      if isinstance(step, OpResult):
        results.append(step)
      elif step.kind == OpKind.NOOP:
        results.append(OpResult(step.op, True))
      elif step.kind == OpKind.DELETE:
        self._remove(step.memory_id)
        results.append(OpResult(step.op, True, step.memory_id))
      elif step.kind == OpKind.ADD:
        memory_id = self._insert(step.text, step.speaker, timestamp, source_turn_ids, vecs_nd[row])
        row += 1
        results.append(OpResult(step.op, True, memory_id, truncated=step.truncated))
      else:
        self._replace(step.memory_id, step.text, step.speaker, timestamp or None, source_turn_ids,
                      vecs_nd[row])
        row += 1
        results.append(OpResult(step.op, True, step.memory_id, truncated=step.truncated))
    return results


def _plan_texts(plan: list[_Step | OpResult]) -> list[str]:
  return [s.text for s in plan if isinstance(s, _Step) and s.text is not None]


def _check_str(value: Any, name: str) -> None:
  if not isinstance(value, str):
    raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def _turn_ids(value: Any) -> tuple[str, ...]:
  """`value` as a tuple of turn-id strings; TypeError for a bare str or non-string items."""
  if isinstance(value, str) or not all(isinstance(t, str) for t in value):
    raise TypeError(f"source_turn_ids must be a sequence of str, got {value!r:.80}")
  return tuple(value)


def _check_k(k: Any) -> None:
  if not _is_int(k) or k < 0:
    raise ValueError(f"k must be an int >= 0, got {k!r}")


def _field(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
  """obj[name] checked to be a `kind` (int excludes bool); else ValueError naming where / field."""
  value = obj.get(name) if isinstance(obj, dict) else None
  ok = _is_int(value) if kind is int else isinstance(value, kind)
  if not ok:
    raise ValueError(f"{where}: field '{name}' must be {kind.__name__}, got {value!r:.80}")
  return value


def _entry_from_json(raw: Any, where: str) -> MemoryEntry:
  if not isinstance(raw, dict):
    raise ValueError(f"{where}: expected an object")
  turns = _field(raw, "source_turn_ids", list, where)
  if not all(isinstance(t, str) for t in turns):
    raise ValueError(f"{where}: field 'source_turn_ids' must hold strings")
  return MemoryEntry(_field(raw, "memory_id", int, where), _field(raw, "text", str, where),
                     _field(raw, "speaker", str, where), _field(raw, "timestamp", str, where),
                     tuple(turns))


def _same_embedder(banks: Sequence[MemoryBank], caller: str) -> None:
  if not banks:
    return
  first = banks[0].embed_fn
  if any(b.embed_fn is not first for b in banks) or any(b.dim != banks[0].dim for b in banks):
    raise ValueError(f"{caller}: all banks must share one embed_fn and dim")


def apply_to_banks(banks: Sequence[MemoryBank], ops_per_bank: Sequence[Sequence[MemoryOp]], *,
                   timestamps: Sequence[str] | None = None,
                   source_turn_ids: Sequence[Sequence[str]] | None = None) -> list[list[OpResult]]:
  """`MemoryBank.apply` on many banks with one `embed_fn` call for all their texts.

  Args:
    banks: banks sharing one embed_fn (one per conversation of a batch of episodes).
    ops_per_bank: the operations for each bank.
    timestamps: per bank, as `apply`'s `timestamp` (default "").
    source_turn_ids: per bank, as `apply`'s `source_turn_ids` (default ()).

  Returns:
    Per bank, the `OpResult`s of its operations.
  """
  _same_embedder(banks, "apply_to_banks")
  timestamps = [""] * len(banks) if timestamps is None else list(timestamps)
  source_turn_ids = [()] * len(banks) if source_turn_ids is None else list(source_turn_ids)
  if not len(ops_per_bank) == len(timestamps) == len(source_turn_ids) == len(banks):
    raise ValueError("apply_to_banks: banks, ops_per_bank, timestamps and source_turn_ids "
                     "differ in length")
  for i, ops in enumerate(ops_per_bank):
    if not isinstance(ops, (list, tuple)):
      raise TypeError(f"apply_to_banks: ops_per_bank[{i}] must be a list or tuple, "
                      f"got {type(ops).__name__}")
    _check_str(timestamps[i], f"timestamps[{i}]")
  source_turn_ids = [_turn_ids(turns) for turns in source_turn_ids]
  # pylint: disable=protected-access
  if not banks:
    return []
  plans = [bank._plan(ops) for bank, ops in zip(banks, ops_per_bank)]
  texts = [_plan_texts(plan) for plan in plans]
  vecs_nd = banks[0]._embed([t for bank_texts in texts for t in bank_texts])
  results, start = [], 0
  for bank, plan, bank_texts, stamp, turns in zip(banks, plans, texts, timestamps, source_turn_ids):
    results.append(bank._execute(plan, vecs_nd[start:start + len(bank_texts)], stamp, turns))
    start += len(bank_texts)
  return results


def search_banks(banks: Sequence[MemoryBank], queries_per_bank: Sequence[Sequence[str]], k: int,
                 speaker: str | None | Sequence[str | None] = None) -> list[list[list[Hit]]]:
  """`MemoryBank.search` on many banks with one `embed_fn` call for all their queries.

  Args:
    banks: banks sharing one embed_fn.
    queries_per_bank: per bank, its query texts.
    k: memories per query.
    speaker: one speaker (or None: all) for every bank, or a sequence with one per bank.

  Returns:
    [bank][query] -> list of (entry, score), as `MemoryBank.search`.
  """
  _same_embedder(banks, "search_banks")
  if len(queries_per_bank) != len(banks):
    raise ValueError("search_banks: banks and queries_per_bank differ in length")
  if speaker is None or isinstance(speaker, str):
    speakers = [speaker] * len(banks)
  else:
    speakers = list(speaker)
  if len(speakers) != len(banks):
    raise ValueError("search_banks: the speaker sequence and banks differ in length")
  _check_k(k)
  queries = []
  for i, bank_queries in enumerate(queries_per_bank):
    if isinstance(bank_queries, str) or not all(isinstance(q, str) for q in bank_queries):
      raise TypeError(f"search_banks: queries_per_bank[{i}] must be a sequence of str")
    queries.append(list(bank_queries))
  # pylint: disable=protected-access
  if not banks:
    return []
  wanted = [bool(bank._searched_indexes(s)) and k > 0 and bool(bank_queries)
            for bank, s, bank_queries in zip(banks, speakers, queries)]
  vecs_nd = banks[0]._embed([q for w, bank_queries in zip(wanted, queries) if w
                             for q in bank_queries])
  results, start = [], 0
  for bank, bank_queries, s, w in zip(banks, queries, speakers, wanted):
    if not w:
      results.append([[] for _ in bank_queries])
      continue
    results.append(bank.search_by_vector(vecs_nd[start:start + len(bank_queries)], k, s))
    start += len(bank_queries)
  return results


def fill_banks(banks: Sequence[MemoryBank], entries_per_bank: Sequence[Sequence[MemoryEntry]]) -> None:
  """Adds `entries_per_bank[i]` to `banks[i]` in order, as `MemoryBank.add` of each entry's text, speaker, timestamp
  and source turns would (its `memory_id` is ignored: the bank numbers them), with one `embed_fn` call for all.

  For rebuilding saved bank snapshots (e.g. a batch of manager training tuples) without one encoder call per entry.

  Raises:
    ValueError / TypeError: as `MemoryBank.add` (empty or non-string text, ...), or lengths that differ.
  """
  _same_embedder(banks, "fill_banks")
  if len(entries_per_bank) != len(banks):
    raise ValueError("fill_banks: banks and entries_per_bank differ in length")
  # pylint: disable=protected-access
  if not banks:
    return
  checked = []
  for bank, entries in zip(banks, entries_per_bank):
    rows = []
    for entry in entries:
      text, _ = bank._checked_text(entry.text)
      _check_str(entry.speaker, "speaker")
      _check_str(entry.timestamp, "timestamp")
      rows.append((text, entry.speaker, entry.timestamp, _turn_ids(entry.source_turn_ids)))
    checked.append(rows)
  vecs_nd = banks[0]._embed([row[0] for rows in checked for row in rows])
  start = 0
  for bank, rows in zip(banks, checked):
    for text, speaker, timestamp, turns in rows:
      bank._insert(text, speaker, timestamp, turns, vecs_nd[start])
      start += 1
