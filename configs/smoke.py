"""The smallest end-to-end run (tests and CI): tiny random decoder, demo tokenizer, hashing embedder, on the demo's
synthetic task or (variant "locomo") on config.data.

  python -m memr1_jax.main --config=configs/smoke.py --config.workdir=/tmp/smoke
  python -m memr1_jax.main --config=configs/smoke.py:locomo --config.data.path=<locomo10.json> ...
Same code path as configs/grpo_qwen7b.py with every size shrunk; a few seconds per step on 2 CPU cores.
"""

from memr1_jax import demo
from memr1_jax.defaults import default_config


def get_config(variant: str = ""):
  c = default_config()
  if variant not in ("", "locomo"):
    raise ValueError(f"configs/smoke.py: variant {variant!r} is not '' (the synthetic task) or 'locomo'")
  if not variant:
    c.task = "memr1_jax.demo"
    c.demo = demo.section_config()
    c.data.name = "synthetic"
    c.demo.train_conversations = 2
    c.demo.eval_conversations = 1
  c.workdir = "runs/smoke"
  c.model.preset = "tiny"
  c.model.tokenizer = demo.DEMO_TOKENIZER_DIR
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.remat = False
  c.memory.encoder = "hashing:64"
  c.memory.prompts = "compact"
  c.memory.related_k = 3
  c.memory.answer_k_per_speaker = 4
  c.rollout.batch_size = 4
  c.rollout.group_size = 2
  c.rollout.max_prompt_len = 1024
  c.rollout.max_new_tokens = 8
  c.rollout.max_batch = 64
  c.rl.actor_lr = 1e-3
  c.rl.critic_lr = 1e-3
  c.rl.micro_batch_size = 8
  c.train.num_steps = 2
  c.train.eval_every = 2
  c.train.checkpoint_every = 1
  c.train.manager_data = "conversations"
  c.train.answer_banks = "add_all"
  return c
