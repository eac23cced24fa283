"""Memory-R1 answer agent, PPO, LLaMA-3.1-8B-Instruct on LoCoMo.

Launch (TPU v5p-16 or one node of 8 x H100/H200):
  python -m memr1_jax.main --config=configs/ppo_llama8b.py \
      --config.model.path=$CKPT/Llama-3.1-8B-Instruct --config.data.path=$DATA/locomo10.json \
      --config.workdir=$RUNS/ppo_llama8b
"""

from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.algorithm = "ppo"
  c.workdir = "runs/ppo_llama8b"
  c.rollout.group_size = 1
  c.rl.epochs = 2
  return c
