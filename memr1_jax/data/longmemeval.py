"""Reader for LongMemEval (xiaowu0162/LongMemEval), in two layouts.

"official": `longmemeval_s.json`, `longmemeval_m.json`, `longmemeval_oracle.json` (and the
`*_cleaned.json` re-release): a list of items `{question_id, question_type, question, answer,
question_date, haystack_session_ids, haystack_dates, haystack_sessions, answer_session_ids}`;
each haystack session is a list of `{role: "user" | "assistant", content, has_answer?}`.

"hydrabuild": the re-shaped sample of Charles-ace/hydrabuild
(`data/longmemeval_oracle_sample.json`, a copy in ../shared/data/longmemeval):
`{source, file, ..., data: [{id, question_type, conversation: [{role, content, date}],
questions: [{id, question, answer}]}]}`. Sessions exist only as runs of turns sharing one `date`;
there is no question date, no session ids and no `has_answer` labels.

Both become one `Conversation` per item with speakers "user" and "assistant", one `Session` per
haystack session (its date as `date_time`, `index` from 1, turn `dia_id` "D<session>:<turn>"
counted from 1) and its question(s) as `QA`, keeping the original type in `question_type`.

Each question keeps its LongMemEval type (`question_type`); reports group by it, under the column names of the
Memory-R1 paper's Table 4 (`QUESTION_TYPE_CODES`: SSU, SSP, OD, MS, KU, TR; OD is the single-session-assistant
type, the one left for that column). `category` is only a coarse LoCoMo-style tag for code that needs an int
(`QUESTION_TYPE_CATEGORY`): multi-session -> 1, temporal-reasoning -> 2, knowledge-update and the three
single-session types -> 4; abstention questions (id ending in "_abs") -> 5, whatever their type.

Official layout details: `evidence` is the dia_ids of turns marked `has_answer`; `qid` and
`sample_id` are the `question_id`; numeric answers become strings. Sessions keep file order
unless `chronological=True` (dates "2023/05/30 (Tue) 21:48" sort by day, then time).
Hydrabuild layout: `sample_id` is the item `id`, `qid` is "<item id>:<question id>",
`question_date` is None and `evidence` is empty.
"""

from __future__ import annotations

import os
import re
from typing import Any

from memr1_jax.data import errors
from memr1_jax.data import schema

SPEAKERS = ("user", "assistant")
QUESTION_TYPE_CATEGORY = {
    "multi-session": 1,
    "temporal-reasoning": 2,
    "knowledge-update": 4,
    "single-session-user": 4,
    "single-session-assistant": 4,
    "single-session-preference": 4,
}
# LongMemEval question type -> its column in the paper's Table 4, in the table's order.
QUESTION_TYPE_CODES = {
    "single-session-user": "SSU",
    "single-session-preference": "SSP",
    "single-session-assistant": "OD",
    "multi-session": "MS",
    "knowledge-update": "KU",
    "temporal-reasoning": "TR",
}
ABSTENTION_SUFFIX = "_abs"
ABSTENTION_CATEGORY = 5
LAYOUTS = ("auto", "official", "hydrabuild")
_DATE = re.compile(r"\d{4}/\d{2}/\d{2} \(\w{3}\) \d{2}:\d{2}")


