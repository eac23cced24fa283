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

from memr1_jax import components, console, faults, loop
from memr1_jax.episodes import batching, runner
from memr1_jax.episodes.policy import EnginePolicy, ScriptedPolicy
from memr1_jax.learner import Learner


def _training_items(config, splits):
  """What one step samples from: (conversation, question) pairs (answer agent) or conversations (manager)."""
  train = splits["train"]
  if config.agent == "answer":
    return [(c, qa) for c in train for qa in c.qa]
  return list(train)


def _summarise(experiences) -> dict:
  if not experiences:
    return {}
  out = {"reward": float(np.mean([e.reward for e in experiences])),
         "response_tokens": float(np.mean([len(e.sample.response_ids) for e in experiences])),
         "truncated": float(np.mean([e.sample.finish_reason == "length" for e in experiences]))}
  for key in ("em", "f1", "format_error", "ADD", "UPDATE", "DELETE", "NOOP"):
    vals = [e.info[key] for e in experiences if key in e.info]
    if vals:
      out[key if key.islower() else f"ops/{key}"] = float(np.mean(vals))
  # Synthetic task (info["needed"], see Trainer.episodes): at the turns that change / retract a fact, the share of
  # the sampled responses that UPDATE / DELETE, and the mean reward of those and of the others: what the reward
  # pays for the operation.
  for op in ("UPDATE", "DELETE"):
    at = [e for e in experiences if e.info.get("needed") == op]
    if at:
      out[f"needed_{op}/share"] = float(np.mean([bool(e.info.get(op)) for e in at]))
    for name, chosen in ((op, [e.reward for e in at if e.info.get(op)]),
                         ("other", [e.reward for e in at if not e.info.get(op)])):
      if chosen:
        out[f"needed_{op}/reward_{name}"] = float(np.mean(chosen))
  return out


class Trainer(loop.TrainingRun):
  """Owns one RL training run: components, learner, episodes and evaluation (checkpoints, metrics and the step loop:
  `loop.TrainingRun`)."""

  def __init__(self, config, progress=console.bar):
    self.config = config
    self.workdir = config.workdir
    os.makedirs(self.workdir, exist_ok=True)
    self.mesh = components.setup_mesh(config)
    self.splits = components.load_splits(config)  # Fails fast on bad data before the model loads.
    self.bank_factory = components.bank_factory(config)
    policy, self.tokenizer = components.load_policy(config, self.mesh)
    self.learner = Learner.create(config, policy, self.mesh, kind="rl")
    self.rcfg = components.runner_config(config)
    self.rollout = components.make_engine_policy(self.learner.policy(), self.tokenizer, config, self.mesh, seed=config.seed)
    # The frozen answer agent that rewards and evaluates the manager.
    self.manager_answerer = self._frozen_answerer() if config.agent == "manager" else None
    self.items = _training_items(config, self.splits)
    if not self.items:
      what = "questions" if config.agent == "answer" else "conversations"
      raise components.ConfigError(f"config.data: the training split of {config.data.path or config.data.name} "
                                   f"holds no {what} to train the {config.agent} agent on")
    self.answer_banks = {}
    # progress makes the run's progress bar (console.bar, or a console.QueueBar in a worker).
    super().__init__(config, self.learner, self.mesh, progress=progress, best_metric=components.BEST_METRIC)

  def _frozen_answerer(self):
    """The frozen answer agent of config.train.manager_answerer (see defaults.py)."""
    choice = self.config.train.manager_answerer
    if choice == "heuristic":
      from memr1_jax.agents import heuristics  # pylint: disable=g-import-not-at-top
      return ScriptedPolicy(heuristics.heuristic_answer_reply)
    model, tokenizer = self.learner.reference(), self.tokenizer
    if choice:
      if not os.path.isdir(choice):
        raise components.ConfigError(f"config.train.manager_answerer: {choice!r} is neither 'heuristic' nor a "
                                     "checkpoint directory")
      model, tokenizer = components.load_policy(self.config, self.mesh, choice)
    return components.make_engine_policy(model, tokenizer, self.config, self.mesh, seed=self.config.seed + 1)

  # Episodes.

  def batch_labels(self, step: int) -> list[str]:
    """Ids of what step `step` trains on: question ids (answer agent) or conversation ids (manager)."""
    batch = batching.batch_for_step(self.items, step, self.config.rollout.batch_size, self.config.seed)
    return [item[1].qid or item[0].sample_id if isinstance(item, tuple) else item.sample_id for item in batch]

  def _answer_bank(self, convs):
    missing = [c for c in convs if c.sample_id not in self.answer_banks]
    self.answer_banks.update(runner.add_all_banks(missing, self.bank_factory, self.config.memory.extraction))
    return self.answer_banks

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
    questions = {conv.sample_id: conv.qa for conv in batch}
    experiences, _ = runner.manager_episodes(self.rollout, self.manager_answerer, batch, questions,
                                             self.bank_factory, self.rcfg, n=g)
    if c.data.name == "synthetic":  # The operation each trained turn implies, for the needed_* metrics.
      from memr1_jax.data.synthetic import needed_ops  # pylint: disable=g-import-not-at-top
      needed = needed_ops(batch)
      for e in experiences:
        e.info["needed"] = needed.get(e.info["turn"])
    return experiences

  def evaluate(self, split: str) -> dict:
    """Greedy exact match / F1 of the current policy on `split` (the manager through the frozen answerer)."""
    convs = self.splits[split]
    self.rollout.set_model(self.learner.policy())
    if self.config.agent == "answer":
      return runner.heldout_eval(convs, self.rollout, self._answer_bank(convs), self.rcfg)
    banks, stats = runner.greedy_banks(convs, self.rollout, self.bank_factory, self.rcfg)
    return {**runner.heldout_eval(convs, self.manager_answerer, banks, self.rcfg),
            **runner.bank_op_scores(convs, stats, self.config.data.name == "synthetic")}

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
      metrics = {f"rollout/{k}": v for k, v in _summarise(experiences).items()}
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
