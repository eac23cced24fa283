"""Learning, end to end: sample -> programmatic reward -> jitted update, on a tiny random-init decoder.

Toy task: each of 4 prompts has a target answer token that must be written twice (a 2-token response); the
reward is the fraction of the 2 response tokens equal to the target (1.0 is the maximum). A random policy over
16 tokens scores about 1/16. GRPO and PPO must bring the mean reward near 1 within a bounded number of steps,
and the same runs with learning rate 0 must stay near chance. Sampling is a small in-test sampler (a full
forward per new token, temperature 1), so this file does not depend on the rollout engine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memr1_jax.models import value as value_lib
from memr1_jax.models.config import get_preset
from memr1_jax.models.decoder import Decoder
from memr1_jax.rl import train_state as ts
from memr1_jax.rl import update as up

VOCAB = 16
CFG = get_preset("tiny", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                 num_kv_heads=1, head_dim=16)
PROMPTS_NP = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]], np.int32)
TARGETS_NA = np.array([[13, 13], [14, 14], [15, 15], [0, 0]], np.int32)
GROUP = 8
STEPS = 50
# Chosen on 4 seeds each (GRPO and PPO): the mean reward of the last 5 steps reached 0.96-0.98.
ACTOR_LR, CRITIC_LR = 3e-3, 1e-2


def _sampler(spec: ts.StateSpec):
  """jitted (policy, frozen_policy, prompts [B, P], key) -> (tokens [B, A], behaviour log-probs [B, A])."""

  @jax.jit
  def sample(policy, frozen_policy, prompts_bp, key):
    model = nnx.merge(spec.policy_graphdef, policy, frozen_policy)
    ids_bs, tokens, logprobs = prompts_bp, [], []
    for _ in range(TARGETS_NA.shape[1]):
      log_probs_bv = jax.nn.log_softmax(model(ids_bs)[:, -1])
      key, sub = jax.random.split(key)
      token_b = jax.random.categorical(sub, log_probs_bv)
      tokens.append(token_b)
      logprobs.append(jnp.take_along_axis(log_probs_bv, token_b[:, None], axis=1)[:, 0])
      ids_bs = jnp.concatenate([ids_bs, token_b[:, None]], axis=1)
    return jnp.stack(tokens, 1), jnp.stack(logprobs, 1)

  return sample


def _train(algorithm: str, lr: float, seed: int = 0) -> np.ndarray:
  """Runs STEPS sample/reward/update steps; returns the mean reward of each step's rollout batch."""
  policy = Decoder(CFG, rngs=nnx.Rngs(seed))
  actor_lr, critic_lr = ts.learning_rate_schedule(lr), ts.learning_rate_schedule(CRITIC_LR if lr else 0.0)
  value_model = value_lib.value_model_from_decoder(policy) if algorithm == "ppo" else None
  state, frozen, spec = ts.init_train_state(
      policy, ts.make_optimizer(actor_lr), actor_lr=actor_lr, value_model=value_model,
      critic_tx=ts.make_optimizer(critic_lr) if value_model else None, critic_lr=critic_lr if value_model else None,
      reference=False)
  config = up.UpdateConfig(algorithm=algorithm, group_size=GROUP, micro_batch_size=16, num_minibatches=2,
                           kl_coef=0.0, logprob_chunk=None)
  update = up.make_update_step(spec, config)
  sample = _sampler(spec)
  prompts_bp = np.repeat(PROMPTS_NP, GROUP, axis=0)
  targets_ba = np.repeat(TARGETS_NA, GROUP, axis=0)
  key = jax.random.key(seed)
  mean_rewards = []
  for _ in range(STEPS):
    key, sample_key, update_key = jax.random.split(key, 3)
    tokens_ba, logprobs_ba = sample(state.policy, frozen.policy, prompts_bp, sample_key)
    rewards_b = (np.asarray(tokens_ba) == targets_ba).mean(axis=1).astype(np.float32)
    mean_rewards.append(rewards_b.mean())
    batch = up.RolloutBatch(prompt_ids_bp=prompts_bp, prompt_mask_bp=np.ones_like(prompts_bp, bool),
                            response_ids_bt=tokens_ba, response_mask_bt=np.ones(tokens_ba.shape, bool),
                            scores_b=rewards_b, old_logprobs_bt=logprobs_ba)
    state, metrics = update(state, frozen, batch, update_key)
    assert float(metrics["skipped"]) == 0.0
  return np.array(mean_rewards)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_learns_toy_task_and_not_with_zero_learning_rate(algorithm):
  """The mean reward goes from chance (~1/16) to >= 0.85 in 50 steps; with lr 0 it stays below 0.25."""
  learned = _train(algorithm, ACTOR_LR)
  frozen = _train(algorithm, 0.0)
  assert learned[:3].mean() < 0.2, learned
  assert learned[-5:].mean() >= 0.85, learned
  assert frozen[-5:].mean() < 0.25 and frozen.mean() < 0.2, frozen