def read_longmemeval(path: str | os.PathLike[str], layout: str = "auto",
                     chronological: bool = False) -> list[schema.Conversation]:
  """Reads a LongMemEval file; returns one `Conversation` per question item, in file order.

  `layout` is "official", "hydrabuild" or "auto" (a top-level list is official, an object with
  a `data` list is hydrabuild). With `chronological`, sessions are stably sorted by date before
  they are numbered (the oracle files do not list them in time order). Raises
  `errors.DataFormatError` naming the file, the item and the field on malformed input.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown LongMemEval layout {layout!r}; expected one of {LAYOUTS}")
  path = os.fspath(path)
  data = errors.load_json(path)
  file_ref = errors.RecordRef(path, "<file>")
  if layout == "auto":
    layout = "hydrabuild" if isinstance(data, dict) and "data" in data else "official"
  if layout == "official":
    errors.check_type(data, list, file_ref, "<top level>")
    return [_parse_official(item, path, i, chronological) for i, item in enumerate(data)]
  items = errors.require(data, "data", list, file_ref)
  return [_parse_hydrabuild(item, path, i, chronological) for i, item in enumerate(items)]


def category_for(question_type: str, question_id: str, ref: errors.RecordRef, field: str) -> int:
  """Returns the LoCoMo category of a LongMemEval question (see `QUESTION_TYPE_CATEGORY`)."""
  if question_type not in QUESTION_TYPE_CATEGORY:
    raise ref.error(field, f"unknown question type {question_type!r}; expected one of "
                           f"{sorted(QUESTION_TYPE_CATEGORY)}")
  if question_id.endswith(ABSTENTION_SUFFIX):
    return ABSTENTION_CATEGORY
  return QUESTION_TYPE_CATEGORY[question_type]


def _parse_official(item: Any, path: str, index: int, chronological: bool) -> schema.Conversation:
  ref = errors.RecordRef(path, f"#{index}")
  question_id = errors.require(item, "question_id", str, ref)
  ref = errors.RecordRef(path, f"#{index} (question_id {question_id!r})")
  question_type = errors.require(item, "question_type", str, ref)
  category = category_for(question_type, question_id, ref, "question_type")
  question = errors.require(item, "question", str, ref)
  answer = errors.require(item, "answer", (str, int, float), ref)
  question_date = errors.require(item, "question_date", str, ref)
  dates = errors.require(item, "haystack_dates", list, ref)
  raw_sessions = errors.require(item, "haystack_sessions", list, ref)
  if len(dates) != len(raw_sessions):
    raise ref.error("haystack_dates",
                    f"{len(dates)} dates for {len(raw_sessions)} haystack_sessions")
  for s, date in enumerate(dates):
    errors.check_type(date, str, ref, f"haystack_dates[{s}]")
  order = _session_order(dates, chronological, ref, "haystack_dates")
  sessions, evidence = [], []
  for s, original in enumerate(order, start=1):
    prefix = f"haystack_sessions[{original}]"
    raw_turns = errors.check_type(raw_sessions[original], list, ref, prefix)
    turns = []
    for t, raw_turn in enumerate(raw_turns, start=1):
      turn_prefix = f"{prefix}[{t - 1}]."
      turns.append(_parse_turn(raw_turn, f"D{s}:{t}", ref, turn_prefix))
      if errors.optional(raw_turn, "has_answer", bool, ref, turn_prefix, default=False):
        evidence.append(f"D{s}:{t}")
    sessions.append(schema.Session(index=s, date_time=dates[original], turns=tuple(turns)))
  qa = schema.QA(question=question, answer=str(answer), category=category,
                 evidence=tuple(evidence), question_type=question_type,
                 question_date=question_date, qid=question_id)
  return schema.Conversation(sample_id=question_id, speaker_a=SPEAKERS[0], speaker_b=SPEAKERS[1],
                             sessions=tuple(sessions), qa=(qa,))


def _parse_hydrabuild(item: Any, path: str, index: int, chronological: bool) -> schema.Conversation:
  ref = errors.RecordRef(path, f"data[{index}]")
  item_id = errors.require(item, "id", str, ref)
  ref = errors.RecordRef(path, f"data[{index}] (id {item_id!r})")
  question_type = errors.require(item, "question_type", str, ref)
  category = category_for(question_type, item_id, ref, "question_type")
  raw_turns = errors.require(item, "conversation", list, ref)
  runs: list[list[tuple[int, Any]]] = []  # Maximal runs of (position, turn) sharing one date.
  dates: list[str] = []
  for t, raw_turn in enumerate(raw_turns):
    turn_date = errors.require(raw_turn, "date", str, ref, f"conversation[{t}].")
    if not dates or turn_date != dates[-1]:
      runs.append([])
      dates.append(turn_date)
    runs[-1].append((t, raw_turn))
  sessions = []
  for s, original in enumerate(_session_order(dates, chronological, ref, "conversation"), start=1):
    turns = tuple(_parse_turn(raw_turn, f"D{s}:{k}", ref, f"conversation[{t}].")
                  for k, (t, raw_turn) in enumerate(runs[original], start=1))
    sessions.append(schema.Session(index=s, date_time=dates[original], turns=turns))
  raw_questions = errors.require(item, "questions", list, ref)
  qa = []
  for j, raw_question in enumerate(raw_questions):
    prefix = f"questions[{j}]."
    question_id = errors.require(raw_question, "id", str, ref, prefix)
    qa.append(schema.QA(
        question=errors.require(raw_question, "question", str, ref, prefix),
        answer=str(errors.require(raw_question, "answer", (str, int, float), ref, prefix)),
        category=category, question_type=question_type, qid=f"{item_id}:{question_id}"))
  return schema.Conversation(sample_id=item_id, speaker_a=SPEAKERS[0], speaker_b=SPEAKERS[1],
                             sessions=tuple(sessions), qa=tuple(qa))


def _session_order(dates: list[str], chronological: bool, ref: errors.RecordRef,
                   field: str) -> list[int]:
  """Positions of the sessions in reading order: file order, or stably sorted by date."""
  if not chronological:
    return list(range(len(dates)))
  for date in dates:
    if _DATE.fullmatch(date) is None:
      raise ref.error(field, f"date {date!r} is not 'YYYY/MM/DD (Day) HH:MM'; cannot sort sessions")
  return sorted(range(len(dates)), key=lambda s: (dates[s][:10], dates[s][-5:]))


def _parse_turn(raw_turn: Any, dia_id: str, ref: errors.RecordRef, prefix: str) -> schema.Turn:
  role = errors.require(raw_turn, "role", str, ref, prefix)
  if role not in SPEAKERS:
    raise ref.error(prefix + "role", f"{role!r} is not one of {SPEAKERS}")
  content = errors.require(raw_turn, "content", str, ref, prefix)
  return schema.Turn(speaker=role, text=content, dia_id=dia_id)
