"""Reader for MemGPT's MSC-Self-Instruct file `msc_self_instruct.jsonl` (Hugging Face dataset
MemGPT/MSC-Self-Instruct, used by MemGPT's deep memory retrieval (DMR) task).

One JSON object per line, built on Multi-Session Chat (MSC) dialogues:
- `previous_dialogs`: the earlier sessions, each `{dialog: [{text, ...}], time_num, time_unit,
  time_back, personas}`; `time_back` says how long before the current session it took place
  (e.g. "5 weeks ago"). A turn without an `id` gets its speaker by position: the two speakers
  alternate, Speaker 1 first.
- `dialog`: the current session's turns `{id: "Speaker 1" | "Speaker 2", text, ...}`.
- `self_instruct`: `{B: question, A: answer}`, a question about the earlier sessions and its
  short gold answer.
- Also `personas`, `init_personas`, `personas_update1/2`, `summary_speaker_1/2`, `metadata`
  (`initial_data_id`, `session_id`); this reader does not use them.

Each line becomes one `Conversation` "msc-<k>" (k counts records from 0) with speakers
"Speaker 1" / "Speaker 2", one `Session` per previous dialog (`date_time` = `time_back`, or
"<time_num> <time_unit> ago" when `time_back` is absent) followed, unless
`include_current_dialog=False`, by the current dialog (`date_time` = `CURRENT_SESSION`), and a
single `QA` of category 4 (single-hop recall), `question_type` "msc-self-instruct".
"""

from __future__ import annotations

import os
from typing import Any

from memr1_jax.data import errors
from memr1_jax.data import schema

SPEAKERS = ("Speaker 1", "Speaker 2")
CURRENT_SESSION = "current session"
QUESTION_TYPE = "msc-self-instruct"
CATEGORY = 4


def read_msc(path: str | os.PathLike[str],
             include_current_dialog: bool = True) -> list[schema.Conversation]:
  """Reads `msc_self_instruct.jsonl`; returns one `Conversation` per line, in file order.

  Raises `errors.DataFormatError` naming the file, the line and the field on malformed input.
  """
  path = os.fspath(path)
  return [_parse_record(record, path, line_number, k, include_current_dialog)
          for k, (line_number, record) in enumerate(errors.load_jsonl(path))]


def _parse_record(record: Any, path: str, line_number: int, k: int,
                  include_current_dialog: bool) -> schema.Conversation:
  sample_id = f"msc-{k}"
  ref = errors.RecordRef(path, f"line {line_number} ({sample_id})")
  previous = errors.require(record, "previous_dialogs", list, ref)
  sessions = []
  for s, raw_session in enumerate(previous):
    prefix = f"previous_dialogs[{s}]."
    date_time = errors.optional(raw_session, "time_back", str, ref, prefix)
    if date_time is None:
      time_num = errors.require(raw_session, "time_num", (int, float), ref, prefix)
      time_unit = errors.require(raw_session, "time_unit", str, ref, prefix)
      date_time = f"{time_num} {time_unit} ago"
    raw_turns = errors.require(raw_session, "dialog", list, ref, prefix)
    sessions.append(_session(raw_turns, len(sessions) + 1, date_time, ref, prefix + "dialog"))
  if include_current_dialog:
    raw_turns = errors.require(record, "dialog", list, ref)
    sessions.append(_session(raw_turns, len(sessions) + 1, CURRENT_SESSION, ref, "dialog"))
  self_instruct = errors.require(record, "self_instruct", dict, ref)
  qa = schema.QA(question=errors.require(self_instruct, "B", str, ref, "self_instruct."),
                 answer=errors.require(self_instruct, "A", str, ref, "self_instruct."),
                 category=CATEGORY, question_type=QUESTION_TYPE, qid=sample_id)
  return schema.Conversation(sample_id=sample_id, speaker_a=SPEAKERS[0], speaker_b=SPEAKERS[1],
                             sessions=tuple(sessions), qa=(qa,))


def _session(raw_turns: list[Any], index: int, date_time: str, ref: errors.RecordRef,
             prefix: str) -> schema.Session:
  turns = []
  for t, raw_turn in enumerate(raw_turns):
    turn_prefix = f"{prefix}[{t}]."
    speaker = errors.optional(raw_turn, "id", str, ref, turn_prefix, default=SPEAKERS[t % 2])
    if speaker not in SPEAKERS:
      raise ref.error(turn_prefix + "id", f"{speaker!r} is not one of {SPEAKERS}")
    text = errors.require(raw_turn, "text", str, ref, turn_prefix)
    turns.append(schema.Turn(speaker=speaker, text=text, dia_id=f"D{index}:{t + 1}"))
  return schema.Session(index=index, date_time=date_time, turns=tuple(turns))
