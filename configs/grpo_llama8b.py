"""Memory-R1 answer agent, GRPO, LLaMA-3.1-8B-Instruct on LoCoMo.

Launch (TPU v5p-16 or one node of 8 x H100/H200):
  python -m memr1_jax.main --config=configs/grpo_llama8b.py \
      --config.model.path=$CKPT/Llama-3.1-8B-Instruct --config.data.path=$DATA/locomo10.json \
      --config.workdir=$RUNS/grpo_llama8b
"""

from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.algorithm = "grpo"
  c.workdir = "runs/grpo_llama8b"
  return c
