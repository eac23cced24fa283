"""Tests for the manager's reward in `runner.manager_episodes`: which questions score a sampled operation."""

from __future__ import annotations

import pytest

from memr1_jax.agents.heuristics import ops_reply
from memr1_jax.data.schema import QA, Conversation, Session, Turn
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import Sample, ScriptedPolicy
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder

DIM = 64


class _GroupPolicy:
  """A manager whose i-th sample of every chat is `replies_by_call[call][i]` (one entry per generate call)."""

  def __init__(self, replies_by_call):
    self.calls = list(replies_by_call)

  def generate(self, chats, *, n=1, greedy=False):
    replies = self.calls.pop(0)
    return [[Sample(text=replies[i % len(replies)]) for i in range(n)] for _ in chats]


def _conversation() -> Conversation:
  turns = (Turn("Alice", "I drink black tea.", "D1:1"), Turn("Bob", "I drink coffee.", "D1:2"))
  qa = (QA("What does Alice drink?", "black tea", 1, evidence=("D1:1",), qid="c0:0"),
        QA("What does Bob drink?", "coffee", 1, evidence=("D1:2",), qid="c0:1"))
  return Conversation("c0", "Alice", "Bob", (Session(1, "1 May 2023", turns),), qa)


def _answer(chat) -> str:
  """Answers from the shown memories: the drink stated for the person asked about, else "none"."""
  text = chat[-1]["content"]
  name = "Alice" if "What does Alice" in text else "Bob"
  drink = next((d for d in ("black tea", "coffee") if f"{name} drinks {d}" in text), "none")
  return f"**Answer:** {drink}"


@pytest.mark.parametrize("scope, rewards", [("turn", [1.0, 1.0]), ("answerable", [1.0, 0.5])])
def test_answerable_scope_charges_an_update_that_overwrites_a_needed_memory(scope, rewards):
  """At Bob's turn, ADD and an UPDATE overwriting Alice's memory both answer Bob's question (reward 1 with "turn");
  with "answerable" Alice's question is asked too, so the overwrite scores 0.5."""
  bank = lambda: MemoryBank(HashingEmbedder(DIM), DIM, index="brute_force")  # pylint: disable=unnecessary-lambda-assignment
  manager = _GroupPolicy([
      [ops_reply([{"op": "ADD", "text": "Alice drinks black tea"}])],
      [ops_reply([{"op": "ADD", "text": "Bob drinks coffee"}]),
       ops_reply([{"op": "UPDATE", "id": 0, "text": "Bob drinks coffee"}])],
  ])
  cfg = runner.RunnerConfig(related_k=5, answer_k_per_speaker=5, manager_reward_questions=scope)
  conv = _conversation()
  experiences, _ = runner.manager_episodes(manager, ScriptedPolicy(_answer), [conv], {"c0": conv.qa}, bank, cfg, n=2)
  assert [e.reward for e in experiences] == [1.0, 1.0] + rewards
  assert [e.info["questions"] for e in experiences][2:] == ([1, 1] if scope == "turn" else [2, 2])
