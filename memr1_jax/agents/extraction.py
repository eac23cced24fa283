"""Fact extraction per dialogue turn: what the Memory Manager is asked to store.

Two modes (a task may bring a model-free extractor of its own, see `memr1_jax.tasks`):
- simple: the fact is the turn itself, "<speaker>: <text>" (the session date is the memory's timestamp, which
  every prompt shows beside its text);
- LLM: a frozen model reads `prompts.extraction_messages` and replies with a JSON list of facts
  (`parsers.parse_fact_list`); in `extract_facts_llm` a reply with no usable fact and a format error
  falls back to the simple fact, so a turn is never lost to a bad reply. A well-formed "[]" means
  nothing to store. The frozen extractor of `memory.extraction=llm` (`memr1_jax.extractor`) reads
  replies with `facts_from_reply(..., fallback=False)`: there an unusable reply is counted and gives
  no fact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from memr1_jax.agents.parsers import MAX_FACTS, parse_fact_list
from memr1_jax.agents.prompts import ChatMessage, extraction_messages, render_plain_text
from memr1_jax.data.schema import Session, Turn


@dataclasses.dataclass(frozen=True)
class Fact:
  """Information from a turn: its text, who said it, when, and the turn ids it came from."""

  text: str
  speaker: str
  timestamp: str
  source_turn_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Extraction:
  """The facts of one turn, the extractor's format problem (None if none), and whether the simple
  fact replaced an unusable reply."""

  facts: list[Fact]
  format_error: str | None = None
  fell_back: bool = False


def simple_fact(session: Session, turn: Turn) -> Fact:
  """The turn as a fact: "<speaker>: <text>", timestamped with the session's date."""
  return Fact(text=f"{turn.speaker}: {turn.text}", speaker=turn.speaker,
              timestamp=session.date_time, source_turn_ids=(turn.dia_id,))


def extract_facts_simple(turns: Sequence[tuple[Session, Turn]]) -> list[Extraction]:
  """Simple mode: one `Extraction` per (session, turn), holding the turn as its only fact."""
  return [Extraction([simple_fact(session, turn)]) for session, turn in turns]


def _previous_turn(session: Session, turn: Turn) -> Turn | None:
  for index, candidate in enumerate(session.turns):
    if candidate.dia_id == turn.dia_id:
      return session.turns[index - 1] if index > 0 else None
  return None


def extraction_prompt(session: Session, turn: Turn, with_previous_turn: bool = True
                      ) -> list[ChatMessage]:
  """The LLM extractor's messages for `turn`, with the session's preceding turn as context."""
  previous = _previous_turn(session, turn) if with_previous_turn else None
  return extraction_messages(
      turn.text, speaker=turn.speaker, date=session.date_time,
      previous_turn=f"{previous.speaker}: {previous.text}" if previous else None)


def extract_facts_llm(turns: Sequence[tuple[Session, Turn]],
                      generate_fn: Callable[[list[str]], list[str]], *,
                      render: Callable[[list[ChatMessage]], str] = render_plain_text,
                      with_previous_turn: bool = True,
                      max_facts: int = MAX_FACTS) -> list[Extraction]:
  """LLM mode over a batch of (session, turn) pairs with one `generate_fn` call.

  Args:
    turns: the turns to extract from.
    generate_fn: a frozen model, prompt strings in, reply strings out (same order).
    render: chat messages to a prompt string (a chat template, or `render_plain_text`).
    with_previous_turn: show the preceding turn of the session as context.
    max_facts: facts kept per turn.

  Returns:
    One `Extraction` per turn. Facts carry the turn's speaker, session date and dia_id. A reply
    that yields no fact and breaks the format (or a reply list of the wrong length) gives the
    simple fact.
  """
  if not turns:
    return []
  prompts = [render(extraction_prompt(s, t, with_previous_turn)) for s, t in turns]
  replies = list(generate_fn(prompts))
  if len(replies) != len(prompts):
    error = f"generate_fn returned {len(replies)} replies for {len(prompts)} prompts"
    return [Extraction([simple_fact(s, t)], error, True) for s, t in turns]
  return [facts_from_reply(session, turn, reply, max_facts=max_facts)
          for (session, turn), reply in zip(turns, replies)]


def facts_from_reply(session: Session, turn: Turn, reply: object, *, max_facts: int = MAX_FACTS,
                     fallback: bool = True) -> Extraction:
  """The `Extraction` of `turn` read from an extractor's `reply` (`parsers.parse_fact_list`).

  Takes the turn, its session and the reply. Returns its facts, each carrying the turn's speaker, session date and
  dia_id. A reply that yields no fact and breaks the format gives the simple fact with `fallback` (then
  `fell_back`), else no fact; either way `format_error` says what was wrong.
  """
  parsed = parse_fact_list(reply, max_facts=max_facts)
  if not parsed.facts and parsed.format_error is not None:
    return Extraction([simple_fact(session, turn)] if fallback else [], parsed.format_error, fallback)
  facts = [Fact(text, turn.speaker, session.date_time, (turn.dia_id,)) for text in parsed.facts]
  return Extraction(facts, parsed.format_error)
