"""Scripted baselines of the CPU demo and the supervised trajectories made from them.

Two deliberately imperfect heuristics, each a function from the prompt the episode runner builds (read through its
structured view, `episodes.policy.ManagerView` / `AnswerView`: the facts and memories shown, never the prompt's text)
to a reply in exactly the format the parsers read, so they plug into the runner as a `ScriptedPolicy` and their
(chat, reply) pairs are SFT data for the model that RL then improves:

- `heuristic_manager_reply`: ADD-only. Every new fact is ADDed, so stale and retracted facts pile up next to the
  current ones ("I moved to Porto." stays beside "I moved to Lyon."; "I sold my bike." beside "I bought a bike.").
  Its SFT trajectories can carry exploration (`manager_trajectories(explore=..., explore_with=...)`): beside the ADD
  reply, a prompt is also recorded with other replies, so a model imitating them samples UPDATE / DELETE at a known
  rate and RL has something to reinforce. "blind": every prompt that shows a related memory gets an UPDATE and a
  DELETE of the most related one (whatever it says), the right and the wrong uses alike; "informed": the prompts
  that need an operation other than ADD get the right one (`informed_manager_reply`), a minority beside the ADD.
- `heuristic_answer_reply`: reads the memories of the person asked about in the order shown (relevance, not time)
  and answers from the FIRST statement about the asked attribute. It never compares dates, so with several
  statements about one attribute it answers "now" questions with whichever is most similar to the question;
  "Does Anna own a bike now?" is "yes" when any memory says she got one, even if another says she sold it.

Trajectories are JSONL records `{"messages": [...], "response": "..."}` (what `memr1_jax.sft` reads):
`manager_trajectories` walks conversations through `episodes.runner.build_banks` with the heuristic manager;
`answer_trajectories` answers every question over given banks with the heuristic answerer.
"""

from __future__ import annotations

import json
import os
import random
import re
import zlib
from collections.abc import Sequence

from memr1_jax.agents.prompts import clean_item, format_memory_line
from memr1_jax.demo import synthetic
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import AnswerView, ManagerView, Prompt, RecordingPolicy
from memr1_jax.memory.bank import MemoryEntry

# A stored memory's text: an optional "[date] " and "Name: " before the statement itself.
_STATEMENT_RE = re.compile(r"^(?:\[[^\]]*\]\s*)?(?:(?P<speaker>[A-Z][a-z]+):\s+)?(?P<statement>.*)$")
# What the heuristic answerer says when it finds nothing.
UNKNOWN_ANSWER = "none"


def _user_text(prompt: Prompt) -> str:
  return next((m["content"] for m in reversed(prompt.messages) if m["role"] == "user"), "")


def _chance(text: str, seed: int) -> float:
  """A deterministic number in [0, 1) from `text` and `seed` (the same in every process)."""
  return zlib.crc32(f"{seed}:{text}".encode("utf-8")) / 2**32


def ops_reply(ops: Sequence[dict]) -> str:
  """The manager reply for `ops` (dicts as in the prompt: {"op": "ADD", "text": ...}, ...), one JSON object."""
  return json.dumps({"operations": list(ops)}, ensure_ascii=False)


def manager_view(prompt: Prompt) -> tuple[list[str], list[tuple[int, str]]]:
  """(facts, related memories as (id, text) in the order shown) of a manager prompt, as the prompt shows them."""
  view = prompt.view
  if not isinstance(view, ManagerView):
    raise TypeError(f"a scripted manager needs the runner's ManagerView, got {type(view).__name__}")
  return ([clean_item(f.text) for f in view.facts],
          [(m.memory_id, clean_item(m.text)) for m in view.memories])


def heuristic_manager_reply(prompt: Prompt) -> str:
  """The ADD-only manager's reply to a manager chat: ADD every fact verbatim (NOOP when the turn has no fact)."""
  facts, _ = manager_view(prompt)
  return ops_reply([{"op": "ADD", "text": fact} for fact in facts] or [{"op": "NOOP"}])


def _statement(text: str) -> tuple[str | None, tuple | None]:
  """(speaker or None, `synthetic.parse_statement` of the statement) of a fact or memory text "Name: statement"."""
  match = _STATEMENT_RE.match(text)
  return match.group("speaker"), synthetic.parse_statement(match.group("statement").strip())


