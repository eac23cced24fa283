r"""The CPU demo: SFT on heuristic trajectories, then GRPO on the answer agent and on the memory manager.

  python -m memr1_jax.main --config=configs/demo.py                        # GRPO
  python -m memr1_jax.main --config=configs/demo.py --config.algorithm=ppo # PPO

(On 2 cores, seeds 0-4: an Intel Xeon, family 6 model 167, took 177-193 s with GRPO and 203-212 s with PPO at a213a0e,
16 held-out conversations; an AMD EPYC, family 23 model 1, 302-368 s and 378-395 s at f43d3c2, 48; PPO in twice
the steps of half the prompts (demo.ppo_prompts_per_group) 485 s there, seed 1. A first run compiles for longer.
docs/demo.md has the seed tables.)

Nothing is downloaded: the synthetic memory task (`memr1_jax.demo`, plugged in as config.task), the shipped tiny
base model with its tokenizer (memr1_jax/demo/assets/demo_base, built by `python -m memr1_jax.demo.base`), and the
bundled all-MiniLM-L6-v2 encoder for the memory bank. The same code path as configs/grpo_qwen7b.py (an HF checkpoint
directory as model.path, episode runner, memory bank, rollout engine, GRPO / PPO update, checkpoints, evaluation)
with every size shrunk; see memr1_jax/demo/pipeline.py for the stages. Prints a table of held-out EM / F1 and the
manager's operation mix for the heuristics, the SFT start and after RL, and writes <workdir>/reward.png next to the
TensorBoard logs.
"""

from memr1_jax import demo
from memr1_jax.defaults import default_config


