"""Memory-R1 answer agent, PPO (value model + GAE), Qwen-2.5-7B-Instruct on LoCoMo.

Launch (TPU v5p-16 or one node of 8 x H100/H200; the critic doubles the weight and optimizer memory of GRPO):
  python -m memr1_jax.main --config=configs/ppo_qwen7b.py \
      --config.model.path=$CKPT/Qwen2.5-7B-Instruct --config.data.path=$DATA/locomo10.json \
      --config.workdir=$RUNS/ppo_qwen7b
"""

from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.algorithm = "ppo"
  c.workdir = "runs/ppo_qwen7b"
  # PPO: one sample per prompt; the critic provides the baseline.
  c.rollout.group_size = 1
  c.rl.epochs = 2
  return c
