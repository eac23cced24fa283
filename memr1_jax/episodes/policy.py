"""What the episode runner needs from a model: prompts in, sampled responses (with token ids and log-probs) out.

A `Prompt` is the chat a model reads plus, for the runner's own prompts, a structured view of what the chat shows
(`ManagerView`: the turn's facts and the memories shown, numbered by position; `AnswerView`: the question and the
memories shown per speaker). `ChatPolicy` is the one interface the runner talks to. `EnginePolicy` adapts the
jitted rollout engine and a tokenizer to it (it reads the chat); `ScriptedPolicy` wraps a plain Python function of
the prompt (scripted baselines, tests, SFT data makers), which reads the view instead of parsing the chat's text.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import jax

from memr1_jax.agents.extraction import Fact
from memr1_jax.agents.prompts import ChatMessage
from memr1_jax.data.schema import QA
from memr1_jax.memory.bank import MemoryEntry


@dataclasses.dataclass(frozen=True)
class ManagerView:
  """What a manager prompt shows: the turn's facts, the related memories in the order shown (their `memory_id` is
  the position the prompt numbers them by, the id a reply names), who spoke the turn and the session date."""

  facts: tuple[Fact, ...]
  memories: tuple[MemoryEntry, ...]
  speaker: str
  date: str


@dataclasses.dataclass(frozen=True)
class AnswerView:
  """What an answer prompt shows: the question, and per speaker (in display order) the memories shown, in order,
  with their bank ids (the ids a reply lists as useful)."""

  question: QA
  memories: dict[str, tuple[MemoryEntry, ...]]


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One model input: the chat `messages`, and the runner's structured `view` of them (None for other chats)."""

  messages: list[ChatMessage]
  view: ManagerView | AnswerView | None = None


@dataclasses.dataclass(frozen=True)
class Sample:
  """One response to one chat. Token fields are empty for policies without a tokenizer (scripted ones)."""

  text: str
  prompt_ids: tuple[int, ...] = ()
  response_ids: tuple[int, ...] = ()
  logprobs: tuple[float, ...] = ()  # Behaviour log-prob of each response token.
  finish_reason: str = "stop"  # "stop" (EOS / stop token) or "length" (hit max_new_tokens).


class ChatPolicy(Protocol):
  """Samples `n` responses per prompt (`greedy`: argmax decoding; then n should be 1)."""

  def generate(self, prompts: Sequence[Prompt], *, n: int = 1, greedy: bool = False) -> list[list[Sample]]: ...


class ScriptedPolicy:
  """A ChatPolicy from `respond(prompt) -> str` (deterministic: the n samples are equal)."""

  def __init__(self, respond: Callable[[Prompt], str]):
    self.respond = respond

  def generate(self, prompts: Sequence[Prompt], *, n: int = 1, greedy: bool = False) -> list[list[Sample]]:
    return [[Sample(text=self.respond(prompt))] * n for prompt in prompts]


class RecordingPolicy(ScriptedPolicy):
  """A ScriptedPolicy that also records every prompt it answered (`prompts`) and, for each, the SFT trajectory
  record `{"messages": [...], "response": str}` (`records`)."""

  def __init__(self, respond: Callable[[Prompt], str]):
    super().__init__(respond)
    self.prompts: list[Prompt] = []
    self.records: list[dict] = []

  def generate(self, prompts: Sequence[Prompt], *, n: int = 1, greedy: bool = False) -> list[list[Sample]]:
    out = super().generate(prompts, n=n, greedy=greedy)
    self.prompts += prompts
    self.records += [{"messages": [dict(m) for m in p.messages], "response": s[0].text} for p, s in zip(prompts, out)]
    return out


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
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), self._step), self._calls)
    self._calls += 1
    return key

  def generate(self, prompts: Sequence[Prompt], *, n: int = 1, greedy: bool = False) -> list[list[Sample]]:
    if not prompts:
      return []
    limit = self.engine.config.max_prompt_len
    ids = [self.engine.tokenizer.encode_chat(p.messages) for p in prompts]
    cut = sum(len(i) > limit for i in ids)
    if cut:
      logging.warning("%d of %d prompts are longer than max_prompt_len=%d: kept their last %d tokens", cut,
                      len(ids), limit, limit)
      ids = [i[-limit:] for i in ids]
    completions = self.engine.generate(
        ids, n=n, key=self._next_key(), temperature=0.0 if greedy else self.temperature,
        top_p=self.top_p, top_k=self.top_k, max_new_tokens=self.max_new_tokens)
    out: list[list[Sample]] = [[] for _ in prompts]
    for c in completions:
      out[c.prompt_index].append(Sample(
          text=c.text or "", prompt_ids=tuple(c.prompt_ids), response_ids=tuple(c.token_ids),
          logprobs=tuple(float(x) for x in c.logprobs), finish_reason=c.finish_reason))
    return out
