"""The default configuration every `configs/*.py` starts from: the paper's Memory-R1 settings.

Config files call `default_config()` and override what differs (model, algorithm, scale), big_vision style:
one code path from the CPU demo to a TPU pod, different numbers.
"""

from __future__ import annotations

import json
import os

import ml_collections

from memr1_jax import fileio

MODES = ("train", "sft", "eval", "export", "prepare", "distill")
AGENTS = ("manager", "answer")
ALGORITHMS = ("grpo", "ppo")


def default_config() -> ml_collections.ConfigDict:
  """Memory-R1 on LoCoMo with GRPO on the answer agent, Qwen-2.5-7B-Instruct (paper settings)."""
  c = ml_collections.ConfigDict()
  # What to run: train | sft | eval | export | prepare (the manager's training tuples) | distill (a teacher's
  # trajectories for Memory-SFT).
  c.mode = "train"
  # Which agent the policy plays: manager (memory operations) | answer (distil memories, answer).
  c.agent = "answer"
  # RL algorithm: grpo (group-normalised advantages, no critic) | ppo (value model + GAE).
  c.algorithm = "grpo"
  # Output directory: checkpoints, TensorBoard logs, eval reports.
  c.workdir = "runs/default"
  # Global seed for parameters, sampling and data order.
  c.seed = 0
  # Task module (`memr1_jax.tasks`): "" (the benchmark of config.data) or an import path whose module supplies the
  # conversations, maybe an extractor, scripted policies, metrics, its own config section and modes.
  c.task = ""
  # Persistent XLA compilation cache directory (empty: off): a rerun loads its programs instead of compiling them.
  c.jax_cache_dir = ""

  c.model = ml_collections.ConfigDict()
  # Hugging Face checkpoint directory of the policy (config.json, *.safetensors, tokenizer files).
  c.model.path = ""
  # Preset name used when `path` is empty (random init; tests, benchmarks and the CPU demo).
  c.model.preset = ""
  # Tokenizer directory (empty: model.path).
  c.model.tokenizer = ""
  # Compute dtype of matmuls.
  c.model.dtype = "bfloat16"
  # Storage dtype of the policy parameters (the learner trains a copy in rl.master_dtype).
  c.model.param_dtype = "bfloat16"
  # Rematerialise each decoder layer in the backward pass.
  c.model.remat = True
  # jax.nn.dot_product_attention implementation: "" (auto), "xla" or "cudnn".
  c.model.attention_impl = ""
  # LoRA rank on the attention and MLP projections; 0 trains all weights.
  c.model.lora_rank = 0
  # LoRA scaling numerator (update = alpha / rank * B A).
  c.model.lora_alpha = 16.0

  c.mesh = ml_collections.ConfigDict()
  # Device mesh shape over (data, fsdp, tensor); one entry may be -1 (all remaining devices).
  c.mesh.shape = (1, -1, 1)
  # Devices the mesh spans: the first N of jax.devices() (-1: all of them; single-process runs only).
  c.mesh.num_devices = -1
  # Call jax.distributed.initialize() (multi-host TPU slices and GPU nodes).
  c.mesh.distributed = False
  # Coordinator "host:port" for multi-host GPU runs (empty: auto-detect on TPU / SLURM).
  c.mesh.coordinator_address = ""
  # Number of processes and this process's id for a manual multi-host start (-1: auto-detect).
  c.mesh.num_processes = -1
  c.mesh.process_id = -1

  c.data = ml_collections.ConfigDict()
  # Dataset: locomo | longmemeval | msc (with config.task set, the task supplies the conversations; a name only).
  c.data.name = "locomo"
  # Path of the data file (e.g. locomo10.json); empty: <data_dir>/locomo/locomo10.json.
  c.data.path = ""
  # Directory holding the datasets (and the tfds cache).
  c.data.data_dir = "data"
  # Split used for best-checkpoint selection (LoCoMo's paper split: conv-26 trains on 152 QA, conv-30 validates on
  # 81, 8 test conversations hold 1307).
  c.data.eval_split = "validation"
  # Include LoCoMo category 5 (adversarial) questions.
  c.data.include_adversarial = False

  c.memory = ml_collections.ConfigDict()
  # Sentence encoder directory for memory embeddings (empty: the bundled all-MiniLM-L6-v2); "hashing" for a model-free one.
  c.memory.encoder = ""
  # Index: scann | brute_force.
  c.memory.index = "scann"
  # Related memories shown to the manager per extracted fact.
  c.memory.related_k = 10
  # Of those, only memories whose embedding inner product with the fact is at least this are shown (-inf: all).
  c.memory.related_min_score = float("-inf")
  # Memories retrieved per speaker for the answer agent (the paper: 30 + 30).
  c.memory.answer_k_per_speaker = 30
  # Fact extraction: simple ("<speaker>: <turn text>", dated by its session) | llm (a frozen model extracts facts)
  # | task (config.task's own model-free extractor). Turns without facts are not shown to the manager.
  c.memory.extraction = "simple"
  # The frozen model of extraction=llm (never the policy under training): a Hugging Face checkpoint directory (run by
  # the rollout engine, greedy) or the base URL of an OpenAI-compatible endpoint ("http(s)://.../v1"); "": none.
  c.memory.extractor = ""
  # Model name sent to the extractor endpoint (URL extractors only).
  c.memory.extractor_model = ""
  # NAME of the environment variable holding the extractor endpoint's API key ("": none); never the key itself.
  c.memory.extractor_api_key_env = "OPENAI_API_KEY"
  # sqlite3 file of the extractor's replies, keyed by extractor and prompt ("": <workdir>/extractor_cache.sqlite).
  c.memory.extractor_cache = ""
  # Requests in flight at once to the extractor endpoint.
  c.memory.extractor_concurrency = 8
  # Seconds before an extractor request times out (then it is retried).
  c.memory.extractor_timeout_s = 60.0
  # Retries of a failed extractor request (HTTP 429 / 5xx, connection errors, timeouts) after backoff_s * 2**i.
  c.memory.extractor_retries = 3
  # Seconds before the first retry of an extractor request (doubled for each further one).
  c.memory.extractor_backoff_s = 1.0
  # Longest extractor reply in tokens.
  c.memory.extractor_max_tokens = 256
  # A malformed extractor reply gives the turn's own text as its one fact (counted) instead of no fact: rehearsals only
  # (a random-weight extractor never writes JSON); real runs keep False, the frozen extractor's word is final.
  c.memory.extractor_fallback = False
  # Instructions of the manager and answer prompts (`agents.prompts.PROMPT_SETS`): paper (the structure of the
  # paper's Appendix C: per-operation instructions with examples; memory distillation, then a brief answer) | compact.
  c.memory.prompts = "paper"
  # Maximum operations applied from one manager output.
  c.memory.max_ops_per_output = 64
  # Embeddings kept in an LRU cache keyed by text (0: off); repeated facts and questions are embedded once.
  c.memory.embedding_cache = 0

  c.rollout = ml_collections.ConfigDict()
  # Prompts per RL step (the paper: batch 128).
  c.rollout.batch_size = 128
  # Samples per prompt (GRPO group size G; PPO uses 1).
  c.rollout.group_size = 8
  # Longest prompt in tokens (longer prompts keep their end).
  c.rollout.max_prompt_len = 4096
  # Longest response in tokens.
  c.rollout.max_new_tokens = 2048
  # Sampling temperature during training (the paper: 1.0).
  c.rollout.temperature = 1.0
  # Nucleus sampling threshold (1.0: off).
  c.rollout.top_p = 1.0
  # Top-k sampling (0: off).
  c.rollout.top_k = 0
  # Rows per generate call on the device (micro-batch of the rollout).
  c.rollout.max_batch = 64
  # Smallest prompt-length bucket (prompt lengths are padded to powers of two from here).
  c.rollout.min_prompt_bucket = 64
  # > 0: prompt lengths are padded to multiples of this instead of powers of two (less padding, more shapes).
  c.rollout.prompt_bucket_multiple = 0
  # Smallest batch bucket in rows (prompts x samples) of a generate call: fewer compilations, but a one-prompt call
  # (a single conversation's walk, one turn at a time) prefills this many rows.
  c.rollout.min_batch_bucket = 8
  # Smallest response-length bucket of the update (powers of two from here): each bucket compiles the update once;
  # max_new_tokens (a power of two) compiles it once only, at the cost of padding short responses.
  c.rollout.min_response_bucket = 16

  c.rl = ml_collections.ConfigDict()
  # Actor learning rate (the paper: 1e-6).
  c.rl.actor_lr = 1e-6
  # Critic learning rate for PPO (the paper: 1e-5).
  c.rl.critic_lr = 1e-5
  # Linear warmup steps of the constant schedule.
  c.rl.warmup_steps = 0
  # PPO: the first N updates train only the value model (actor learning rate 0; verl's trainer.critic_warmup), so
  # that the policy's first advantages come from a critic that has seen returns.
  c.rl.critic_warmup_steps = 0
  # AdamW weight decay.
  c.rl.weight_decay = 0.0
  # Dtype of the trained weights the optimizer updates (float32 keeps a 1e-6 update that bfloat16 rounds away).
  c.rl.master_dtype = "float32"
  # Storage dtype of AdamW's first moment ("": the master dtype); bfloat16 halves its memory.
  c.rl.adam_mu_dtype = ""
  # Storage dtype of AdamW's second moment ("": the master dtype); bfloat16 needs adam_b2 <= 0.995 to decay.
  c.rl.adam_nu_dtype = ""
  # AdamW second-moment decay.
  c.rl.adam_b2 = 0.999
  # Global-norm gradient clipping.
  c.rl.max_grad_norm = 1.0
  # Clipped-surrogate epsilon (low / high; DAPO-style asymmetric when they differ).
  c.rl.clip_eps_low = 0.2
  c.rl.clip_eps_high = 0.2
  # KL coefficient to the frozen reference policy.
  c.rl.kl_coef = 1e-3
  # Where the full-fine-tuning reference copy lives: "device", or "host" (pinned host memory, scored in its own
  # program before each update, so the update step holds no reference weights; LoRA's reference is the base: device).
  c.rl.reference_memory = "device"
  # Where the optimizers' states live between updates (RL and SFT): "device", or "host" (pinned host memory, copied
  # to the device for the optimizer update only, so the forward and backward passes run without them).
  c.rl.optimizer_memory = "device"
  # KL estimator: k1 | k2 | k3.
  c.rl.kl_estimator = "k3"
  # PPO: put the KL into the per-token reward instead of the loss.
  c.rl.kl_in_reward = False
  # Entropy bonus coefficient.
  c.rl.entropy_coef = 0.0
  # Loss aggregation: token_mean | seq_mean_token_mean | seq_mean_token_sum.
  c.rl.loss_aggregation = "token_mean"
  # GRPO: divide group-centred rewards by the group std.
  c.rl.normalize_std = True
  # Optimisation epochs over one rollout batch.
  c.rl.epochs = 1
  # Sequences per micro-batch (gradient accumulation inside the jitted step).
  c.rl.micro_batch_size = 8
  # Optimizer updates per epoch over a rollout batch.
  c.rl.num_minibatches = 1
  # GRPO: at most this many groups per update (0: all), those whose rewards differ first (batching.select_groups;
  # with kl_coef = entropy_coef = 0 a group of equal rewards has no gradient, and the update skips its rows).
  c.rl.max_update_groups = 0
  # PPO: GAE discount and lambda, value clip range.
  c.rl.gamma = 1.0
  c.rl.lam = 1.0
  c.rl.value_clip = 0.2
  # PPO: whiten advantages over the batch's valid tokens.
  c.rl.whiten_advantages = True
  # PPO: whiten the sequence rewards over the batch's rows before GAE (TRL's whiten_rewards): the value model, whose
  # head starts at 0, regresses returns of mean 0 and unit variance instead of first learning the rewards' mean.
  c.rl.whiten_rewards = False
  # Response time steps per vocabulary-projection chunk in the loss (bounds [B, chunk, V] float32 logits).
  c.rl.logprob_chunk = 256
  # Recompute each chunk's logits in the backward pass (less memory) instead of storing them.
  c.rl.remat_logits = True
  # Log-softmax, gather and entropy of each chunk as one custom-VJP op (same values; one recompute in the backward).
  c.rl.fused_logprobs = False
  # GRPO: the group's shared prompt runs once per micro-batch in the update's forward and backward, its n responses
  # attending to its KV (rl.logprobs.shared_prefix_hidden): P + n T positions instead of n (P + T); same values.
  c.rl.shared_prefix = True
  # Reward for a response the parser could not read (format error).
  c.rl.format_penalty = 0.0
  # Share of token F1 in the outcome reward (answer agent; the manager's through its frozen answerer):
  # (1 - w) x exact match + w x token F1. 0: exact match alone, the paper's reward.
  c.rl.f1_reward_weight = 0.0
  # Questions that score a manager response: turn (those its turn completes, the paper) | answerable (every
  # question whose evidence is complete by its turn: an UPDATE / DELETE of a memory still needed costs reward).
  c.rl.manager_reward_questions = "turn"

  c.sft = ml_collections.ConfigDict()
  # JSONL trajectories ({"messages": [...], "response": "..."} per line) for supervised fine-tuning.
  c.sft.path = ""
  # SFT learning rate and epochs.
  c.sft.lr = 1e-5
  c.sft.epochs = 1
  # Sequences per SFT step.
  c.sft.batch_size = 16
  # Sequences per SFT micro-batch (gradient accumulation inside the jitted step).
  c.sft.micro_batch_size = 16
  # SFT steps (0: sft.epochs passes over the trajectories).
  c.sft.num_steps = 0
  # Linear warmup steps of the SFT learning rate.
  c.sft.warmup_steps = 0
  # After the warmup: "constant", or "cosine" (decays to 0 at the last step).
  c.sft.schedule = "constant"
  # SFT AdamW weight decay.
  c.sft.weight_decay = 0.0
  # Save an SFT checkpoint every this many steps (0: only at the end).
  c.sft.checkpoint_every = 0
  # Hugging Face directory the SFT model is exported to (empty: <workdir>/hf); mode=train loads it via model.path.
  c.sft.export_path = ""

  c.train = ml_collections.ConfigDict()
  # RL steps (one rollout batch and its update per step).
  c.train.num_steps = 200
  # Log every this many steps.
  c.train.log_every = 1
  # Evaluate on data.eval_split every this many steps (0: never).
  c.train.eval_every = 20
  # Save a checkpoint every this many steps.
  c.train.checkpoint_every = 10
  # Keep this many most recent checkpoints (plus the best by validation).
  c.train.keep_checkpoints = 3
  # Stop after this many consecutive non-finite updates.
  c.train.max_nonfinite_steps = 3
  # Peak dense bf16 FLOP/s of one device, for the logged MFU (e.g. 989e12 for H100 / H200; 0: not logged).
  c.train.peak_flops_per_device = 0.0
  # At the end, every process prints a SHA-256 of the whole train state (all-gathers it: small models only).
  c.train.log_param_checksum = False
  # The frozen answer agent whose exact match rewards the manager: "" (the starting policy), an HF checkpoint
  # directory, or the name of a scripted policy of config.task (the CPU demo: "heuristic", its first-match answerer).
  c.train.manager_answerer = ""
  # What a manager step samples: tuples (the paper: (turn, temporal memory bank, linked QA) tuples of mode=prepare,
  # built at the first step when <workdir>'s file is missing or stale; rollout.batch_size counts tuples) |
  # conversations (each walked from an empty bank, trained at the turns that complete questions).
  c.train.manager_data = "tuples"
  # The banks the answer agent reads in training and evaluation: "" (built greedily by the starting policy as
  # manager, the paper's Algorithm 2 with the base model), an HF checkpoint directory (a trained manager), or
  # add_all (every extracted fact ADDed: the ablation).
  c.train.answer_banks = ""

  c.eval = ml_collections.ConfigDict()
  # Split to evaluate in mode=eval (LongMemEval and MSC: "test" is every item).
  c.eval.split = "test"
  # The row's name in reports and Table 1 (e.g. "Memory-R1-GRPO", "BASE", "Memory-SFT"); "": the workdir's name.
  c.eval.method = ""
  # Who builds the banks: "" (the policy), "add_all" (every extracted fact ADDed; no model), "base" (config.model's
  # untrained weights), a Hugging Face directory, or a training workdir (its latest checkpoint; "<dir>@best").
  c.eval.manager_path = ""
  # Who answers: "" (the policy), "base", a Hugging Face directory, or a training workdir ("<dir>@best" or "@latest").
  c.eval.answer_path = ""
  # LLM judge (J): "" (off), the base URL of an OpenAI-compatible endpoint, or a local model spec ("base", an HF
  # directory, a training workdir) that is not one of the models under evaluation.
  c.eval.judge = ""
  # Judge model name at the endpoint, and the NAME of the environment variable holding its API key.
  c.eval.judge_model = ""
  c.eval.judge_api_key_env = "OPENAI_API_KEY"
  # Longest judge reply in tokens (a short reason and the label).
  c.eval.judge_max_tokens = 128
  # Retries of a failed judge request (HTTP 429 / 5xx, connection errors, timeouts) after backoff_s * 2**i.
  c.eval.judge_retries = 3
  # Seconds before the first retry of a judge request (doubled for each further one).
  c.eval.judge_backoff_s = 1.0
  # Seconds before a judge request times out (then it is retried).
  c.eval.judge_timeout_s = 60.0
  # Judge requests in flight at once.
  c.eval.judge_concurrency = 8
  # Checkpoint of <workdir>/checkpoints the policy is read from: latest | best (by validation EM) | none (base).
  c.eval.checkpoint = "latest"

  c.distill = ml_collections.ConfigDict()
  # The teacher of mode=distill (Memory-SFT): the base URL of an OpenAI-compatible endpoint, or a local model spec
  # ("base", a Hugging Face directory, a training workdir).
  c.distill.teacher = ""
  # Model name sent to the teacher endpoint (URL teachers only).
  c.distill.teacher_model = ""
  # NAME of the environment variable holding the teacher endpoint's API key ("": none); never the key itself.
  c.distill.teacher_api_key_env = "OPENAI_API_KEY"
  # Longest teacher reply in tokens.
  c.distill.max_tokens = 1024
  # Requests in flight at once, seconds before a request times out, retries after backoff_s * 2**i seconds.
  c.distill.concurrency = 8
  c.distill.timeout_s = 120.0
  c.distill.retries = 3
  c.distill.backoff_s = 1.0
  # sqlite3 file of the teacher's replies ("": <workdir>/distill/teacher_cache.sqlite): a rerun asks nothing again.
  c.distill.cache = ""
  # Split whose conversations the teacher walks (the paper: LoCoMo's train split).
  c.distill.split = "train"
  # Keep only the answer trajectories whose answer matches the gold exactly (else every readable one).
  c.distill.correct_answers_only = False

  c.prepare = ml_collections.ConfigDict()
  # Turns before a tuple's turn that its temporal memory bank is built over (the paper: 50).
  c.prepare.window = 50
  # Who builds that bank: "" (every extracted fact ADDed) or a Hugging Face checkpoint directory (a frozen manager,
  # greedy).
  c.prepare.snapshot_manager = ""
  # Where mode=prepare writes the tuples (JSONL; "": <workdir>/manager_tuples.jsonl).
  c.prepare.path = ""

  c.export = ml_collections.ConfigDict()
  # Where mode=export writes the Hugging Face directory.
  c.export.path = ""
  # Replace a previous export at export.path (never anything else: the run, the model read, other files).
  c.export.overwrite = False
  return c


