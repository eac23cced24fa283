"""The manager's training data: (turn, temporal memory bank, linked QA) tuples (Memory-R1 Appendix B.2, Algorithm 1).

For each dialogue turn t that is the last evidence turn of at least one question (`runner.last_evidence_turn`), a
tuple holds turn t (with its session), a snapshot of the memory bank built over the `window` turns before it (turns
[t - window, t)) and the questions linked to t. A manager RL step samples a batch of tuples (`runner.tuple_episodes`)
instead of walking whole conversations, so its cost is batch x group responses.

The snapshot is built by ADD of every extracted fact of those turns (`RunnerConfig.extract`, as
`runner.add_all_banks`), or greedily by a frozen manager through `runner.build_banks` on a view of the conversation
restricted to those turns. A question whose evidence names a turn the conversation lacks, or names no turn, is
skipped and counted (`linked_questions`), never an error.

Tuples are saved as JSONL (`write_tuples` / `read_tuples`): a header line (format, version, the settings they were
built under, their counts), then one tuple per line; written atomically.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from memr1_jax import errors, fileio
from memr1_jax.data.schema import QA, Conversation, Session, Turn
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import ChatPolicy
from memr1_jax.memory.bank import MemoryEntry

FORMAT = "memr1_jax.manager_tuples"
FORMAT_VERSION = 1


class TupleFileError(errors.Error):
  """A manager tuples file is missing, malformed or of another format (the message names the file and line)."""


@dataclasses.dataclass(frozen=True)
class ManagerTuple:
  """One manager training tuple.

  Attributes:
    sample_id, speaker_a, speaker_b: the conversation's id and speakers.
    turn_index: the turn's index in `Conversation.turns`; dia_id: its dataset id (e.g. "D3:1").
    session: the turn's session (its date, and the turns before it that an LLM extractor reads).
    snapshot: the memory bank over the preceding window, in bank order (memory_id = position).
    qa: the questions whose last evidence turn is this turn.
  """

  sample_id: str
  speaker_a: str
  speaker_b: str
  turn_index: int
  dia_id: str
  session: Session
  snapshot: tuple[MemoryEntry, ...]
  qa: tuple[QA, ...]

  @property
  def turn(self) -> Turn:
    """The tuple's turn (from its session)."""
    return next(t for t in self.session.turns if t.dia_id == self.dia_id)

  def conversation(self) -> Conversation:
    """A conversation view of the tuple: its speakers, its turn's session and its linked questions."""
    return Conversation(self.sample_id, self.speaker_a, self.speaker_b, (self.session,), self.qa)


def linked_questions(conv: Conversation) -> tuple[dict[int, list[QA]], list[QA]]:
  """({turn index: the questions whose last evidence turn it is}, the questions skipped: evidence naming a turn that
  `conv` lacks, or no turn at all)."""
  order = {turn.dia_id: i for i, (_, turn) in enumerate(conv.turns)}
  linked: dict[int, list[QA]] = {}
  skipped = []
  for qa in conv.qa:
    cited = [d for ev in qa.evidence for d in runner._DIA_ID_RE.findall(ev)]  # pylint: disable=protected-access
    t = runner.last_evidence_turn(conv, qa, order)
    if t is None or any(d not in order for d in cited):
      skipped.append(qa)
    else:
      linked.setdefault(t, []).append(qa)
  return linked, skipped


def _window_view(conv: Conversation, lo: int, hi: int) -> Conversation:
  """`conv` restricted to its turns [lo, hi) (sessions without such turns dropped), with no questions."""
  sessions, i = [], 0
  for session in conv.sessions:
    kept = tuple(t for k, t in enumerate(session.turns, start=i) if lo <= k < hi)
    i += len(session.turns)
    if kept:
      sessions.append(dataclasses.replace(session, turns=kept))
  return dataclasses.replace(conv, sessions=tuple(sessions), qa=())


def _entries(items) -> tuple[MemoryEntry, ...]:
  """Snapshot entries numbered by position from (text, speaker, timestamp, source_turn_ids) records."""
  return tuple(MemoryEntry(i, e.text, e.speaker, e.timestamp, tuple(e.source_turn_ids)) for i, e in enumerate(items))


