"""Reinforcement learning for Memory-R1: GRPO and PPO losses, advantages, and the update step.

Import the modules themselves (kept out of this file so that importing the package stays light):
  memr1_jax.rl.advantages  grpo_advantages, gae, whiten, outcome_token_rewards
  memr1_jax.rl.losses      policy_gradient_loss, ppo_policy_loss, grpo_loss, kl_penalty,
                           entropy_from_logits, value_loss, explained_variance,
                           aggregate_loss, aggregation_denominator, masked_mean, masked_sum
  memr1_jax.rl.logprobs    response_hidden, token_logprobs, response_logprobs (vocabulary projection chunked)
  memr1_jax.rl.train_state TrainState, FrozenParams, StateSpec, init_train_state, make_optimizer,
                           policy_model, reference_model, value_model
  memr1_jax.rl.update      UpdateConfig, RolloutBatch, make_update_step (the jitted GRPO / PPO step)
"""
