"""mode=train: Memory-R1 RL of the manager or the answer agent with GRPO or PPO.

One step: episodes (host) -> experiences -> one packed RolloutBatch -> the jitted update (device) -> metrics,
checkpoint, evaluation. Every random choice of step s (data order, sampling keys, update shuffles) is derived from
(config.seed, s), so a run resumed from the checkpoint of step s continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time

import jax
import numpy as np

from memr1_jax import components, console, defaults, errors, faults, multihost
from memr1_jax.checkpoint import Checkpointer
from memr1_jax.episodes import batching, runner
from memr1_jax.episodes.policy import EnginePolicy, ScriptedPolicy
from memr1_jax.learner import Learner
from memr1_jax.metrics_writer import MetricsWriter

logger = logging.getLogger(__name__)


class NonFiniteError(errors.Error, RuntimeError):
  """Too many consecutive updates had a non-finite loss or gradient."""


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


class Trainer:
  """Owns one training run: components, learner, checkpoints, metrics."""

  def __init__(self, config, progress=console.bar):
    self.config = config
    self.progress = progress  # Makes the run's progress bar (console.bar, or a console.QueueBar in a worker).
    self.faults = faults.from_env()  # Test-only fault injection (MEMR1_FAULT); {} in normal runs.
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
    self.ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), keep_last=config.train.keep_checkpoints,
                             best_metric=components.BEST_METRIC)
    self.writer = MetricsWriter(self.workdir, enabled=jax.process_index() == 0)
    self.start_step = 0
    self._stop_signal = None

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

  # Checkpoints.

  def _ckpt_state(self, step: int) -> dict:
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    return {"learner": self.learner.state, "step": multihost.put_global(np.asarray(step, np.int32), replicated)}

  def maybe_restore(self) -> None:
    """Resumes from the newest complete checkpoint of this workdir, if any."""
    if self.ckpt.latest_step() is None:
      return
    restored, meta, step = self.ckpt.restore(self._ckpt_state(0))
    self.learner.state = restored["learner"]
    self.start_step = int(meta["next_step"])
    logger.info("resumed from %s at step %d", self.ckpt.directory, self.start_step)
    # Reopened at the restored step: what a killed run logged after its checkpoint leaves metrics.jsonl and TensorBoard.
    self.writer.close()
    self.writer = MetricsWriter(self.workdir, enabled=jax.process_index() == 0, resume_step=self.start_step)

  def save(self, next_step: int, metrics: dict | None = None) -> None:
    meta = {"next_step": next_step, "config": defaults.redacted(self.config)}
    self.ckpt.save(next_step, self._ckpt_state(next_step), meta, metrics=metrics)

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

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    self._stop_signal = signum
    logger.warning("signal %d: will checkpoint and exit after the current step", signum)

  def run(self) -> dict:
    c = self.config
    self.maybe_restore()
    previous = signal.signal(signal.SIGTERM, self._on_signal)
    g = c.rollout.group_size if c.algorithm == "grpo" else 1
    dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    rows_multiple = int(np.lcm(c.rl.micro_batch_size * c.rl.num_minibatches, dp))
    pad_id = self.rollout.engine.pad_token_id
    nonfinite, last, bar, stopped_after = 0, {}, None, None
    try:
      bar = self.progress(c.train.num_steps, initial=self.start_step, desc=f"{c.agent} {c.algorithm}",
                          disable=jax.process_index() != 0)
      for step in range(self.start_step, c.train.num_steps):
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
          if update_metrics.get("skipped", 0.0) > 0 or not math.isfinite(update_metrics.get("loss", 0.0)):
            nonfinite += 1
            logger.error("step %d: non-finite loss or gradient, update skipped (%d in a row); batch: %s", step,
                         nonfinite, " ".join(self.batch_labels(step)))
            if nonfinite >= c.train.max_nonfinite_steps:
              good = self.ckpt.last_finite_step()  # Newer checkpoints may hold NaN / inf.
              raise NonFiniteError(
                  f"{nonfinite} consecutive non-finite updates (last at step {step}); stopping. "
                  + (f"The last good checkpoint is step {good} in {self.ckpt.directory}" if good is not None else
                     f"No checkpoint in {self.ckpt.directory} holds only finite values"))
          else:
            nonfinite = 0
        if c.train.eval_every and (step + 1) % c.train.eval_every == 0:
          metrics.update(self.evaluate(c.data.eval_split))
        self.writer.write(step + 1, metrics)
        bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in BAR_KEYS if k in metrics}, refresh=False)
        bar.update(1)
        last = metrics
        if (step + 1) % c.train.checkpoint_every == 0 or step + 1 == c.train.num_steps or self._stop_signal:
          self.save(step + 1, {k: v for k, v in metrics.items() if k == "eval/em"} or None)
        if self._stop_signal:
          stopped_after = step + 1
          break
      if c.train.log_param_checksum:  # Every process prints its view: equal digests = the hosts agree.
        updates = int(multihost.to_host(self.learner.state.updates))
        print(f"param_checksum process={jax.process_index()} updates={updates} "
              f"sha256={multihost.tree_checksum(self.learner.state)}", flush=True)
    finally:
      if bar is not None:
        bar.close()
      signal.signal(signal.SIGTERM, previous)
      self.ckpt.close()
      self.writer.close()
    if stopped_after is not None:
      raise errors.Preempted(f"stopped by signal {self._stop_signal} after step {stopped_after} (checkpoint saved in "
                             f"{self.ckpt.directory})")
    return last


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
