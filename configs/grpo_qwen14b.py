"""Memory-R1 answer agent, GRPO, Qwen-2.5-14B-Instruct on LoCoMo, LoRA so that it trains on fewer chips.

Launch (TPU v5p-32 or two nodes of 8 x H100; LoRA keeps the reference model free):
  python -m memr1_jax.main --config=configs/grpo_qwen14b.py \
      --config.model.path=$CKPT/Qwen2.5-14B-Instruct --config.data.path=$DATA/locomo10.json \
      --config.workdir=$RUNS/grpo_qwen14b --config.mesh.distributed=True
"""

from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.workdir = "runs/grpo_qwen14b"
  c.model.lora_rank = 64
  c.model.lora_alpha = 128.0
  # FSDP over 8 chips per host, tensor parallel 2 for the 40 heads.
  c.mesh.shape = (1, -1, 2)
  return c
