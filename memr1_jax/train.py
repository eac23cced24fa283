"""mode=train: Memory-R1 RL of the manager or the answer agent with GRPO or PPO.

One step: episodes (host) -> experiences -> one packed RolloutBatch -> the jitted update (device) -> metrics,
checkpoint, evaluation. Every random choice of step s (data order, sampling keys, update shuffles) is derived from
(config.seed, s), so a run resumed from the checkpoint of step s continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from memr1_jax import components, console, faults, loop, prepare, tasks
from memr1_jax.episodes import batching, runner
from memr1_jax.episodes import tuples as tuples_lib
from memr1_jax.episodes.policy import EnginePolicy
from memr1_jax.errors import ConfigError
from memr1_jax.learner import Learner


def _training_items(config, splits):
  """What one step samples from: (conversation, question) pairs (answer agent), manager tuples
  (`episodes.tuples.ManagerTuple`, from mode=prepare's file, built first when missing or stale) or conversations
  (manager, train.manager_data)."""
  train = splits["train"]
  if config.agent == "answer":
    return [(c, qa) for c in train for qa in c.qa]
  if config.train.manager_data == "tuples":
    return tuples_lib.read_tuples(prepare.run(config)["path"])[0]
  return list(train)


def _summarise(experiences) -> dict:
  if not experiences:
    return {}
  out = {"generations": len(experiences),
         "reward": float(np.mean([e.reward for e in experiences])),
         "response_tokens": float(np.mean([len(e.sample.response_ids) for e in experiences])),
         "truncated": float(np.mean([e.sample.finish_reason == "length" for e in experiences]))}
  if any("questions" in e.info for e in experiences):  # Manager episodes: the frozen answer agent's generations.
    out["answer_generations"] = int(sum(e.info.get("questions", 0) for e in experiences))
  for key in ("em", "f1", "format_error", "ADD", "UPDATE", "DELETE", "NOOP"):
    vals = [e.info[key] for e in experiences if key in e.info]
    if vals:
      out[key if key.islower() else f"ops/{key}"] = float(np.mean(vals))
  return out


class Trainer(loop.TrainingRun):
  """Owns one RL training run: components, learner, episodes and evaluation (checkpoints, metrics and the step loop:
  `loop.TrainingRun`)."""

  def __init__(self, config, progress=console.bar):
    self.config = config
    self.workdir = config.workdir
    os.makedirs(self.workdir, exist_ok=True)
    self.mesh = components.setup_mesh(config)
    self.task = tasks.load(config)
    self.splits = self.task.splits()  # Fails fast on bad data before the model loads.
    self.bank_factory = components.bank_factory(config)
    policy, self.tokenizer = components.load_policy(config, self.mesh)
    self.learner = Learner.create(config, policy, self.mesh, kind="rl")
    self.rcfg = components.runner_config(config)
    self.rollout = components.make_engine_policy(self.learner.policy(), self.tokenizer, config, self.mesh, seed=config.seed)
    # The frozen answer agent that rewards and evaluates the manager.
    self.manager_answerer = self._frozen_answerer() if config.agent == "manager" else None
    self.items = _training_items(config, self.splits)
    if not self.items:
      what = {"answer": "questions"}.get(config.agent, config.train.manager_data)
      raise ConfigError(f"config.data: the training split of {config.data.path or config.data.name} holds no {what} "
                        f"to train the {config.agent} agent on")
    self.answer_banks = {}
    # progress makes the run's progress bar (console.bar, or a console.QueueBar in a worker).
    super().__init__(config, self.learner, self.mesh, progress=progress, best_metric=components.BEST_METRIC)

  def _frozen_answerer(self):
    """The frozen answer agent of config.train.manager_answerer (see defaults.py)."""
    choice = self.config.train.manager_answerer
    model, tokenizer = self.learner.reference(), self.tokenizer
    if choice and not os.path.isdir(choice):
      scripted = self.task.scripted_policy(choice)
      if scripted is None:
        raise ConfigError(f"config.train.manager_answerer: {choice!r} is neither a checkpoint directory nor a "
                          "scripted policy of the task (config.task)")
      return scripted
    if choice:
      model, tokenizer = components.load_policy(self.config, self.mesh, choice)
    return components.make_engine_policy(model, tokenizer, self.config, self.mesh, seed=self.config.seed + 1)

  # Episodes.

  def batch_labels(self, step: int) -> list[str]:
    """Ids of what step `step` trains on: question ids (answer agent) or conversation ids (manager)."""
    batch = batching.batch_for_step(self.items, step, self.config.rollout.batch_size, self.config.seed)
    labels = []
    for item in batch:
      if isinstance(item, tuple):
        labels.append(item[1].qid or item[0].sample_id)
      elif isinstance(item, tuples_lib.ManagerTuple):
        labels.append(f"{item.sample_id}:{item.dia_id}")
      else:
        labels.append(item.sample_id)
    return labels

  def _answer_bank(self, convs):
    """The banks the answer agent reads (config.train.answer_banks), built once per conversation."""
    missing = [c for c in convs if c.sample_id not in self.answer_banks]
    if missing:
      self.answer_banks.update(runner.greedy_banks(missing, self._answer_banks_manager(), self.bank_factory,
                                                   self.rcfg)[0])
    return self.answer_banks

  def _answer_banks_manager(self):
    """The frozen manager that builds the answer agent's banks: None (ADD-all), the starting policy or a checkpoint."""
    choice = self.config.train.answer_banks
    if choice == "add_all":
      return None
    if choice and not os.path.isdir(choice):
      raise ConfigError(f"config.train.answer_banks: {choice!r} is neither add_all nor a checkpoint directory")
    model, tokenizer = (components.load_policy(self.config, self.mesh, choice) if choice
                        else (self.learner.reference(), self.tokenizer))
    return components.make_engine_policy(model, tokenizer, self.config, self.mesh, seed=self.config.seed + 2)

  def episodes(self, step: int) -> list:
    c = self.config
    g = c.rollout.group_size if c.algorithm == "grpo" else 1
    batch = batching.batch_for_step(self.items, step, c.rollout.batch_size, c.seed)
    self.rollout.set_model(self.learner.policy())
    self.rollout.set_step(step)
    if isinstance(self.manager_answerer, EnginePolicy):
      self.manager_answerer.set_step(step)
    if c.agent == "answer":
      banks = self._answer_bank(list({conv.sample_id: conv for conv, _ in batch}.values()))
      return runner.answer_episodes(self.rollout, banks, batch, self.rcfg, n=g)
    if c.train.manager_data == "tuples":
      return runner.tuple_episodes(self.rollout, self.manager_answerer, batch, self.bank_factory, self.rcfg, n=g)[0]
    questions = {conv.sample_id: conv.qa for conv in batch}
    experiences, _ = runner.manager_episodes(self.rollout, self.manager_answerer, batch, questions,
                                             self.bank_factory, self.rcfg, n=g)
    return experiences

  def rollout_metrics(self, step: int, experiences) -> dict:
    """The rollout/* metrics of step `step`'s `experiences`: reward, lengths, EM / F1, operation mix, and the
    task's own (`tasks.Task.experience_metrics`)."""
    batch = batching.batch_for_step(self.items, step, self.config.rollout.batch_size, self.config.seed)
    train = {conv.sample_id: conv for conv in self.splits["train"]}
    ids = [item[0].sample_id if isinstance(item, tuple) else item.sample_id for item in batch]
    convs = [train[i] for i in dict.fromkeys(ids)]
    metrics = {**_summarise(experiences), **(self.task.experience_metrics(experiences, convs) if experiences else {})}
    return {f"rollout/{k}": v for k, v in metrics.items()}

  def evaluate(self, split: str) -> dict:
    """Greedy exact match / F1 of the current policy on `split` (the manager through the frozen answerer)."""
    convs = self.splits[split]
    self.rollout.set_model(self.learner.policy())
    if self.config.agent == "answer":
      return runner.heldout_eval(convs, self.rollout, self._answer_bank(convs), self.rcfg)
    return runner.evaluate_agents(convs, self.rollout, self.manager_answerer, self.bank_factory, self.rcfg,
                                  bank_metrics=self.task.bank_metrics)

  # The loop.

  def run(self) -> dict:
    """Trains from the newest checkpoint to config.train.num_steps (`loop.TrainingRun.run_steps`); returns the last
    step's metrics."""
    c = self.config
    g = c.rollout.group_size if c.algorithm == "grpo" else 1
    dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    rows_multiple = int(np.lcm(c.rl.micro_batch_size * c.rl.num_minibatches, dp))
    pad_id = self.rollout.engine.pad_token_id

    def step_fn(step: int) -> dict:
      t0 = time.perf_counter()
      experiences = self.episodes(step)
      t_rollout = time.perf_counter() - t0
      metrics = self.rollout_metrics(step, experiences)
      if experiences and c.rl.max_update_groups and g > 1:
        experiences, informative = batching.select_groups(experiences, c.rl.max_update_groups,
                                                          np.random.default_rng((c.seed, step)))
        metrics["train/informative_groups"] = informative
      if experiences:
        packed = batching.pack_experiences(experiences, pad_id=pad_id, group_size=g, rows_multiple=rows_multiple,
                                           min_prompt_bucket=c.rollout.min_prompt_bucket,
                                           prompt_bucket_multiple=c.rollout.prompt_bucket_multiple,
                                           min_response_bucket=c.rollout.min_response_bucket)
        faults.corrupt_rewards(self.faults, step, packed)
        t1 = time.perf_counter()
        update_metrics = self.learner.step(packed, key=jax.random.fold_in(jax.random.key(c.seed), step))
        t_update = time.perf_counter() - t1
        tokens = int(packed["prompt_mask_bp"].sum() + packed["response_mask_bt"].sum())
        metrics.update({f"train/{k}": v for k, v in update_metrics.items()})
        metrics.update({"perf/rollout_s": t_rollout, "perf/update_s": t_update,
                        "perf/update_tokens_per_s": tokens / max(t_update, 1e-9),
                        "perf/rollout_tokens_per_s": sum(len(e.sample.response_ids) for e in experiences)
                        / max(t_rollout, 1e-9), "train/rows": packed["real_rows"]})
        if c.train.peak_flops_per_device:
          # 6 N per token and epoch (forward + backward of the policy); scoring passes are not counted.
          flops = 6 * self.learner.spec.policy_cfg.num_params() * tokens * c.rl.epochs
          metrics["perf/mfu"] = flops / max(t_update, 1e-9) / (c.train.peak_flops_per_device * jax.device_count())
      return metrics

    return self.run_steps(step_fn, c.train.num_steps, checkpoint_every=c.train.checkpoint_every,
                          desc=f"{c.agent} {c.algorithm}", update_prefix="train/", bar_keys=BAR_KEYS,
                          evaluate=lambda: self.evaluate(c.data.eval_split), eval_every=c.train.eval_every,
                          batch_labels=lambda step: " ".join(self.batch_labels(step)))


# Shown beside each run's progress bar, when present.
BAR_KEYS = ("rollout/reward", "train/loss", "eval/em")


def run(config) -> dict:
  """Entry point of mode=train; returns the last step's metrics and prints where the run's outputs are."""
  trainer = Trainer(config)
  last = trainer.run()
  scores = "  ".join(f"{k}={v:.3f}" for k, v in last.items() if k.startswith("eval/") and "/" not in k[5:])
  print(f"{config.agent} {config.algorithm}: {config.train.num_steps} steps" + (f"; {scores}" if scores else ""),
        f"  checkpoints: {trainer.ckpt.directory} (latest step {trainer.ckpt.latest_step()})",
        f"  metrics: {os.path.join(trainer.workdir, 'metrics.jsonl')} "
        f"(tensorboard --logdir {os.path.join(trainer.workdir, 'tb')})", sep="\n", flush=True)
  return last
