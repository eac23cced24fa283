r"""The CPU demo: SFT on heuristic trajectories, then GRPO on the answer agent and on the memory manager.

  python -m memr1_jax.main --config=configs/demo.py                      # GRPO (about 5 minutes on 2 CPU cores)
  python -m memr1_jax.main --config=configs/demo.py --config.algorithm=ppo --config.rollout.group_size=1

Nothing is downloaded: the synthetic memory task (`memr1_jax.data.synthetic`), the shipped demo tokenizer, a tiny
decoder, and the bundled all-MiniLM-L6-v2 encoder for the memory bank. The same code path as configs/grpo_qwen7b.py
(episode runner, memory bank, rollout engine, GRPO / PPO update, checkpoints, evaluation) with every size shrunk;
see memr1_jax/demo.py for the stages. Prints a table of held-out EM / F1 and the manager's operation mix for the
SFT start and after RL, and writes <workdir>/reward.png next to the TensorBoard logs.
"""

from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.mode = "demo"
  c.workdir = "runs/demo"
  c.model.preset = "tiny"
  c.model.tokenizer = "demo_tokenizer"
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.remat = False

  c.data.name = "synthetic"
  c.data.synthetic_train = 24
  c.data.synthetic_eval = 8
  # A short, change-heavy task: facts stated in session 1, changed / retracted / restated in session 2.
  c.data.synthetic_task.num_sessions = 2
  c.data.synthetic_task.facts_per_speaker = 2
  c.data.synthetic_task.update_prob = 0.35
  c.data.synthetic_task.retract_prob = 0.35
  c.data.synthetic_task.restate_prob = 0.1
  c.data.synthetic_task.filler_ratio = 0.0

  c.memory.encoder = ""  # The bundled all-MiniLM-L6-v2 (Flax).
  c.memory.embedding_cache = 50_000
  c.memory.related_k = 2
  c.memory.answer_k_per_speaker = 3

  c.rollout.batch_size = 8
  c.rollout.group_size = 4
  c.rollout.max_prompt_len = 512
  c.rollout.min_prompt_bucket = 512
  c.rollout.max_new_tokens = 48
  c.rollout.max_batch = 64

  c.rl.actor_lr = 5e-4
  c.rl.critic_lr = 1e-3
  c.rl.kl_coef = 0.0
  c.rl.micro_batch_size = 16

  c.sft.lr = 5e-3
  c.sft.warmup_steps = 20
  c.sft.batch_size = 8
  c.sft.micro_batch_size = 8
  c.sft.num_steps = 150

  c.train.keep_checkpoints = 1

  c.demo.agents = "answer,manager"
  c.demo.answer_steps = 20
  c.demo.manager_steps = 8
  c.demo.manager_batch_size = 4
  c.demo.explore = 0.2
  return c