def get_config():
  c = default_config()
  c.task = "memr1_jax.demo"
  c.demo = demo.section_config()
  c.mode = "demo"
  c.workdir = "runs/demo"
  # Compiled XLA programs are kept here: a second run skips ~75 s of compilation.
  c.jax_cache_dir = "runs/xla_cache"
  c.model.path = demo.DEMO_BASE_DIR
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.remat = False
  # The tiny model on one device: under the test suite's 8 virtual CPU devices it would be sharded 8 ways (other
  # numerics than the demo's own run, and manager steps ~4x slower on 2 cores).
  c.mesh.num_devices = 1

  c.data.name = "synthetic"
  c.demo.train_conversations = 48
  # Held-out conversations (478-519 questions, seeds 0-4): on 16 (151-177) the standard error of an EM near 0.7 is
  # ~0.036 (here ~0.021), as large as the gains to show; seed 2's answer agent gained +0.026 there, +0.071 on these.
  c.demo.eval_conversations = 48
  # A short, change-heavy task: facts stated in session 1, changed / retracted (a few restated) in session 2.
  c.demo.task.num_sessions = 2
  c.demo.task.facts_per_speaker = 2
  c.demo.task.update_prob = 0.35
  c.demo.task.retract_prob = 0.35
  # Fewer restatements ("I still live in Porto", a NOOP turn; only those of the slots that cannot be retracted, city
  # and food, remain: 9 of the 106 held-out fact turns, 16 of 113 at 0.1): the tiny manager does not tell them from
  # changes, and once GRPO teaches it UPDATE it overwrote the original with the restatement, losing its date
  # (held-out EM fell 0.794 -> 0.739, EPYC Genoa, seed 0; the scripted informed manager with UPDATE for NOOP:
  # 0.945 -> 0.848 at restate_prob 0.1, 0.933 -> 0.879 at 0, `python benchmarks/manager_operations.py`).
  c.demo.task.restate_prob = 0.0
  c.demo.task.filler_ratio = 0.0

  c.memory.encoder = ""  # The bundled all-MiniLM-L6-v2 (Flax).
  # The task's rule-based extractor: statement turns are facts, chit-chat has nothing to store.
  c.memory.extraction = "task"
  # The short instructions the shipped base was pretrained on (one token each in its tokenizer).
  c.memory.prompts = "compact"
  c.memory.embedding_cache = 50_000
  c.memory.related_k = 2
  # Shown only when the MiniLM inner product is >= 0.65 (benchmarks/related_scores.py): a training fact with an
  # earlier one of the same speaker and attribute scores 0.70-0.88 against it (quartiles; 81% reach 0.65), a fact
  # without one 0.36-0.55 against its best match (3% reach 0.65; 12% reach 0.6), so a shown memory is nearly always
  # the one the turn may change, and the manager seldom overwrites another attribute's memory.
  c.memory.related_min_score = 0.65
  c.memory.answer_k_per_speaker = 3

  c.rollout.batch_size = 8
  c.rollout.group_size = 8
  c.rollout.max_prompt_len = 512
  # Prompts (manager 80-140 tokens, answer agent 150-190) pad to 192: one shape, a quarter less than 256.
  c.rollout.min_prompt_bucket = 192
  c.rollout.prompt_bucket_multiple = 64
  c.rollout.max_new_tokens = 64
  # The update pads every response to 64 tokens: one compilation per agent instead of up to three (answer replies
  # 12-64 tokens, manager 9-64), ~15 s each with both agents training at once; the same numbers (padding is masked).
  c.rollout.min_response_bucket = 64
  c.rollout.max_batch = 64

  # The manager's GRPO lr (the answer agent's: demo.answer_actor_lr). Seed 0 from one SFT start (EPYC Milan, related
  # memories from 0.6): 0.752 -> 0.636 held-out EM at 1e-3, UPDATEs spreading to new facts and restatements; 0.733 at
  # 3e-4 (docs/demo.md).
  c.rl.actor_lr = 3e-4
  c.rl.critic_lr = 1e-3
  c.rl.kl_coef = 0.0
  c.rl.micro_batch_size = 16
  # GRPO updates on 16 groups of 8: those whose rewards differ first (most of the manager's 24-40 groups per step
  # have equal rewards, no gradient); the manager's update takes 1.9 s instead of 4.2 s per step.
  c.rl.max_update_groups = 16
  # Without it the manager drifts into replies the lenient parser still reads ('{"operations [...'): 96-100% format
  # errors by step 10.
  c.rl.format_penalty = 0.1

  c.sft.lr = 3e-3
  c.sft.warmup_steps = 20
  c.sft.batch_size = 16
  c.sft.micro_batch_size = 16
  # The SFT data hold the manager's records only, as the answer agent starts from the base (seed 1: 655; with the
  # answerer's, 1,154): 170 steps show them about as often as 300 steps of both did (docs/demo.md).
  c.sft.num_steps = 170
  # The lr decays to 0 at the last step: a sharper SFT start that copies facts more faithfully (each garbled memory
  # costs the manager 2-3 questions). SFT start's held-out EM, constant -> decayed lr (EPYC Milan, seeds 0 / 1):
  # manager 0.721 / 0.716 -> 0.776 / 0.751, answer agent 0.327 / 0.402 -> 0.412 / 0.408.
  c.sft.schedule = "cosine"

  c.train.keep_checkpoints = 1
  # The manager's reward scores every question answerable by its turn, not only those the turn completes: an UPDATE /
  # DELETE of a memory still needed costs reward (with "turn", held-out EM fell 0.806 -> 0.788 while the manager
  # learned UPDATE / DELETE; with "answerable" 0.806 -> 0.848, EPYC Milan, manager alone).
  c.rl.manager_reward_questions = "answerable"
  # The manager's reward and held-out EM: the heuristic answerer reads its banks (the banks alone are judged).
  c.train.manager_answerer = "heuristic"
  # The manager walks whole conversations (per-turn branching); the answer agent reads ADD-all banks.
  c.train.manager_data = "conversations"
  c.train.answer_banks = "add_all"

  c.demo.agents = "answer,manager"
  # The answer agent's RL starts from the shipped base, as the paper's answer agent starts from the instruct model:
  # the base (pretrained on the task's answer prompts with uninformed replies) reads better on held-out questions than
  # an SFT model that imitated the heuristic answerer on the 48 training conversations (held-out EM 0.660 against
  # 0.624, seeds 0-4 mean, Intel Xeon, the base before its longer reading phase; that SFT model answers 0.72-0.75 of
  # its training questions: it learns them, not the skill), and after GRPO it ends higher (0.688 against 0.651).
  c.demo.answer_start = "base"
  # 80 steps at lr 2e-4: from the shipped base, held-out EM over the start +0.055 / +0.083 / +0.026 / +0.060 / +0.136
  # (seeds 0-4, Intel Xeon) against +0.042 / +0.095 / +0.026 / +0.006 / +0.096 at 40 steps and 1e-4; at 2e-4 the curve
  # (demo.eval_every=20) peaks at steps 60-80 and falls by step 120 (docs/demo.md). At 3e-4 from an SFT start replies
  # grew past max_new_tokens from step ~22 (a quarter truncated, no answer; seed 0, EPYC Milan).
  c.demo.answer_steps = 80
  c.demo.answer_actor_lr = 2e-4
  # Its PPO: at 1e-4 (at GRPO's 2e-4 it gained less on every seed, Intel Xeon); 80 steps of 16 questions (see
  # ppo_prompts_per_group): +0.089 / +0.069 / +0.052 / +0.053 / +0.058 (seeds 0-4, AMD EPYC family 23 model 1)
  # against +0.078 / +0.067 / +0.055 / +0.047 / +0.050 at 40 steps of 32.
  c.demo.ppo_answer.steps = 80
  c.demo.ppo_answer.actor_lr = 1e-4
  # Its rollouts sample at rollout.temperature (1.0): from the earlier base, held-out EM over the start +0.027 (seeds
  # 0-4 mean, +0.018 to +0.046) against +0.017 at 1.5, which helped the sharper SFT start (demo.answer_temperature).
  c.demo.manager_steps = 12
  c.demo.manager_batch_size = 8
  # Where a turn needs UPDATE / DELETE / NOOP, half the manager's SFT replies there are the right operation, the rest
  # ADD (policies.manager_trajectories): in the first GRPO step the SFT model samples UPDATE / DELETE at 8-45% of
  # the turns needing them (seeds 0-2, EPYC Genoa); with a third, at 1-23%, and GRPO drove most of them to 0.
  c.demo.explore = 0.5
  c.demo.explore_with = "informed"
  # With answer_start = "sft" the SFT model also imitates the heuristic answerer, a quarter of its answers from a
  # random statement.
  c.demo.answer_explore = 0.25
  c.demo.sft_manager_conversations = 48
  # PPO: 2 prompts (one response each) per GRPO group of 8, a quarter of GRPO's responses per step, in twice the
  # steps of 4 (demo.ppo_<agent>.steps): the same prompts in all, twice the updates. The manager's PPO (24 steps of 16
  # conversations), held-out EM, seeds 0-4 from the same SFT starts (AMD EPYC family 23 model 1): 0.808 -> 0.870
  # (+0.052 to +0.087), replaced where needed 77% (66-84%), against 0.855 (+0.012 to +0.059) and 68% (22-84%) at 12
  # steps of 32, where seed 1 kept its UPDATE share at 0.1-0.4 and rose only +0.012 (docs/demo.md).
  c.demo.ppo_prompts_per_group = 2
  # The manager's PPO: actor lr 3e-4 (manager alone from one SFT start, EPYC Milan, at related memories from
  # 0.6 and a constant-lr SFT: at 1e-3 held-out EM fell 0.806 -> 0.733; critic lr 1e-4: 0.709; both 3e-4: 0.848). GAE
  # lambda stays rl.lam = 1 (Monte-Carlo returns): its critic never explains the returns (explained variance <= 0), and
  # at lambda 0.95 the actor followed the critic's bootstrapped values instead of the rewards, learning DELETE at the
  # turns that change a fact: 0.776 -> 0.618 / 0.751 -> 0.615 (seeds 0 / 1); at lambda 1 0.776 -> 0.824 /
  # 0.751 -> 0.840, and above the SFT start and ADD-only on seeds 0-4 (docs/demo.md).
  c.demo.ppo_manager.steps = 24
  c.demo.ppo_manager.actor_lr = 3e-4
  # Its critic trains alone for the first 4 steps (the actor's lr is 0 there), at lr 1e-3: before (critic lr 3e-4, no
  # warmup) seed 2's rollouts raised their UPDATE share at the turns needing one only from 0.15 to 0.25-0.33 in 24
  # steps (0.805 -> 0.810, replacing at 4%), now to 0.43-0.82 over the last 6 (0.805 -> 0.858, 74%); seeds 0-4, held-out
  # EM 0.804 -> 0.862 (+0.051 to +0.071; was 0.844), replacing at 74-84% (was 65%; AMD EPYC family 23 model 1).
  c.demo.ppo_manager.critic_lr = 1e-3
  c.demo.ppo_manager.critic_warmup_steps = 4
  # A malformed reply (a NOOP) costs PPO's manager 0.5 (GRPO's: rl.format_penalty, 0.1): at 0.1 seed 1's rollouts fell
  # into 30% malformed replies at step 16 and ended replacing at 0% of the turns needing it (0.756 -> 0.762); at 0.3
  # they fell to 55% at step 20 and recovered, at 0.5 stayed under 6% (0.756 -> 0.825 both; AMD EPYC family 23 model 1).
  c.demo.ppo_manager.format_penalty = 0.5
  return c
