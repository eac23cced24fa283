"""The synthetic task as a `memr1_jax.tasks` task: its config section, splits, extractor, scripted answerer, metrics.

A config runs it with `config.task = "memr1_jax.demo"` and the section `config.demo` (`section_config`), as
configs/demo.py and configs/smoke.py do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections
import numpy as np

from memr1_jax import tasks
from memr1_jax.agents.extraction import Extraction, simple_fact
from memr1_jax.data.schema import Conversation, Session, Turn
from memr1_jax.demo import policies, synthetic
from memr1_jax.episodes.policy import ScriptedPolicy
from memr1_jax.errors import ConfigError

SECTION = "demo"
# The mode this task adds to memr1_jax.main: the demo's stages (warm start, RL of each agent, report).
MODES = {"demo": "memr1_jax.demo.pipeline"}
AGENTS = ("answer", "manager")


def section_config() -> ml_collections.ConfigDict:
  """The defaults of config.demo: the synthetic task's size and difficulty, and the demo pipeline's knobs."""
  c = ml_collections.ConfigDict()
  # Synthetic conversations for training and for held-out evaluation (validation = test).
  c.train_conversations = 64
  c.eval_conversations = 16
  # Task difficulty (`synthetic.TaskKnobs`): dated sessions per conversation.
  c.task = ml_collections.ConfigDict()
  c.task.num_sessions = 4
  # Attributes (city, job, pet, ...) each speaker holds.
  c.task.facts_per_speaker = 3
  # Chances per later session that a live fact changes value / is retracted / is restated unchanged.
  c.task.update_prob = 0.4
  c.task.retract_prob = 0.15
  c.task.restate_prob = 0.1
  # Chance (repeated) of one more chit-chat exchange before each fact turn.
  c.task.filler_ratio = 0.3
  # Chance that the other speaker's reply repeats the new value.
  c.task.echo_prob = 0.3
  # Changes a fact takes before it only stays, is restated or is retracted.
  c.task.max_updates_per_fact = 2
  # Every change names the value it replaces ("We left Porto for Lyon."); False: often only the new one.
  c.task.changes_name_old = False
  # mode=demo: agents trained with RL after the SFT warm start, in this order (comma-separated).
  c.agents = "answer,manager"
  # Train those agents at once, one spawned process each (CPU backend, one JAX process; else one after the other):
  # the same numbers, sooner.
  c.parallel_agents = True
  # RL steps of the answer agent and of the manager (train.num_steps is set from these per run).
  c.answer_steps = 20
  c.manager_steps = 10
  # RL learning rate of the answer agent (0: rl.actor_lr, which the manager uses).
  c.answer_actor_lr = 0.0
  # Conversations per manager RL step (rollout.batch_size counts questions for the answer agent).
  c.manager_batch_size = 4
  # PPO (one response per prompt): prompts per step = this x the GRPO batch (0: rollout.group_size, GRPO's responses).
  c.ppo_prompts_per_group = 0
  # rl.actor_lr / critic_lr / lam of the manager's PPO run, where not None (None: the rl.* settings).
  c.ppo_manager = ml_collections.ConfigDict({"actor_lr": None, "critic_lr": None, "lam": None})
  # Share of exploratory replies among the heuristic manager's SFT records of a prompt that has them
  # (policies.manager_trajectories; [0, 1), 0: ADD only).
  c.explore = 0.2
  # Which replies explore: informed (the right UPDATE / DELETE / NOOP where one is needed) | blind (an UPDATE and a
  # DELETE of the top related memory on every prompt that shows one).
  c.explore_with = "informed"
  # Share of questions the heuristic answerer answers from a random statement instead of the first shown (SFT data).
  c.answer_explore = 0.0
  # Training conversations whose heuristic manager trajectories join the SFT data (0: all; answers use all).
  c.sft_manager_conversations = 0
  return c


def validate(config, source: str) -> None:
  """Checks config.demo; raises ConfigError naming `source` and the field."""
  d = config.demo
  for name in ("train_conversations", "eval_conversations"):
    if d[name] < 1:
      raise ConfigError(f"{source}: config.demo.{name}={d[name]!r} is out of range: at least 1 conversation")
  try:
    synthetic.TaskKnobs(**d.task)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{source}: config.demo.task: {e}") from None
  if d.explore_with not in policies.EXPLORERS:
    raise ConfigError(f"{source}: config.demo.explore_with={d.explore_with!r} is not one of "
                      f"{tuple(policies.EXPLORERS)}")
  if not 0.0 <= d.explore < 1.0:
    raise ConfigError(f"{source}: config.demo.explore={d.explore!r} is out of range: in [0, 1)")
  for agent in (a.strip() for a in d.agents.split(",") if a.strip()):
    if agent not in AGENTS:
      raise ConfigError(f"{source}: config.demo.agents: {agent!r} is not one of {', '.join(AGENTS)}")


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
    does: the answerer reads "no" from either).
  """
  hits: dict[str, list[bool]] = {}
  for turn, needed in needed_ops(conversations).items():
    used = turn_ops.get(turn, ())
    hits.setdefault(needed, []).append(needed in used or (needed == "NOOP" and not used))
    if needed in ("UPDATE", "DELETE"):
      hits.setdefault("UPDATE|DELETE", []).append(bool({"UPDATE", "DELETE"} & set(used)))
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


def make_task(config) -> SyntheticTask:
  """The task of `config` (see `tasks`)."""
  return SyntheticTask(config)