def informed_manager_reply(prompt: Prompt) -> str:
  """A scripted manager that reads the synthetic task's statements (the demo's headroom, never trained on): per
  fact, the shown memory of the same speaker and attribute is DELETEd by a retraction, UPDATEd by a new value and
  kept (NOOP) by a restatement; a fact with no such memory is ADDed."""
  facts, related = manager_view(prompt)
  shown = [(memory_id, _statement(text)) for memory_id, text in related]
  ops = []
  for fact in facts:
    speaker, parsed = _statement(fact)
    same = [(i, p) for i, (s, p) in shown if parsed and p and s == speaker and p[0] == parsed[0]]
    if not same:
      ops.append({"op": "ADD", "text": fact})
    elif parsed[3]:
      ops.append({"op": "DELETE", "id": same[0][0]})
    elif same[0][1][1] != parsed[1]:
      ops.append({"op": "UPDATE", "id": same[0][0], "text": fact})
  return ops_reply(ops or [{"op": "NOOP"}])


def exploratory_manager_replies(prompt: Prompt) -> list[str]:
  """The blind alternatives to the ADD-only reply: the first fact UPDATEs the most related memory shown, or DELETEs
  it (the other facts ADDed). [] when the prompt shows no related memory or has no fact."""
  facts, related = manager_view(prompt)
  if not facts or not related:
    return []
  rest = [{"op": "ADD", "text": fact} for fact in facts[1:]]
  top = related[0][0]
  return [ops_reply([{"op": "UPDATE", "id": top, "text": facts[0]}] + rest),
          ops_reply([{"op": "DELETE", "id": top}] + rest)]


def answer_view(prompt: Prompt) -> tuple[dict[str, list[tuple[int, str, str]]], str]:
  """({speaker: [(memory id, timestamp, text), ...] in the order shown}, question) of an answer prompt, as the
  prompt shows them."""
  view = prompt.view
  if not isinstance(view, AnswerView):
    raise TypeError(f"a scripted answerer needs the runner's AnswerView, got {type(view).__name__}")
  blocks = {name: [(m.memory_id, clean_item(m.timestamp, 100), clean_item(m.text)) for m in memories]
            for name, memories in view.memories.items()}
  return blocks, view.question.question


def _question_patterns() -> list[tuple[str, str, re.Pattern[str]]]:
  """(kind, slot, regex with `name` and maybe `value` groups) for every question template of the synthetic task."""
  out = []
  for slot in synthetic.SLOTS.values():
    templates = {"latest": slot.latest_question, "yes_no": slot.yes_no_question, "before": slot.before_question,
                 "when": slot.when_question}
    for kind, template in templates.items():
      if template is None:
        continue
      pattern = re.escape(template).replace(re.escape("{name}"), r"(?P<name>\w+)")
      pattern = pattern.replace(re.escape("{value}"), r"(?P<value>.+?)")
      out.append((kind, slot.name, re.compile(pattern)))
  return out


_QUESTION_PATTERNS = _question_patterns()


def read_question(question: str) -> tuple[str, str, str, str | None] | None:
  """(kind, slot, name, value) of a synthetic-task question; kind is latest | yes_no | before | when. None if
  the question is not one of the task's templates."""
  for kind, slot, pattern in _QUESTION_PATTERNS:
    if m := pattern.fullmatch(question.strip()):
      return kind, slot, m.group("name"), m.groupdict().get("value")
  return None


def _date_of(timestamp: str) -> str:
  try:
    return synthetic.answer_date_of(timestamp)
  except ValueError:
    return timestamp


def attribute_statements(memories, slot: str) -> list[tuple[int, str, str | None, str | None, bool, str]]:
  """(id, timestamp, new value, old value, is_retraction, text) of the memories that state `slot`, in the order
  shown."""
  out = []
  for memory_id, stamp, text in memories:
    _, parsed = _statement(text)
    if parsed is not None and parsed[0] == slot:
      _, new, old, retraction = parsed
      out.append((memory_id, stamp, new, old, retraction, text))
  return out


def answer_reply(answer: str, lines: Sequence[str] = ()) -> str:
  """An answer-agent reply: the useful memories, one line each (`used_line`), then the "**Answer:**" line."""
  useful = "\n".join(lines) or "none"
  return f"Useful memories:\n{useful}\n**Answer:** {answer}"