# The fields naming the environment variables of API keys (the judge's, the fact extractor's endpoint's).
API_KEY_ENV_FIELDS = ("eval.judge_api_key_env", "memory.extractor_api_key_env", "distill.teacher_api_key_env")


def api_key_envs(config) -> dict[str, str]:
  """{field: environment variable name} of the API_KEY_ENV_FIELDS that `config` has and sets (non-empty)."""
  names = {}
  for field in API_KEY_ENV_FIELDS:
    section, name = field.split(".")
    value = config[section].get(name, "") if section in config else ""
    if value:
      names[field] = value
  return names


def redacted(config) -> dict:
  """`config` as a JSON-able dict (for config.json and checkpoint metadata) with the API keys' values redacted.

  The config holds only the NAMES of the keys' environment variables (API_KEY_ENV_FIELDS); should a key itself have
  been pasted into any field, "<redacted>" is saved in its place.
  """
  text = config.to_json_best_effort()
  for key_env in api_key_envs(config).values():
    key = os.environ.get(key_env, "")
    if key:
      text = text.replace(json.dumps(key)[1:-1], "<redacted>")
  return json.loads(text)


def save(config, path: str) -> str:
  """Writes `redacted(config)` to `path` as JSON, atomically (temporary file, then rename); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fileio.write_atomic(path, json.dumps(redacted(config), indent=2, sort_keys=True))
  return path
