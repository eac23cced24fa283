"""Memory-R1 answer agent, GRPO, Qwen-2.5-3B-Instruct on LoCoMo (the paper's small-model setting).

Launch (TPU v5e-8 / v4-8, or 4 x H100 / one H200 with LoRA):
  python -m memr1_jax.main --config=configs/grpo_qwen3b.py \
      --config.model.path=$CKPT/Qwen2.5-3B-Instruct --config.data.path=$DATA/locomo10.json \
      --config.workdir=$RUNS/grpo_qwen3b
"""

from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.workdir = "runs/grpo_qwen3b"
  return c
