"""What the episode runner needs from a model: chats in, sampled responses (with token ids and log-probs) out.

`ChatPolicy` is the one interface the runner talks to. `EnginePolicy` adapts the jitted rollout engine and a
tokenizer to it; `ScriptedPolicy` wraps a plain Python function (heuristic baselines, tests, SFT data makers).
"""

from __future__ import annotations

import dataclasses
import logging
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


class EnginePolicy:
  """A ChatPolicy over a `sampling.RolloutEngine` (which must carry a tokenizer with a chat template).

  Sampling keys are derived from (seed, step, call index), so a run resumed at `step` draws the same samples as an
  uninterrupted one. Call `set_step` at the start of every training step.
  """

  def __init__(self, engine, *, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               max_new_tokens: int | None = None, seed: int = 0):
    self.engine = engine
    self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
    self.max_new_tokens = max_new_tokens
    self.seed = seed
    self.set_step(0)

  def set_model(self, model) -> None:
    """Samples from `model` (the trainer's latest policy weights) from now on."""
    self.engine.set_model(model)

  def set_step(self, step: int) -> None:
    """Restarts the key stream for training step `step`."""
    self._step, self._calls = int(step), 0

  def _next_key(self):
    import jax  # pylint: disable=g-import-not-at-top
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), self._step), self._calls)
    self._calls += 1
    return key

  def generate(self, chats: Sequence[list[ChatMessage]], *, n: int = 1, greedy: bool = False
               ) -> list[list[Sample]]:
    if not chats:
      return []
    limit = self.engine.config.max_prompt_len
    prompts = [self.engine.tokenizer.encode_chat(chat) for chat in chats]
    cut = sum(len(p) > limit for p in prompts)
    if cut:
      logging.warning("%d of %d prompts are longer than max_prompt_len=%d: kept their last %d tokens", cut,
                      len(prompts), limit, limit)
      prompts = [p[-limit:] for p in prompts]
    completions = self.engine.generate(
        prompts, n=n, key=self._next_key(), temperature=0.0 if greedy else self.temperature,
        top_p=self.top_p, top_k=self.top_k, max_new_tokens=self.max_new_tokens)
    out: list[list[Sample]] = [[] for _ in chats]
    for c in completions:
      out[c.prompt_index].append(Sample(
          text=c.text or "", prompt_ids=tuple(c.prompt_ids), response_ids=tuple(c.token_ids),
          logprobs=tuple(float(x) for x in c.logprobs), finish_reason=c.finish_reason))
    return out
