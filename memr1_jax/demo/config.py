"""The demo's config section, config.demo, its checks and its shipped files: what a config file and main's
validation read, kept free of JAX so that a bad config fails in seconds."""

from __future__ import annotations

import os

import ml_collections
from ml_collections.config_dict import placeholder

from memr1_jax.demo import synthetic
from memr1_jax.errors import ConfigError

SECTION = "demo"
# The mode this task adds to memr1_jax.main: the demo's stages (warm start, RL of each agent, report).
MODES = {"demo": "memr1_jax.demo.pipeline"}
AGENTS = ("answer", "manager")
# Which replies explore in the manager's SFT data (`policies.EXPLORERS`).
EXPLORE_WITH = ("informed", "blind")
# Where the answer agent's RL starts (`pipeline.start_path`).
ANSWER_STARTS = ("base", "sft")
_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
# The shipped demo tokenizer (`tokenizer.py`) and pretrained tiny base model with its tokenizer (`base.py`).
DEMO_TOKENIZER_DIR = os.path.join(_ASSETS, "demo_tokenizer")
DEMO_BASE_DIR = os.path.join(_ASSETS, "demo_base")


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
  # Held-out evaluation every this many RL steps too, logged beside the training metrics (a learning curve; 0: only
  # at the start and after the last step).
  c.eval_every = 0
  # RL learning rate of the answer agent (0: rl.actor_lr, which the manager uses).
  c.answer_actor_lr = 0.0
  # Sampling temperature of the answer agent's RL rollouts (0: rollout.temperature, which the manager uses).
  c.answer_temperature = 0.0
  # Conversations per manager RL step (rollout.batch_size counts questions for the answer agent).
  c.manager_batch_size = 4
  # PPO (one response per prompt): prompts per step = this x the GRPO batch (0: rollout.group_size, GRPO's responses).
  c.ppo_prompts_per_group = 0
  # Each agent's PPO run: its RL steps, rl.actor_lr / critic_lr / critic_warmup_steps / lam / format_penalty and its
  # rollouts' sampling temperature, where not None (None: the agent's steps, demo.answer_actor_lr / answer_temperature
  # for the answer agent, the rl.* / rollout.temperature settings).
  for agent in AGENTS:  # Typed placeholders: None by default, and a command-line flag can set them.
    c[f"ppo_{agent}"] = ml_collections.ConfigDict({"steps": placeholder(int), "actor_lr": placeholder(float),
                                                   "critic_lr": placeholder(float), "lam": placeholder(float),
                                                   "critic_warmup_steps": placeholder(int),
                                                   "format_penalty": placeholder(float),
                                                   "temperature": placeholder(float)})
  # Share of exploratory replies among the heuristic manager's SFT records of a prompt that has them
  # (policies.manager_trajectories; [0, 1), 0: ADD only).
  c.explore = 0.2
  # Which replies explore: informed (the right UPDATE / DELETE / NOOP where one is needed) | blind (an UPDATE and a
  # DELETE of the top related memory on every prompt that shows one).
  c.explore_with = "informed"
  # Where the answer agent's RL starts: base (config.model.path itself, as the paper's answer agent starts from the
  # instruct model) | sft (the SFT model, the manager's start, then also imitating the heuristic answerer).
  c.answer_start = "base"
  # Share of questions the heuristic answerer answers from a random statement instead of the first shown (SFT data).
  c.answer_explore = 0.0
  # Training conversations whose heuristic manager trajectories join the SFT data (0: all; answers use all).
  c.sft_manager_conversations = 0
  return c


# Allowed values of the demo.ppo_<agent> fields that have a range: (what is allowed, its test, what None means).
_PPO_RANGES = {
    "steps": ("at least 1", lambda v: v >= 1, "the agent's steps"),
    "critic_warmup_steps": ("0 or more", lambda v: v >= 0, "rl.critic_warmup_steps"),
    "format_penalty": ("0 or more", lambda v: v >= 0, "rl.format_penalty"),
    "temperature": ("above 0", lambda v: v > 0, "the rollout temperature"),
}


def agent_names(demo) -> list[str]:
  """The agents named by `demo.agents` (config.demo), in order."""
  return [a.strip() for a in demo.agents.split(",") if a.strip()]


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
  if d.answer_start not in ANSWER_STARTS:
    raise ConfigError(f"{source}: config.demo.answer_start={d.answer_start!r} is not one of {ANSWER_STARTS}")
  if d.explore_with not in EXPLORE_WITH:
    raise ConfigError(f"{source}: config.demo.explore_with={d.explore_with!r} is not one of {EXPLORE_WITH}")
  for name in ("answer_actor_lr", "answer_temperature"):
    if d[name] < 0:
      raise ConfigError(f"{source}: config.demo.{name}={d[name]!r} is out of range: 0 (the rl / rollout setting) or "
                        "more")
  for agent in AGENTS:
    for field, (allowed, in_range, unset) in _PPO_RANGES.items():
      value = d[f"ppo_{agent}"][field]
      if value is not None and not in_range(value):
        raise ConfigError(f"{source}: config.demo.ppo_{agent}.{field}={value!r} is out of range: None ({unset}) or "
                          f"{allowed}")
  if d.eval_every < 0:
    raise ConfigError(f"{source}: config.demo.eval_every={d.eval_every!r} is out of range: 0 (after the last step "
                      "only) or more")
  if not 0.0 <= d.explore < 1.0:
    raise ConfigError(f"{source}: config.demo.explore={d.explore!r} is out of range: in [0, 1)")
  for agent in agent_names(d):
    if agent not in AGENTS:
      raise ConfigError(f"{source}: config.demo.agents: {agent!r} is not one of {', '.join(AGENTS)}")