def _read_answer_prompt(prompt: Prompt):
  """(kind, value, statements of the asked attribute as `attribute_statements`) of an answer prompt; None when its question
  is not one of the synthetic task's templates."""
  blocks, question = answer_view(prompt)
  read = read_question(question)
  if read is None:
    return None
  kind, slot, name, value = read
  return kind, value, attribute_statements(blocks.get(name, []), slot)


def heuristic_answer(prompt: Prompt, *, explore: float = 0.0, seed: int = 0) -> tuple[str, list[str]]:
  """(answer, reply lines of the memories used) of the first-match answerer for an answer prompt (see the module
  docstring). With probability `explore` (from a hash of the question, its memories and `seed`) it reads the
  statements in a random order instead, so it answers from a random one of them, and flips a yes / no answer."""
  read = _read_answer_prompt(prompt)
  if read is None:
    return UNKNOWN_ANSWER, []
  kind, value, found = read
  draw = _chance(_user_text(prompt), seed)
  if draw < explore:
    random.Random(draw).shuffle(found)
  answer, used = _first_match(kind, value, found)
  if kind == "yes_no" and draw < explore:  # Exploring flips the answer.
    answer = "no" if answer == "yes" else "yes"
  return answer, used


def _first_match(kind: str, value: str | None, found) -> tuple[str, list[str]]:
  """(answer, reply lines of the memories used) read off the first of the `found` statements (see `attribute_statements`)
  that answers a question of `kind` about `value`."""
  stated = [c for c in found if not c[4]]
  if kind == "latest":
    return (stated[0][2], [used_line(stated[0])]) if stated else (UNKNOWN_ANSWER, [])
  if kind == "yes_no":
    same = [c for c in stated if c[2] == value]
    return ("yes", [used_line(same[0])]) if same else ("no", [])
  if kind == "before":
    named = [c for c in stated if c[2] == value and c[3]]
    if named:
      return named[0][3], [used_line(named[0])]
    other = [c for c in stated if c[2] != value]
    return (other[0][2], [used_line(other[0])]) if other else (UNKNOWN_ANSWER, [])
  same = [c for c in stated if c[2] == value] or found
  return (_date_of(same[0][1]), [used_line(same[0])]) if same else (UNKNOWN_ANSWER, [])


def used_line(candidate) -> str:
  """The reply line that lists a statement (see `attribute_statements`) as useful: the compact answer prompt's line
  of that memory, its text, then "[id] (date)". Text first: a small model picks the memory by matching the question
  to a statement and copies the rest of the line (one induction step: in the prompt too its id and date follow it);
  an id first must be chosen from tokens that precede their statement, which the demo base does at chance
  (benchmarks/answer_reading.py). The answer is then read off the reply's own line."""
  memory_id, stamp, *_, text = candidate
  return format_memory_line(MemoryEntry(memory_id, text, "", stamp, ()), with_speaker=False, text_first=True)


def heuristic_answer_reply(prompt: Prompt, *, explore: float = 0.0, seed: int = 0) -> str:
  """The heuristic answerer's reply to an answer prompt, in the format `parsers.parse_answer_output` reads
  (`explore`, `seed` as in `heuristic_answer`)."""
  answer, used = heuristic_answer(prompt, explore=explore, seed=seed)
  return answer_reply(answer, used)


def random_manager_reply(prompt: Prompt, rng: random.Random) -> str:
  """An uninformed but well-formed manager reply: per fact, an operation drawn uniformly from ADD / UPDATE / DELETE /
  NOOP (UPDATE and DELETE only when a related memory is shown) on a uniformly drawn shown memory. The pretraining
  text of the demo's base model: the reply format and the copying of a fact, no decision."""
  facts, related = manager_view(prompt)
  ops = []
  for fact in facts:
    kind = rng.choice(("ADD", "UPDATE", "DELETE", "NOOP") if related else ("ADD", "NOOP"))
    if kind == "ADD":
      ops.append({"op": "ADD", "text": fact})
    elif kind == "UPDATE":
      ops.append({"op": "UPDATE", "id": rng.choice(related)[0], "text": fact})
    elif kind == "DELETE":
      ops.append({"op": "DELETE", "id": rng.choice(related)[0]})
  return ops_reply(ops or [{"op": "NOOP"}])


