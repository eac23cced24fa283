"""Parsers of model output: manager operations, the answer with its selected memories, fact lists.

None of them raises on any string. A reply that breaks the format gives a defined result (NOOP,
an empty answer, no facts) plus `format_error`, a short description the reward can penalise.
The work is bounded: input beyond `max_input_chars` is cut (it then reads as truncated output),
at most `max_ops` operations / `max_facts` facts are kept, each text is cut to a length cap, and
every scan is linear (str.find, json's C decoder, regexes without nested quantifiers).

JSON is searched in the first ``` fenced block when there is one (an unclosed fence runs to the
end), else in the whole reply; prose around it is ignored. When the JSON does not decode (a reply
cut off by the token limit), the complete objects at the head of the operations list are kept.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection

from memr1_jax.memory.operations import NOOP, MemoryOp, OpKind

# Defaults of the bounds (all overridable per call).
MAX_INPUT_CHARS = 1_000_000
MAX_OPS = 64
MAX_OP_TEXT_CHARS = 2000
MAX_ANSWER_CHARS = 300
MAX_SELECTED_IDS = 128
MAX_FACTS = 16
MAX_FACT_CHARS = 500
# How many format problems are spelled out in `format_error` (the rest are counted).
_MAX_LISTED_ERRORS = 8
# How many '{' / '[' positions are tried as the start of the JSON value.
_MAX_JSON_STARTS = 4

_decoder = json.JSONDecoder()
_WS_RE = re.compile(r"\s*")
_FENCE_TAG_RE = re.compile(r"[A-Za-z0-9_+-]{0,20}")
_DIGITS_RE = re.compile(r"\d{1,18}")
_BOLD_ANSWER_RE = re.compile(r"\*\*\s?answer\s?:?\s?\*\*\s?:?", re.IGNORECASE)
_PLAIN_ANSWER_RE = re.compile(r"\banswer\s?:", re.IGNORECASE)
_SELECTED_ID_RE = re.compile(r"\[\s?(?:id\s?[:=#]?\s?)?(\d{1,9})\s?\]", re.IGNORECASE)
_BULLET_RE = re.compile(r"(?:[-*\u2022]|\d{1,3}[.)])\s+")
_NO_FACT_LINES = frozenset({"none", "no facts", "nothing", "[]", "n/a"})
_OP_KINDS = {kind.value: kind for kind in OpKind}


@dataclasses.dataclass(frozen=True)
class ManagerParse:
  """Operations read from a manager reply (never empty: [NOOP] when nothing usable was found)."""

  ops: list[MemoryOp]
  format_error: str | None


@dataclasses.dataclass(frozen=True)
class AnswerParse:
  """An Answer Agent reply: the answer text ("" when missing) and the memory ids it listed."""

  answer: str
  selected_ids: list[int]
  format_error: str | None


@dataclasses.dataclass(frozen=True)
class FactParse:
  """Facts read from an extractor reply; `format_error` is None for a well-formed JSON list."""

  facts: list[str]
  format_error: str | None


class _Errors:
  """Collects format problems; `summary()` is None when there were none."""

  def __init__(self):
    self.messages: list[str] = []
    self.count = 0

  def add(self, message: str):
    self.count += 1
    if len(self.messages) < _MAX_LISTED_ERRORS:
      self.messages.append(message)

  def summary(self) -> str | None:
    if not self.count:
      return None
    extra = self.count - len(self.messages)
    return "; ".join(self.messages) + (f"; (+{extra} more)" if extra else "")


def _json_regions(text: str) -> list[str]:
  """Where to look for JSON: the first fenced block (if any), then the whole text."""
  fence = text.find("```")
  if fence < 0:
    return [text]
  start = _FENCE_TAG_RE.match(text, fence + 3).end()
  end = text.find("```", start)
  return [text[start:] if end < 0 else text[start:end], text]


def _try_decode(text: str, start: int) -> tuple[object, bool]:
  """(value, True) when a JSON value decodes at `start`, else (None, False)."""
  try:
    return _decoder.raw_decode(text, start)[0], True
  except (ValueError, RecursionError):
    return None, False


def _value_starts(text: str, chars: str, limit: int = _MAX_JSON_STARTS) -> list[int]:
  """The first `limit` positions of any character of `chars` in `text`, in order."""
  starts, position = [], 0
  while len(starts) < limit:
    found = [p for p in (text.find(c, position) for c in chars) if p >= 0]
    if not found:
      break
    starts.append(min(found))
    position = starts[-1] + 1
  return starts


def _array_head(text: str, start: int, max_items: int) -> tuple[list[object], bool]:
  """Complete JSON values at the head of the array whose '[' is at `start`.

  Returns (items, closed): at most `max_items` items, and whether the closing ']' was reached.
  """
  items: list[object] = []
  position, size = start + 1, len(text)
  while len(items) < max_items:
    position = _WS_RE.match(text, position).end()
    if position >= size:
      return items, False
    if text[position] == "]":
      return items, True
    if text[position] == ",":
      position += 1
      continue
    try:
      item, position = _decoder.raw_decode(text, position)
    except (ValueError, RecursionError):
      return items, False
    items.append(item)
  return items, False


def _operations_items(region: str, max_ops: int, errors: _Errors) -> list[object] | None:
  """The raw operation items in `region`, or None when it holds no operations JSON."""
  key = region.find('"operations"')
  if key >= 0:
    for start in dict.fromkeys((region.find("{"), region.rfind("{", 0, key))):
      value, ok = _try_decode(region, start) if 0 <= start < key else (None, False)
      if ok and isinstance(value, dict) and "operations" in value:
        if isinstance(value["operations"], list):
          return value["operations"]
        errors.add("'operations' is not a list")
        return []
    colon = _WS_RE.match(region, key + len('"operations"')).end()
    if region.startswith(":", colon):
      bracket = _WS_RE.match(region, colon + 1).end()
      if region.startswith("[", bracket):
        items, closed = _array_head(region, bracket, max_ops + 1)
        errors.add(("JSON malformed or unclosed after the operations list" if closed else
                    "truncated JSON") + f"; kept {min(len(items), max_ops)} complete operations")
        return items
  for start in _value_starts(region, "{["):
    value, ok = _try_decode(region, start)
    if ok and isinstance(value, dict) and "op" in value:
      errors.add('a single operation object instead of {"operations": [...]}')
      return [value]
    if ok and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
      errors.add('a bare list instead of {"operations": [...]}')
      return value
  return None


def _op_id(item: dict, valid_ids: Collection[int], index: int, errors: _Errors) -> int | None:
  raw = item.get("id")
  if isinstance(raw, int) and not isinstance(raw, bool):
    memory_id = raw
  elif isinstance(raw, str) and _DIGITS_RE.fullmatch(raw.strip()):
    memory_id = int(raw.strip())
  else:
    errors.add(f"operation {index}: missing or non-integer 'id'")
    return None
  if memory_id not in valid_ids:
    errors.add(f"operation {index}: unknown memory id {memory_id}")
    return None
  return memory_id


def valid_unicode(text: str) -> str:
  """`text` with lone surrogates (e.g. from a JSON escape like \\udcff) replaced by "?", so it encodes as UTF-8."""
  return text.encode("utf-8", "replace").decode("utf-8")


def _op_text(item: dict, index: int, max_chars: int, errors: _Errors) -> str | None:
  raw = item.get("text")
  if not isinstance(raw, str) or not raw.strip():
    errors.add(f"operation {index}: missing or empty 'text'")
    return None
  text = valid_unicode(raw.strip())
  if len(text) > max_chars:
    errors.add(f"operation {index}: text longer than {max_chars} characters; cut")
    text = text[:max_chars]
  return text


def _to_op(item: object, index: int, valid_ids: Collection[int], speaker: str,
           max_text_chars: int, errors: _Errors) -> MemoryOp | None:
  """One raw item as a MemoryOp, or None (with an error recorded) when it is unusable."""
  if not isinstance(item, dict):
    errors.add(f"operation {index}: not a JSON object")
    return None
  kind = _OP_KINDS.get(item["op"].strip().upper()) if isinstance(item.get("op"), str) else None
  if kind is None:
    errors.add(f"operation {index}: 'op' is not one of ADD / UPDATE / DELETE / NOOP")
    return None
  if kind is OpKind.NOOP:
    return NOOP
  memory_id = None
  if kind in (OpKind.UPDATE, OpKind.DELETE):
    memory_id = _op_id(item, valid_ids, index, errors)
    if memory_id is None:
      return None
  if kind is OpKind.DELETE:
    return MemoryOp(kind, memory_id=memory_id)
  text = _op_text(item, index, max_text_chars, errors)
  if text is None:
    return None
  return MemoryOp(kind, memory_id=memory_id, text=text,
                  speaker=speaker if kind is OpKind.ADD else "")


def parse_manager_output(text: object, valid_ids: Collection[int], *, speaker: str = "",
                         max_ops: int = MAX_OPS, max_text_chars: int = MAX_OP_TEXT_CHARS,
                         max_input_chars: int = MAX_INPUT_CHARS) -> ManagerParse:
  """Reads a Memory Manager reply into operations; never raises.

  Args:
    text: the reply, expected as {"operations": [{"op": "ADD", "text": ...}, {"op": "UPDATE",
      "id": 3, "text": ...}, {"op": "DELETE", "id": 5}, {"op": "NOOP"}]} (see agents.prompts).
    valid_ids: the ids shown to the manager; UPDATE / DELETE of any other id is dropped.
    speaker: stamped on ADD operations (the speaker of the turn).
    max_ops: operations read at most; the rest are dropped with an error.
    max_text_chars: ADD / UPDATE text is cut to this length.
    max_input_chars: the reply is cut to this length before parsing.

  Returns:
    ManagerParse: the usable operations in order (NOOPs dropped when anything else is kept;
    [NOOP] when nothing usable was found) and the format problems, or None when there were none.
  """
  errors = _Errors()
  if not isinstance(text, str):
    errors.add(f"output is {type(text).__name__}, not str")
    return ManagerParse([NOOP], errors.summary())
  if not text.strip():
    errors.add("empty output")
    return ManagerParse([NOOP], errors.summary())
  if len(text) > max_input_chars:
    errors.add(f"output longer than {max_input_chars} characters; cut")
    text = text[:max_input_chars]
  items = None
  for region in _json_regions(text):
    region_errors = _Errors()
    items = _operations_items(region, max_ops, region_errors)
    if items is not None:
      for message in region_errors.messages:
        errors.add(message)
      break
  if items is None:
    errors.add("no JSON operations found")
    return ManagerParse([NOOP], errors.summary())
  if not items:
    errors.add("empty operations list")
  if len(items) > max_ops:
    errors.add(f"more than {max_ops} operations; kept the first {max_ops}")
  valid = valid_ids if isinstance(valid_ids, (set, frozenset, dict)) else frozenset(valid_ids)
  ops = [op for index, item in enumerate(items[:max_ops])
         if (op := _to_op(item, index, valid, speaker, max_text_chars, errors)) is not None]
  ops = [op for op in ops if op.kind is not OpKind.NOOP] or [NOOP]
  return ManagerParse(ops, errors.summary())


def _first_nonempty_line(text: str) -> str:
  for line in text.splitlines():
    if line.strip():
      return line.strip()
  return ""


def parse_answer_output(text: object, valid_ids: Collection[int] | None = None, *,
                        max_answer_chars: int = MAX_ANSWER_CHARS,
                        max_selected: int = MAX_SELECTED_IDS,
                        max_input_chars: int = MAX_INPUT_CHARS) -> AnswerParse:
  """Reads an Answer Agent reply; never raises.

  The answer is what follows the LAST "**Answer:**" (case-insensitive; "Answer:" without the bold
  marks is read too, with an error) up to the end of its line, or the next non-empty line when
  it is empty. The selected ids are the "[12]" / "[id: 12]" references before that marker, in order,
  without repeats.

  Args:
    text: the reply.
    valid_ids: when given, listed ids outside it are dropped with an error.
    max_answer_chars: the answer is cut to this length.
    max_selected: ids kept at most.
    max_input_chars: the reply is cut to this length before parsing.

  Returns:
    AnswerParse(answer, selected_ids, format_error); the answer is "" when no marker was found.
  """
  errors = _Errors()
  if not isinstance(text, str):
    errors.add(f"output is {type(text).__name__}, not str")
    return AnswerParse("", [], errors.summary())
  if not text.strip():
    errors.add("empty output")
    return AnswerParse("", [], errors.summary())
  if len(text) > max_input_chars:
    errors.add(f"output longer than {max_input_chars} characters; cut")
    text = text[:max_input_chars]
  marker = None
  for marker in _BOLD_ANSWER_RE.finditer(text):
    pass
  if marker is None:
    for marker in _PLAIN_ANSWER_RE.finditer(text):
      pass
    if marker is not None:
      errors.add("answer marked 'Answer:' instead of '**Answer:**'")
  if marker is None:
    errors.add("no **Answer:** line")
    head, answer = text, ""
  else:
    head = text[:marker.start()]
    answer = _first_nonempty_line(text[marker.end():]).strip("*").strip()
    if not answer:
      errors.add("empty answer after **Answer:**")
    if len(answer) > max_answer_chars:
      errors.add(f"answer longer than {max_answer_chars} characters; cut")
      answer = answer[:max_answer_chars]
  selected: list[int] = []
  seen: set[int] = set()
  for match in _SELECTED_ID_RE.finditer(head):
    memory_id = int(match.group(1))
    if memory_id in seen:
      continue
    seen.add(memory_id)
    if valid_ids is not None and memory_id not in valid_ids:
      errors.add(f"unknown memory id {memory_id} listed")
      continue
    if len(selected) == max_selected:
      errors.add(f"more than {max_selected} memory ids listed; kept the first {max_selected}")
      break
    selected.append(memory_id)
  return AnswerParse(answer, selected, errors.summary())


def _clean_fact(fact: str, max_chars: int, errors: _Errors) -> str:
  fact = valid_unicode(" ".join(fact.split()))
  if len(fact) > max_chars:
    errors.add(f"fact longer than {max_chars} characters; cut")
    fact = fact[:max_chars]
  return fact


def _json_fact_items(region: str, errors: _Errors, max_facts: int) -> list[object] | None:
  for start in _value_starts(region, "["):
    value, ok = _try_decode(region, start)
    if ok and isinstance(value, list):
      return value
    if not ok:
      items, _ = _array_head(region, start, max_facts + 1)
      if items and all(isinstance(item, str) for item in items):
        errors.add(f"truncated JSON list; kept {min(len(items), max_facts)} complete facts")
        return items
  return None


def _line_facts(text: str) -> list[str]:
  facts = []
  for line in text.splitlines():
    line = line.strip()
    bullet = _BULLET_RE.match(line)
    if bullet:
      line = line[bullet.end():].strip()
    line = line.strip('"').strip()
    if not line or line.endswith(":") or line.startswith("```"):
      continue
    if line.lower().rstrip(".") in _NO_FACT_LINES:
      continue
    facts.append(line)
  return facts


def parse_fact_list(text: object, *, max_facts: int = MAX_FACTS,
                    max_fact_chars: int = MAX_FACT_CHARS,
                    max_input_chars: int = MAX_INPUT_CHARS) -> FactParse:
  """Reads a fact extractor reply; never raises.

  A JSON list of strings is the format ("[]" means no facts). Without one, each non-empty line is a
  fact (bullets and numbering stripped, lines ending in ':' skipped) and an error is recorded.

  Returns:
    FactParse(facts, format_error): at most `max_facts` facts, each cut to `max_fact_chars`.
  """
  errors = _Errors()
  if not isinstance(text, str):
    errors.add(f"output is {type(text).__name__}, not str")
    return FactParse([], errors.summary())
  if not text.strip():
    errors.add("empty output")
    return FactParse([], errors.summary())
  if len(text) > max_input_chars:
    errors.add(f"output longer than {max_input_chars} characters; cut")
    text = text[:max_input_chars]
  items = None
  for region in _json_regions(text):
    items = _json_fact_items(region, errors, max_facts)
    if items is not None:
      break
  if items is None:
    errors.add("not a JSON list; read one fact per line")
    items = _line_facts(text)
  strings = [item for item in items if isinstance(item, str) and item.strip()]
  if len(strings) < len(items):
    errors.add("non-string or empty items in the fact list were skipped")
  if len(strings) > max_facts:
    errors.add(f"more than {max_facts} facts; kept the first {max_facts}")
  facts = [_clean_fact(fact, max_fact_chars, errors) for fact in strings[:max_facts]]
  if not facts and items and errors.count:
    errors.add("no usable facts")
  return FactParse(facts, errors.summary())
