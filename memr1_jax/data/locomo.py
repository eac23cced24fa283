"""Reader for LoCoMo's `locomo10.json` (snap-research/locomo, `data/locomo10.json`).

The file is a list of samples `{sample_id, conversation, qa, ...}`. `conversation` holds
`speaker_a`, `speaker_b`, and for each session N a turn list `session_N` with its date string
`session_N_date_time`; each turn has `speaker`, `dia_id`, `text` and, when the speaker shared a
photo, `blip_caption` (plus `img_url`, `query`, ...). Each QA item has `question`, `answer`,
`evidence` (dia_ids), `category` (1-5); category 5 (adversarial) has `adversarial_answer` and
usually no `answer`.

Conventions of this reader:
- Sessions are ordered by N numerically (session_2 before session_10). A session date without
  its session (conv-26 lists dates for sessions 20-35 that have no turns) is ignored; a session
  without its date is an error.
- A turn with a photo keeps its `text` and gets the BLIP caption appended as
  `" [shares <caption>]"`, so the image content reaches the memory without the image.
- Answers that are numbers in the file (e.g. `2022`) become strings. A category 5 question
  without an `answer` gets `ADVERSARIAL_ANSWER`, the phrase LoCoMo's own evaluation accepts for
  unanswerable questions; its misleading answer stays in `adversarial_answer`.
- `evidence` strings are kept verbatim (a few in the official file are malformed, e.g.
  "D8:6; D9:17").
- `qid` is `"<sample_id>:<index of the question in the file>"`.
"""

from __future__ import annotations

import os
import re
from typing import Any

from memr1_jax.data import errors
from memr1_jax.data import schema

# Gold answer given to adversarial (category 5) questions that have no `answer` in the file.
ADVERSARIAL_ANSWER = "Not mentioned in the conversation"

_SESSION_KEY = re.compile(r"session_(\d+)")
_SESSION_DATE_KEY = re.compile(r"session_(\d+)_date_time")


def read_locomo(path: str | os.PathLike[str]) -> list[schema.Conversation]:
  """Reads `locomo10.json`; returns one `Conversation` per sample, in file order.

  Raises `errors.DataFormatError` naming the file, the sample and the field on malformed input.
  """
  path = os.fspath(path)
  data = errors.load_json(path)
  errors.check_type(data, list, errors.RecordRef(path, "<file>"), "<top level>")
  return [_parse_sample(sample, path, index) for index, sample in enumerate(data)]


def _parse_sample(sample: Any, path: str, index: int) -> schema.Conversation:
  ref = errors.RecordRef(path, f"#{index}")
  sample_id = errors.require(sample, "sample_id", str, ref)
  ref = errors.RecordRef(path, f"#{index} (sample_id {sample_id!r})")
  conversation = errors.require(sample, "conversation", dict, ref)
  speaker_a = errors.require(conversation, "speaker_a", str, ref, "conversation.")
  speaker_b = errors.require(conversation, "speaker_b", str, ref, "conversation.")
  sessions = _parse_sessions(conversation, (speaker_a, speaker_b), ref)
  qa_items = errors.require(sample, "qa", list, ref)
  qa = tuple(_parse_qa(item, f"{sample_id}:{j}", ref, f"qa[{j}].")
             for j, item in enumerate(qa_items))
  return schema.Conversation(sample_id=sample_id, speaker_a=speaker_a, speaker_b=speaker_b,
                             sessions=sessions, qa=qa)


def _parse_sessions(conversation: dict[str, Any], speakers: tuple[str, str],
                    ref: errors.RecordRef) -> tuple[schema.Session, ...]:
  numbers = sorted(int(m.group(1)) for key in conversation
                   if (m := _SESSION_KEY.fullmatch(key)) is not None)
  sessions = []
  for n in numbers:
    date_key = f"session_{n}_date_time"
    if date_key not in conversation:
      raise ref.error(f"conversation.{date_key}", f"missing (session_{n} has no date)")
    date_time = errors.check_type(conversation[date_key], str, ref, f"conversation.{date_key}")
    prefix = f"conversation.session_{n}"
    turn_items = errors.check_type(conversation[f"session_{n}"], list, ref, prefix)
    turns = tuple(_parse_turn(item, speakers, ref, f"{prefix}[{t}].")
                  for t, item in enumerate(turn_items))
    sessions.append(schema.Session(index=n, date_time=date_time, turns=turns))
  return tuple(sessions)


def _parse_turn(item: Any, speakers: tuple[str, str], ref: errors.RecordRef,
                prefix: str) -> schema.Turn:
  speaker = errors.require(item, "speaker", str, ref, prefix)
  if speaker not in speakers:
    raise ref.error(prefix + "speaker", f"{speaker!r} is neither speaker_a nor speaker_b "
                                        f"{speakers}")
  text = errors.require(item, "text", str, ref, prefix)
  caption = errors.optional(item, "blip_caption", str, ref, prefix)
  if caption:
    text = f"{text} [shares {caption}]"
  dia_id = errors.require(item, "dia_id", str, ref, prefix)
  return schema.Turn(speaker=speaker, text=text, dia_id=dia_id)


def _parse_qa(item: Any, qid: str, ref: errors.RecordRef, prefix: str) -> schema.QA:
  question = errors.require(item, "question", str, ref, prefix)
  category = errors.require(item, "category", int, ref, prefix)
  if category not in schema.CATEGORY_NAMES:
    raise ref.error(prefix + "category",
                    f"{category} is not one of {sorted(schema.CATEGORY_NAMES)}")
  answer = errors.optional(item, "answer", (str, int, float), ref, prefix)
  adversarial = errors.optional(item, "adversarial_answer", (str, int, float), ref, prefix)
  if answer is None:
    if category != 5:
      raise ref.error(prefix + "answer", "missing (only category 5 questions may omit it)")
    answer = ADVERSARIAL_ANSWER
  evidence = errors.optional(item, "evidence", list, ref, prefix, default=[])
  for k, dia_id in enumerate(evidence):
    errors.check_type(dia_id, str, ref, f"{prefix}evidence[{k}]")
  return schema.QA(question=question, answer=str(answer), category=category,
                   evidence=tuple(evidence),
                   adversarial_answer=None if adversarial is None else str(adversarial), qid=qid)
