"""The synthetic task as a `memr1_jax.tasks` task: splits, extractor, scripted answerer, metrics.

A config runs it with `config.task = "memr1_jax.demo"` and the section `config.demo` (`demo.config.section_config`),
as configs/demo.py and configs/smoke.py do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from memr1_jax import tasks
from memr1_jax.agents.extraction import Extraction, simple_fact
from memr1_jax.data.schema import Conversation, Session, Turn
from memr1_jax.demo import policies, synthetic
from memr1_jax.episodes.policy import ScriptedPolicy

def extract_statements(turns: Sequence[tuple[Session, Turn]]) -> list[Extraction]:
  """The task's model-free extractor, the stand-in for a perfect LLM extractor: one `Extraction` per (session,
  turn), holding the turn's simple fact when its text is one of the task's statements (`synthetic.parse_statement`),
  no fact for chit-chat."""
  return [Extraction([simple_fact(session, turn)] if synthetic.parse_statement(turn.text.strip()) else [])
          for session, turn in turns]


def ops_where_needed(conversations: Sequence[Conversation], turn_ops: dict) -> dict[str, float]:
  """How often a manager used the operation each fact turn implies (`synthetic.fact_events`), per implied operation.

  Args:
    conversations: synthetic conversations.
    turn_ops: (sample_id, dia_id) -> the operation kinds of the manager's reply at that turn
      (`episodes.runner.BankStats.turn_ops`); a turn missing from it counts as no operation.

  Returns:
    {"ADD": share, "UPDATE": ..., "DELETE": ..., "NOOP": ...}: the share of the turns implying each operation at
    which the reply contained it (a NOOP turn also counts when the reply had no operation), for the implied
    operations that occur; e.g. "DELETE" is the share of retraction turns at which the manager DELETEd. And
    "UPDATE|DELETE": the share of the change and retraction turns at which the reply UPDATEd or DELETEd, i.e. did
    not leave the stale memory beside the new statement (an UPDATE to "Anna: I sold my bike." retracts as a DELETE
    does: the answerer reads "no" from either); "UPDATE|DELETE_elsewhere": the share of the other fact turns (new
    facts, restatements) at which it did either, overwriting or removing a memory that still holds.
  """
  hits: dict[str, list[bool]] = {}
  for turn, needed in needed_ops(conversations).items():
    used = turn_ops.get(turn, ())
    hits.setdefault(needed, []).append(needed in used or (needed == "NOOP" and not used))
    replaced = bool({"UPDATE", "DELETE"} & set(used))
    hits.setdefault("UPDATE|DELETE" if needed in ("UPDATE", "DELETE") else "UPDATE|DELETE_elsewhere", []).append(
        replaced)
  return {op: sum(h) / len(h) for op, h in hits.items()}


def needed_ops(conversations: Sequence[Conversation]) -> dict[tuple[str, str], str]:
  """(sample_id, dia_id) -> the operation ("ADD", "UPDATE", "DELETE", "NOOP") each fact turn implies
  (`synthetic.fact_events`)."""
  return {(conv.sample_id, event.dia_id): event.op.value
          for conv in conversations for event in synthetic.fact_events(conv)}


def needed_metrics(experiences, conversations: Sequence[Conversation]) -> dict:
  """At the turns that change / retract a fact, the share of the sampled manager responses that UPDATE / DELETE
  ("needed_<OP>/share"), and the mean reward of those and of the others ("needed_<OP>/reward_<OP|other>"): what
  the reward pays for the operation."""
  needed = needed_ops(conversations)
  out = {}
  for op in ("UPDATE", "DELETE"):
    at = [e for e in experiences if e.kind == "manager" and needed.get(e.info["turn"]) == op]
    if at:
      out[f"needed_{op}/share"] = float(np.mean([bool(e.info.get(op)) for e in at]))
    for name, chosen in ((op, [e.reward for e in at if e.info.get(op)]),
                         ("other", [e.reward for e in at if not e.info.get(op)])):
      if chosen:
        out[f"needed_{op}/reward_{name}"] = float(np.mean(chosen))
  return out


class SyntheticTask(tasks.Task):
  """The synthetic memory task of config.demo (conversations of seed config.seed)."""

  def __init__(self, config):
    self.seed = config.seed
    self.train_conversations = config.demo.train_conversations
    self.eval_conversations = config.demo.eval_conversations
    self.knobs = synthetic.TaskKnobs(**config.demo.task)
    self._splits = None

  def splits(self) -> dict[str, list[Conversation]]:
    if self._splits is None:
      train, heldout = synthetic.train_heldout_split(self.train_conversations, self.eval_conversations, self.seed,
                                                     **dataclasses.asdict(self.knobs))
      self._splits = {"train": train, "validation": heldout, "test": heldout}
    return self._splits

  def fact_extractor(self):
    return extract_statements

  def scripted_policy(self, name: str):
    """"heuristic": the first-match answerer (`policies.heuristic_answer_reply`)."""
    return ScriptedPolicy(policies.heuristic_answer_reply) if name == "heuristic" else None

  def experience_metrics(self, experiences, conversations) -> dict:
    return needed_metrics(experiences, conversations)

  def bank_metrics(self, conversations, stats) -> dict:
    return {f"eval/needed/{op}": share for op, share in ops_where_needed(conversations, stats.turn_ops).items()}
