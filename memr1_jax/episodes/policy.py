"""What the episode runner needs from a model: chats in, sampled responses (with token ids and log-probs) out.

`ChatPolicy` is the one interface the runner talks to. `EnginePolicy` adapts the jitted rollout engine and a
tokenizer to it; `ScriptedPolicy` wraps a plain Python function (heuristic baselines, tests, SFT data makers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from memr1_jax.agents.prompts import ChatMessage


@dataclasses.dataclass(frozen=True)
class Sample:
  """One response to one chat. Token fields are empty for policies without a tokenizer (scripted ones)."""

  text: str
  prompt_ids: tuple[int, ...] = ()
  response_ids: tuple[int, ...] = ()
  logprobs: tuple[float, ...] = ()  # Behaviour log-prob of each response token.
  finish_reason: str = "stop"  # "stop" (EOS / stop token) or "length" (hit max_new_tokens).


class ChatPolicy(Protocol):
  """Samples `n` responses per chat (`greedy`: argmax decoding; then n should be 1)."""

  def generate(self, chats: Sequence[list[ChatMessage]], *, n: int = 1, greedy: bool = False
               ) -> list[list[Sample]]: ...


class ScriptedPolicy:
  """A ChatPolicy from `respond(chat) -> str` (deterministic: the n samples are equal)."""

  def __init__(self, respond: Callable[[list[ChatMessage]], str]):
    self.respond = respond

  def generate(self, chats: Sequence[list[ChatMessage]], *, n: int = 1, greedy: bool = False
               ) -> list[list[Sample]]:
    return [[Sample(text=self.respond(chat))] * n for chat in chats]
