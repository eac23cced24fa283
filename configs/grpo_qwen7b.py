"""Memory-R1 answer agent, GRPO, Qwen-2.5-7B-Instruct on LoCoMo (the paper's main setting).

Launch (TPU v5p-16 / v4-16 slice, or one node of 8 x H100/H200):
  python -m memr1_jax.main --config=configs/grpo_qwen7b.py \
      --config.model.path=$CKPT/Qwen2.5-7B-Instruct --config.data.path=$DATA/locomo10.json \
      --config.workdir=$RUNS/grpo_qwen7b
Train the manager instead with --config.agent=manager. Expect about a day on 8 chips for 200 steps.
A full-parameter run on a single H200 needs the reference in host memory and bfloat16 AdamW moments:
  --config.mesh.shape='(1,1,1)' --config.rl.reference_memory=host --config.rl.adam_mu_dtype=bfloat16 \
  --config.rl.adam_nu_dtype=bfloat16 --config.rl.adam_b2=0.995
(the fit is XLA's CPU analysis so far, not yet measured on the card: benchmarks/RESULTS.md, issue 30). On an 80 GB
H100 add --config.rl.optimizer_memory=host (AdamW's moments in pinned host memory between updates; unmeasured too).
"""

from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.agent = "answer"
  c.algorithm = "grpo"
  c.workdir = "runs/grpo_qwen7b"
  c.mesh.shape = (1, -1, 1)
  return c