def build_tuples(conversations: Sequence[Conversation], bank_factory: runner.BankFactory, cfg: runner.RunnerConfig,
                 *, window: int = 50, snapshot_manager: ChatPolicy | None = None) -> list[ManagerTuple]:
  """The manager tuples of `conversations` (see the module docstring), in conversation then turn order.

  Args:
    bank_factory: makes the banks the snapshot manager builds (unused for ADD snapshots).
    cfg: the fact extractor and the manager prompt settings.
    window: the snapshot covers the `window` turns before the tuple's turn (fewer near the start).
    snapshot_manager: None: every fact of those turns ADDed; else this frozen manager builds the bank greedily.
  Returns:
    One tuple per turn that is the last evidence turn of some question (skipped questions: `linked_questions`).
  """
  if window < 0:
    raise ValueError(f"build_tuples: window must be 0 or more, got {window}")
  heads = []  # (conversation, turn index, linked questions, lo)
  for conv in conversations:
    linked, _ = linked_questions(conv)
    heads += [(conv, t, linked[t], max(0, t - window)) for t in sorted(linked)]
  if snapshot_manager is None:
    runner.prefetch_facts(conversations, cfg)
    facts = {}
    for conv in {id(c): c for c, _, _, _ in heads}.values():
      facts[conv.sample_id] = [ext.facts for ext in cfg.extract(conv.turns)]
    snapshots = [_entries(f for turn_facts in facts[conv.sample_id][lo:t] for f in turn_facts)
                 for conv, t, _, lo in heads]
  else:
    views = [_window_view(conv, lo, t) for conv, t, _, lo in heads]
    banks, _ = runner.build_banks(snapshot_manager, views, bank_factory, cfg, greedy=True)
    snapshots = [_entries(bank.entries()) for bank in banks]
  out = []
  for (conv, t, qas, _), snapshot in zip(heads, snapshots):
    session, turn = conv.turns[t]
    out.append(ManagerTuple(conv.sample_id, conv.speaker_a, conv.speaker_b, t, turn.dia_id, session, snapshot,
                            tuple(qas)))
  return out


def counts(tuples: Sequence[ManagerTuple], conversations: Sequence[Conversation]) -> dict:
  """{conversations, turns (all dialogue turns), tuples, linked_questions, skipped_questions, mean_snapshot} of
  `tuples` built from `conversations`."""
  return {"conversations": len(conversations), "turns": sum(len(c.turns) for c in conversations),
          "tuples": len(tuples), "linked_questions": sum(len(t.qa) for t in tuples),
          "skipped_questions": sum(len(linked_questions(c)[1]) for c in conversations),
          "mean_snapshot": sum(len(t.snapshot) for t in tuples) / max(len(tuples), 1)}


def tuple_to_json(t: ManagerTuple) -> dict:
  """A tuple as a JSON-ready dict (the snapshot's entries without their positional ids)."""
  record = dataclasses.asdict(t)
  record["snapshot"] = [{k: v for k, v in e.items() if k != "memory_id"} for e in record["snapshot"]]
  return record


def tuple_from_json(record: dict) -> ManagerTuple:
  """The tuple `tuple_to_json` wrote (KeyError / TypeError on a malformed record)."""
  s = record["session"]
  session = Session(s["index"], s["date_time"], tuple(Turn(**turn) for turn in s["turns"]))
  snapshot = tuple(MemoryEntry(i, e["text"], e["speaker"], e["timestamp"], tuple(e["source_turn_ids"]))
                   for i, e in enumerate(record["snapshot"]))
  qa = tuple(QA(**{**q, "evidence": tuple(q["evidence"])}) for q in record["qa"])
  if not any(turn.dia_id == record["dia_id"] for turn in session.turns):
    raise KeyError(f"dia_id {record['dia_id']!r} is not a turn of the record's session")
  return ManagerTuple(record["sample_id"], record["speaker_a"], record["speaker_b"], record["turn_index"],
                      record["dia_id"], session, snapshot, qa)


def write_tuples(path: str, tuples: Sequence[ManagerTuple], settings: dict, tuple_counts: dict) -> None:
  """Writes `tuples` to `path` atomically: a header line {format, version, settings, counts}, then one per line."""
  header = {"format": FORMAT, "version": FORMAT_VERSION, "settings": settings, "counts": tuple_counts}
  lines = [json.dumps(header, ensure_ascii=False, sort_keys=True)]
  lines += [json.dumps(tuple_to_json(t), ensure_ascii=False) for t in tuples]
  fileio.write_atomic(path, "\n".join(lines) + "\n")


def read_header(path: str) -> dict | None:
  """The header of the tuples file at `path`; None when the file is absent, empty or not a tuples file."""
  try:
    with open(path, encoding="utf-8") as f:
      header = json.loads(f.readline() or "null")
  except (OSError, json.JSONDecodeError, UnicodeDecodeError):
    return None
  ok = isinstance(header, dict) and header.get("format") == FORMAT and header.get("version") == FORMAT_VERSION
  return header if ok else None


def read_tuples(path: str) -> tuple[list[ManagerTuple], dict]:
  """(the tuples, the header) of the file `write_tuples` wrote at `path`; TupleFileError naming file and line."""
  header = read_header(path)
  if header is None:
    raise TupleFileError(f"{path}: not a manager tuples file ({FORMAT} version {FORMAT_VERSION}; build one with "
                         "config.mode=prepare)")
  out = []
  with open(path, encoding="utf-8") as f:
    next(f)
    for line_no, line in enumerate(f, start=2):
      if not line.strip():
        continue
      try:
        out.append(tuple_from_json(json.loads(line)))
      except (json.JSONDecodeError, KeyError, TypeError, StopIteration) as e:
        raise TupleFileError(f"{path}: line {line_no}: malformed tuple ({type(e).__name__}: {e})") from None
  return out, header