def random_answer_reply(prompt: Prompt, rng: random.Random) -> str:
  """A well-formed answer reply that understands the question but not time: it reads the memories of the person
  asked about that state the asked attribute, in a random order, and answers from the first that fits (as
  `heuristic_answer` does in the order shown); a yes / no question gets a random "yes" or "no". The pretraining
  text of the demo's base model, the stand-in for an LLM's reading skill: the reply format, finding the statements
  a question is about and reading a value or a date out of one; no notion of which statement is current."""
  read = _read_answer_prompt(prompt)
  if read is None:
    return answer_reply(UNKNOWN_ANSWER)
  kind, value, found = read
  rng.shuffle(found)
  answer, used = _first_match(kind, value, found)
  if kind == "yes_no":
    answer = rng.choice(("yes", "no"))
  return answer_reply(answer, used)


def informed_alternatives(prompt: Prompt) -> list[str]:
  """The informed manager's reply twice where it differs from the ADD-only one (a retraction, change or restatement
  of an attribute whose memory is shown), else []: the right operation as exploration."""
  informed = informed_manager_reply(prompt)
  return [informed, informed] if informed != heuristic_manager_reply(prompt) else []


EXPLORERS = {"informed": informed_alternatives, "blind": exploratory_manager_replies}


def walk_manager(conversations, bank_factory, cfg) -> tuple[RecordingPolicy, list]:
  """Walks `conversations` with the ADD-only heuristic manager through `runner.build_banks` (bank_factory makes an
  empty MemoryBank; cfg: a `runner.RunnerConfig`). Returns (the recording policy: its prompts and records, one per
  turn with facts, in order; the built banks in conversation order)."""
  policy = RecordingPolicy(heuristic_manager_reply)
  banks, _ = runner.build_banks(policy, conversations, bank_factory, cfg, greedy=True)
  return policy, banks


def walk_answerer(conversations, banks: dict, cfg, *, explore: float = 0.0, seed: int = 0) -> RecordingPolicy:
  """The heuristic answerer's answers to every question of `conversations` over `banks` (sample_id -> MemoryBank)
  with `cfg.answer_k_per_speaker` memories per speaker (`explore`, `seed` as in `heuristic_answer`): the recording
  policy, one prompt and record per question."""
  policy = RecordingPolicy(lambda prompt: heuristic_answer_reply(prompt, explore=explore, seed=seed))
  items = [(conv, qa) for conv in conversations for qa in conv.qa]
  runner.answer_episodes(policy, banks, items, cfg, n=1, greedy=True)
  return policy


def manager_trajectories(conversations, bank_factory, cfg, *, explore: float = 0.0, explore_with: str = "informed"
                         ) -> tuple[list[dict], list]:
  """The ADD-only heuristic manager's SFT records over `conversations` (`walk_manager`), with exploration.

  Args:
    conversations: the conversations (their training questions are not used).
    bank_factory: makes an empty MemoryBank. cfg: a `runner.RunnerConfig`.
    explore: the share of exploratory replies among the records of a prompt that has them, in [0, 1): its ADD
      record is repeated round(2 / explore) - 2 times beside the two exploratory records. 0: ADD only. The walk
      itself ADDs.
    explore_with: which replies explore (`EXPLORERS`): "blind" (`exploratory_manager_replies`: one UPDATE and one
      DELETE of the top memory shown, on every prompt that shows one) or "informed" (`informed_alternatives`: the
      right operation, on the prompts that need one other than ADD).

  Returns:
    (records, banks): {"messages", "response"} records (one per turn without exploration), and the built banks in
    conversation order.
  """
  if not 0.0 <= explore < 1.0:
    raise ValueError(f"explore={explore} is not in [0, 1)")
  if explore_with not in EXPLORERS:
    raise ValueError(f"explore_with={explore_with!r} is not one of {tuple(EXPLORERS)}")
  policy, banks = walk_manager(conversations, bank_factory, cfg)
  if not explore:
    return policy.records, banks
  add_copies = max(1, round(2 / explore) - 2)
  records = []
  for prompt, record in zip(policy.prompts, policy.records):
    alternatives = EXPLORERS[explore_with](prompt)
    records += [record] * (add_copies if alternatives else 1)
    records += [{"messages": record["messages"], "response": reply} for reply in alternatives]
  return records, banks


def answer_trajectories(conversations, banks: dict, cfg, *, explore: float = 0.0, seed: int = 0) -> list[dict]:
  """One {"messages", "response"} record per question of `conversations` (`walk_answerer`)."""
  return walk_answerer(conversations, banks, cfg, explore=explore, seed=seed).records


def write_jsonl(records: Sequence[dict], path: str) -> str:
  """Writes `records` one JSON object per line to `path` (directories created); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  return path
