"""Memory-R1 answer agent, GRPO, Qwen-2.5-7B-Instruct on LoCoMo (the paper's main setting).

Launch (TPU v5p-16 / v4-16 slice, or one node of 8 x H100/H200):
  python -m memr1_jax.main --config=configs/grpo_qwen7b.py \
      --config.model.path=$CKPT/Qwen2.5-7B-Instruct --config.data.path=$DATA/locomo10.json \
      --config.workdir=$RUNS/grpo_qwen7b
Train the manager instead with --config.agent=manager. Expect about a day on 8 chips for 200 steps.
"""

from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.agent = "answer"
  c.algorithm = "grpo"
  c.workdir = "runs/grpo_qwen7b"
  c.mesh.shape = (1, -1, 1)
  return c
