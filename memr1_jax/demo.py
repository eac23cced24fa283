r"""mode=demo: the CPU showcase. GRPO / PPO train a memory manager and an answer agent that start from heuristics.

  python -m memr1_jax.main --config=configs/demo.py

Every stage is one of this package's ordinary modes, run on a config derived from the demo's, so the demo goes
through the code path of the real configs (an HF checkpoint directory as the policy, episode runner, memory bank
with the MiniLM encoder, rollout engine, GRPO / PPO update, orbax checkpoints, evaluation). The policy starts from
a small pretrained base shipped in the repo (`DEMO_BASE_DIR`, rebuilt by `python -m memr1_jax.demo`, see
`build_base`): a 0.5M-parameter decoder that has learned to copy (random-token copy exercises) and has read the
task's prompts with well-formed but uninformed replies (random operations; a random statement of the asked
attribute), so it copies and has seen the formats, but has no policy. Its
tokenizer is the demo tokenizer plus one token per agent instruction (`instruction_tokenizer`), which keeps prompts
around 250 tokens on a CPU.

1. Heuristic trajectories (`agents.heuristics`): the ADD-only heuristic manager walks the training conversations
   through `episodes.runner.build_banks` (config.demo.explore of its replies, at the turns config.demo.explore_with
   picks, are other operations, so the SFT model samples them), the first-match heuristic answerer answers their
   questions over ADD-all banks; every (prompt, reply) pair becomes a line of `<workdir>/sft_data.jsonl`.
2. SFT warm start (`mode=sft`): one model imitates both heuristics -> `<workdir>/sft/hf`.
3. RL (`mode=train`) of each agent of `config.demo.agents`, each starting from the SFT model, in
   `<workdir>/<agent>_<algorithm>/`. The manager's reward comes through a frozen answer agent
   (config.train.manager_answerer; configs/demo.py: the heuristic answerer, so the reward measures the manager's
   banks, not the small model's reading).
   Held-out exact match / F1 (and, for the manager, the operation mix of the banks it builds and how often it
   UPDATEs / DELETEs at the turns that change / retract a fact) are measured with greedy decoding before the first
   RL step (the SFT start) and after the last, beside the scripted heuristics (ADD-only, and an informed manager
   that reads the task's statements: the headroom).
4. The table of results (console and `<workdir>/results.md`), `<workdir>/results.json`, and the reward curves
   `<workdir>/reward.png` next to the runs' TensorBoard logs (`tensorboard --logdir <workdir>`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import time

import jax

from memr1_jax import components, console, learner, sft, train
from memr1_jax.agents import heuristics, prompts
from memr1_jax.episodes import batching, runner
from memr1_jax.episodes.policy import ScriptedPolicy
from memr1_jax.metrics_writer import read_jsonl
from memr1_jax.models.loading import export_pretrained

logger = logging.getLogger(__name__)

OPS = ("ADD", "UPDATE", "DELETE", "NOOP")
# The pretrained tiny base model the demo starts from (an HF directory with its tokenizer; `build_base` makes it).
DEMO_BASE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "assets", "demo_base")
# Synthetic-task seed of the base model's pretraining text (the demo's own conversations use config.seed).
BASE_CORPUS_SEED = 1000
# The agents' fixed system prompts: one token each in the demo base's tokenizer (`instruction_tokenizer`).
INSTRUCTIONS = (prompts.MANAGER_SYSTEM_PROMPT, prompts.ANSWER_SYSTEM_PROMPT, prompts.EXTRACTION_SYSTEM_PROMPT)


@dataclasses.dataclass
class AgentResult:
  """Held-out scores of one agent's RL run: `before` (the SFT start) and `after` (the last step), each a dict of
  eval/em, eval/f1 and, for the manager, eval/ops/<OP> shares; the run's directory, the trained policy exported as a
  Hugging Face directory, and the run's wall time."""

  agent: str
  algorithm: str
  before: dict
  after: dict
  workdir: str
  model: str
  seconds: float


def stage_config(config, **fields):
  """A copy of `config` with dotted `fields` replaced (e.g. `**{"rl.actor_lr": 0.0}`)."""
  c = config.copy_and_resolve_references()
  for dotted, value in fields.items():
    node = c
    *parents, leaf = dotted.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return c


def make_sft_data(config, path: str) -> dict:
  """Writes the heuristic agents' trajectories on the training conversations to `path` (JSONL): the answerer's on
  every training question, the manager's on every turn of the first `config.demo.sft_manager_conversations`.

  Returns {"manager": records, "answer": records} counts.
  """
  convs = components.load_splits(config)["train"]
  factory = components.bank_factory(config)
  rcfg = components.runner_config(config)
  manager, _ = heuristics.manager_trajectories(convs[:config.demo.sft_manager_conversations or None], factory, rcfg,
                                               explore=config.demo.explore, explore_with=config.demo.explore_with)
  answer = heuristics.answer_trajectories(convs, runner.add_all_banks(convs, factory, rcfg.extraction), rcfg,
                                         explore=config.demo.answer_explore, seed=config.seed)
  heuristics.write_jsonl(manager + answer, path)
  return {"manager": len(manager), "answer": len(answer)}


def warm_start(config) -> str:
  """Stages 1-2: heuristic trajectories, then SFT of config.model on them. Returns the SFT model's HF directory."""
  data = os.path.join(config.workdir, "sft_data.jsonl")
  counts = make_sft_data(config, data)
  logger.info("demo: %d manager and %d answer trajectories in %s", counts["manager"], counts["answer"], data)
  sft_config = stage_config(config, **{"mode": "sft", "workdir": os.path.join(config.workdir, "sft"),
                                       "sft.path": data, "sft.export_path": ""})
  return sft.run(sft_config)["export_path"]


def rl_config(config, agent: str, init_path: str, workdir: str | None = None):
  """The mode=train config of `agent` starting from the HF directory `init_path` (evaluated only at the end)."""
  steps = config.demo.answer_steps if agent == "answer" else config.demo.manager_steps
  fields = {"mode": "train", "agent": agent, "model.path": init_path, "model.tokenizer": "",
            "workdir": workdir or os.path.join(config.workdir, f"{agent}_{config.algorithm}"),
            "train.num_steps": steps, "train.eval_every": steps, "train.checkpoint_every": steps}
  if agent == "answer" and config.demo.answer_actor_lr:
    fields["rl.actor_lr"] = config.demo.answer_actor_lr
  if agent == "manager" and config.algorithm == "ppo":
    fields.update({f"rl.{k}": v for k, v in config.demo.ppo_manager.items() if v is not None})
  batch = config.rollout.batch_size if agent == "answer" else config.demo.manager_batch_size
  # PPO samples one response per prompt: as many prompts as GRPO has responses keep the update's size
  # (config.demo.ppo_prompts_per_group trades some of them for time).
  per_group = config.demo.ppo_prompts_per_group or config.rollout.group_size
  fields["rollout.batch_size"] = batch * (per_group if config.algorithm == "ppo" else 1)
  return stage_config(config, **fields)


def _eval_scores(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if k.startswith("eval/")}


def train_agent(config, agent: str, init_path: str, workdir: str | None = None, progress=console.bar
                ) -> AgentResult:
  """Stage 3 for one agent: held-out scores of the SFT start, RL, held-out scores after the last step."""
  start = time.perf_counter()
  trainer = train.Trainer(rl_config(config, agent, init_path, workdir), progress)
  before = trainer.evaluate(trainer.config.data.eval_split)
  if trainer.ckpt.latest_step() is None:  # A resumed run logged step 0 on its first try.
    trainer.writer.write(0, before)
  last = trainer.run()
  after = _eval_scores(last) or trainer.evaluate(trainer.config.data.eval_split)  # (a resumed, finished run)
  model = os.path.join(trainer.workdir, "hf")
  export_pretrained(trainer.learner.policy(), model, tokenizer_dir=components.tokenizer_dir(trainer.config),
                    overwrite=True)  # This run's own export of an earlier (interrupted) try.
  return AgentResult(agent, config.algorithm, _eval_scores(before), after, trainer.workdir, model,
                     time.perf_counter() - start)


def _start_child(config) -> None:
  """A worker process's start: logging and JAX settings, then the imports and the CPU backend of a training run."""
  console.setup()
  components.configure_jax(config)
  import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
  jax.devices()


def agent_pool(config, num_runs: int) -> concurrent.futures.ProcessPoolExecutor | None:
  """With config.demo.parallel_agents, on the CPU backend of a single JAX process, for more than one run: a pool of
  `num_runs` spawned processes, already started (imports, JAX backend), for `train_agents`; else None."""
  if not (config.demo.parallel_agents and num_runs > 1 and jax.default_backend() == "cpu"
          and jax.process_count() == 1):
    return None
  pool = concurrent.futures.ProcessPoolExecutor(num_runs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_start_child, initargs=(config,))
  for _ in range(num_runs):  # Each submission starts one more worker, which runs the initializer.
    pool.submit(int)
  return pool


def train_agents(config, runs: list[tuple], init_path: str,
                 pool: concurrent.futures.ProcessPoolExecutor | None = None) -> list[AgentResult]:
  """Stage 3 for several runs from the SFT model `init_path`, each (run config, agent, workdir or None) as for
  `train_agent`. Returns their results in `runs` order.

  The runs are independent; with a pool (`agent_pool(config, len(runs))` unless given) each runs in a process of its
  own, all at once: the same programs on the same inputs, so the same numbers as one after the other, sooner (a small
  model's steps leave much of a CPU idle: the demo's two RL stages on 2 cores). The pool is shut down at the end.
  """
  pool = pool or agent_pool(config, len(runs))
  if pool is None:
    return [train_agent(c, agent, init_path, workdir) for c, agent, workdir in runs]
  # The workers' progress bars are drawn here, one line each, from the updates they send.
  with pool, multiprocessing.get_context("spawn").Manager() as manager:
    queue = manager.Queue()
    renderer = console.BarRenderer(queue)
    try:
      futures = [pool.submit(train_agent, c, agent, init_path, workdir, console.QueueBar(queue, position))
                 for position, (c, agent, workdir) in enumerate(runs)]
      return [f.result() for f in futures]
    finally:
      renderer.stop()


def heuristic_scores(config) -> dict:
  """Held-out scores of the scripted heuristics: {"answer": answerer over ADD-all banks, "manager": the ADD-only
  manager's banks answered by the heuristic answerer, "manager_informed": likewise for the scripted manager that
  reads the task's statements (`heuristics.informed_manager_reply`, the headroom); managers with their operation
  mix}."""
  splits = components.load_splits(config)
  convs = splits[config.data.eval_split]
  factory = components.bank_factory(config)
  rcfg = components.runner_config(config)
  answerer = ScriptedPolicy(heuristics.heuristic_answer_reply)

  def manager_scores(reply):
    banks, stats = runner.greedy_banks(convs, ScriptedPolicy(reply), factory, rcfg)
    return {**runner.heldout_eval(convs, answerer, banks, rcfg),
            **runner.bank_op_scores(convs, stats, config.data.name == "synthetic")}

  return {"answer": runner.heldout_eval(convs, answerer, runner.add_all_banks(convs, factory, rcfg.extraction), rcfg),
          "manager": manager_scores(heuristics.heuristic_manager_reply),
          "manager_informed": manager_scores(heuristics.informed_manager_reply)}


def manager_reader(config) -> str:
  """Who answers from the manager's banks (config.train.manager_answerer), in words."""
  choice = config.train.manager_answerer
  return {"heuristic": "heuristic answerer", "": "SFT answer agent"}.get(choice, os.path.basename(choice))


def results_table(heuristic: dict, results: list[AgentResult], reader: str = "heuristic answerer") -> str:
  """The demo's outcome as a Markdown table: held-out EM / F1 and operation mix per agent and stage, and the share of
  the change / retraction turns at which the manager UPDATEd / DELETEd ("where needed"; and either, at both kinds of
  turn: "replaced where needed"); the manager's EM is that of `reader` (see `manager_reader`) answering from the
  banks the manager built."""
  lines = ["| agent | policy | held-out EM | held-out F1 | ADD | UPDATE | DELETE | NOOP | UPDATE where needed | "
           "DELETE where needed | replaced where needed |", "|---|---|---|---|---|---|---|---|---|---|---|"]

  def row(agent, name, scores):
    needed = ("UPDATE", "DELETE", "UPDATE|DELETE")
    keys = [f"eval/ops/{op}" for op in OPS] + [f"eval/needed/{op}" for op in needed]
    cells = [f"{scores[k]:.0%}" if k in scores else "-" for k in keys]
    lines.append(f"| {agent} | {name} | {scores['eval/em']:.3f} | {scores['eval/f1']:.3f} | " + " | ".join(cells) + " |")

  for agent in dict.fromkeys(r.agent for r in results):
    label = "answer agent (ADD-all banks)" if agent == "answer" else f"memory manager ({reader} answers)"
    row(label, "heuristic" if agent == "answer" else "heuristic ADD-only (heuristic answerer)", heuristic[agent])
    if agent == "manager" and "manager_informed" in heuristic:
      row(label, "scripted informed manager (headroom; not trained on)", heuristic["manager_informed"])
    for r in (r for r in results if r.agent == agent):
      row(label, "SFT start", r.before)
      row(label, f"after {r.algorithm.upper()}", r.after)
  return "\n".join(lines)


def plot_rewards(results: list[AgentResult], path: str) -> str:
  """Saves the training reward (and held-out EM before / after) over RL steps of every run as a PNG at `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False)
  for ax, r in zip(axes[0], results):
    records = [rec for rec in read_jsonl(r.workdir) if "rollout/reward" in rec]
    steps = [rec["step"] for rec in records]
    ax.plot(steps, [rec["rollout/reward"] for rec in records], marker=".", label="training reward (mean)")
    last = max(steps, default=1)
    ax.plot([0, last], [r.before["eval/em"], r.after["eval/em"]], "s--", color="C3", label="held-out EM")
    ax.set_title(f"{r.agent} agent, {r.algorithm.upper()}" if r.agent == "answer" else f"memory manager, "
                 f"{r.algorithm.upper()}")
    ax.set_xlabel("RL step")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def run(config) -> dict:
  """Entry point of mode=demo (see the module docstring). Returns the results dict also written to results.json."""
  start = time.perf_counter()
  os.makedirs(config.workdir, exist_ok=True)
  agents = [a.strip() for a in config.demo.agents.split(",") if a.strip()]
  for agent in agents:
    if agent not in ("answer", "manager"):
      raise components.ConfigError(f"config.demo.agents: {agent!r} is not one of answer, manager")
  if config.model.path and os.path.abspath(config.model.path) == DEMO_BASE_DIR:
    from memr1_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
    if not os.path.exists(os.path.join(DEMO_BASE_DIR, "model.safetensors")):
      raise components.ConfigError(f"config.model.path: the demo base {DEMO_BASE_DIR} is missing; build it with "
                                   "`python -m memr1_jax.demo`")
    check_instruction_tokens(Tokenizer.from_pretrained(DEMO_BASE_DIR))
  timings = {}
  # The RL stages' processes start (imports, JAX) while this one runs the SFT.
  pool = agent_pool(config, len(agents))
  try:
    t = time.perf_counter()
    init_path = warm_start(config)
    timings["heuristic trajectories + SFT"] = time.perf_counter() - t
    t = time.perf_counter()
    results = train_agents(config, [(config, agent, None) for agent in agents], init_path, pool)
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
  for result in results:
    timings[f"{result.agent} {config.algorithm.upper()} (with evaluations)"] = result.seconds
  if len(results) > 1:
    timings["RL of " + " and ".join(agents) + (" at once" if pool else "")] = (
        time.perf_counter() - t)
  t = time.perf_counter()
  heuristic = heuristic_scores(config)
  timings["heuristic baselines"] = time.perf_counter() - t
  table = results_table(heuristic, results, manager_reader(config))
  plot = plot_rewards(results, os.path.join(config.workdir, "reward.png"))
  timings["total"] = time.perf_counter() - start
  out = {"heuristic": heuristic, "runs": [dataclasses.asdict(r) for r in results], "table": table,
         "plot": plot, "seconds": timings, "sft_model": init_path}
  with open(os.path.join(config.workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  with open(os.path.join(config.workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  num_eval = len(components.load_splits(config)[config.data.eval_split])
  lines = [f"\nHeld-out results ({num_eval} conversations, greedy decoding):\n", table, "",
           f"results:      {os.path.join(config.workdir, 'results.md')} (and results.json)",
           f"reward plot:  {plot}", f"SFT model:    {init_path}"]
  names = {"answer": "answer agent:", "manager": "manager:"}
  lines += [f"{names[r.agent]:13} {r.model} (checkpoints: {os.path.join(r.workdir, 'checkpoints')})" for r in results]
  lines += [f"logs:         tensorboard --logdir {config.workdir} (metrics.jsonl in each run's directory)",
            "wall time:    " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())]
  print("\n".join(lines), flush=True)
  return out


# ----------------------------------------------------------------------------------------- the pretrained base


def instruction_tokenizer(out_dir: str) -> str:
  """Writes the demo tokenizer with each agent's fixed system prompt added as one token to `out_dir`.

  The model reads exactly the same text; the constant instructions (324 and 148 tokens otherwise) just cost one
  position each, which makes a CPU-sized model's prompts 2-3x shorter. Returns `out_dir`.
  """
  import shutil  # pylint: disable=g-import-not-at-top

  from tokenizers import AddedToken, Tokenizer  # pylint: disable=g-import-not-at-top

  from memr1_jax.data.demo_tokenizer import DEMO_TOKENIZER_DIR  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  shutil.copy(os.path.join(DEMO_TOKENIZER_DIR, "tokenizer_config.json"), out_dir)
  tokenizer = Tokenizer.from_file(os.path.join(DEMO_TOKENIZER_DIR, "tokenizer.json"))
  tokenizer.add_tokens([AddedToken(text, normalized=False, special=False) for text in INSTRUCTIONS])
  tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
  return out_dir


def check_instruction_tokens(tokenizer) -> None:
  """Raises ConfigError when an agent's system prompt no longer encodes as one token of `tokenizer` (the prompts
  changed since the base was built: rebuild it with `python -m memr1_jax.demo`)."""
  for name in ("MANAGER_SYSTEM_PROMPT", "ANSWER_SYSTEM_PROMPT"):
    if len(tokenizer.encode(getattr(prompts, name))) != 1:
      raise components.ConfigError(
          f"config.model.path: prompts.{name} is not one token of this tokenizer: the prompts changed after the "
          f"demo base was built; rebuild it with `python -m memr1_jax.demo {DEMO_BASE_DIR}`")


def base_corpus(tokenizer, num_conversations: int, rcfg: runner.RunnerConfig, seed: int = 0) -> list[list[int]]:
  """Token ids of pretraining text for the demo base: the manager and answer-agent prompts that the ADD-only
  heuristic meets on `num_conversations` synthetic conversations of seed BASE_CORPUS_SEED (half short and
  change-heavy like configs/demo.py's, half with the task's default knobs), each followed by an uninformed reply
  (`heuristics.random_manager_reply`: random operations; `random_answer_reply`: a random statement of the asked
  attribute, random yes / no) and the EOS token. Retrieval uses a hashing embedder (only the text matters here)."""
  import random  # pylint: disable=g-import-not-at-top

  from memr1_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from memr1_jax.memory.bank import MemoryBank  # pylint: disable=g-import-not-at-top
  from memr1_jax.memory.embedders import HashingEmbedder  # pylint: disable=g-import-not-at-top
  embed = HashingEmbedder(256)
  factory = lambda: MemoryBank(embed, embed.dim, index="brute_force")  # noqa: E731
  half = num_conversations // 2
  short = dict(num_sessions=2, facts_per_speaker=2, update_prob=0.35, retract_prob=0.35, filler_ratio=0.0)
  convs = (synthetic.generate_conversations(half, BASE_CORPUS_SEED, **short)
           + synthetic.generate_conversations(num_conversations - half, BASE_CORPUS_SEED + 1))
  manager, _ = heuristics.manager_trajectories(convs, factory, rcfg)
  answer = heuristics.answer_trajectories(convs, runner.add_all_banks(convs, factory), rcfg)
  rng = random.Random(seed)
  eos = list(tokenizer.eos_token_ids[:1])
  out = []
  for records, reply in ((manager, heuristics.random_manager_reply), (answer, heuristics.random_answer_reply)):
    for r in records:
      out.append(tokenizer.encode_chat(r["messages"]) + tokenizer.encode(reply(r["messages"], rng)) + eos)
  return out


def copy_exercises(tokenizer, count: int, rng, max_len: int) -> list[list[int]]:
  """`count` token-id sequences of pure copying, each at most `max_len` long: random spans of 3-16 random tokens,
  one per line, then the same spans again in a shuffled order. Only a model that copies (an induction head)
  predicts the repeats: random tokens have no prior to fall back on."""
  newline = tokenizer.encode("\n")
  skip = set(tokenizer.eos_token_ids) | {tokenizer.pad_token_id} | set(newline)
  for text in INSTRUCTIONS:
    skip.update(tokenizer.encode(text))
  vocab = [i for i in range(tokenizer.vocab_size) if i not in skip]
  out = []
  for _ in range(count):
    spans, length = [], 0
    while True:
      span = [rng.choice(vocab) for _ in range(rng.randint(3, 16))]
      if 2 * (length + len(span) + len(newline)) > max_len:
        break
      spans.append(span)
      length += len(span) + len(newline)
    order = list(range(len(spans)))
    rng.shuffle(order)
    out.append([i for span in spans for i in span + newline] + [i for k in order for i in spans[k] + newline])
  return out


def build_base(out_dir: str = DEMO_BASE_DIR, *, steps: int = 2000, batch_size: int = 16, lr: float = 1e-3,
               copy_steps: int = 2000, copy_batch_size: int = 32, copy_len: int = 64, copy_share: float = 0.2,
               num_conversations: int = 400, max_len: int = 512, seed: int = 0, init_from: str = "",
               preset: str = "small") -> str:
  """Pretrains the demo's base model and writes it, with its tokenizer, as an HF directory `out_dir`.

  A decoder of `preset` learns, as a plain language model (next-token loss on every token), the prompts of both
  agents on synthetic conversations that the demo never trains or evaluates on, each followed by a random,
  well-formed reply (`base_corpus`), after a first phase of short copy exercises (`copy_exercises`), where a
  2-layer model forms the induction heads it needs to copy facts and values: the stand-in for the pretraining of
  the LLM the paper starts from. Its text shows the formats, copied facts, memories, values and dates, and answers
  read from the memories a question asks about, but no decision (which operation on which memory; which of several
  statements is current, whether a thing is still owned); the demo's SFT stage teaches it the heuristics'
  decisions. `init_from` continues from an HF directory instead of a random init. About 13 minutes on 2 CPU cores
  with the defaults.
  """
  import random  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from memr1_jax.models import config as model_config  # pylint: disable=g-import-not-at-top
  from memr1_jax.models import decoder as decoder_lib  # pylint: disable=g-import-not-at-top
  from memr1_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from memr1_jax.rl import train_state as ts  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer_dir = instruction_tokenizer(os.path.join(tmp, "tokenizer"))
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    corpus = [ids[:max_len] for ids in base_corpus(tokenizer, num_conversations, runner.RunnerConfig(
        related_k=2, answer_k_per_speaker=3), seed)]
    rng = random.Random(seed)
    copying = copy_exercises(tokenizer, 12_800, rng, copy_len)  # The pool the copy phase cycles through.
    corpus += copy_exercises(tokenizer, int(len(corpus) * copy_share / (1 - copy_share)), rng, 128)
    # Next-token loss on every token: the first token is the "prompt", the rest the scored "response".
    examples = [(ids[:1], ids[1:]) for ids in corpus]
    if init_from:
      from memr1_jax.models.loading import load_pretrained  # pylint: disable=g-import-not-at-top
      model, _ = load_pretrained(init_from)
    else:
      cfg = model_config.get_preset(preset, vocab_size=tokenizer.vocab_size)
      model = nnx.merge(*jax.jit(lambda: nnx.split(decoder_lib.Decoder(cfg, rngs=nnx.Rngs(seed))))())
    schedule = ts.learning_rate_schedule(lr, 100)
    state, frozen, spec = ts.init_train_state(model, ts.make_optimizer(schedule), actor_lr=schedule,
                                              reference=False)
    # Short copy exercises first: the 2-layer preset forms its induction heads on 64-token ones at lr 1e-3 in about
    # 1000 steps, and did not within 800-900 steps of 128- or 256-token ones at lr 3e-3; the task's text then keeps a
    # share of longer ones.
    phases = ((copy_steps, [(ids[:1], ids[1:]) for ids in copying], copy_batch_size, copy_len, "copying"),
              (steps, examples, batch_size, 256, "the task's text"))
    for num_steps, items, rows_per_step, bucket, what in phases:
      step_fn = learner.make_sft_step(spec, rows_per_step)
      bar = console.bar(num_steps, desc=f"pretraining the demo base: {what}")
      for step in range(num_steps):
        rows = sft.pack_examples(batching.batch_for_step(items, step, rows_per_step, seed), rows=rows_per_step,
                                 pad_id=tokenizer.pad_token_id, min_prompt_bucket=1, min_response_bucket=bucket)
        state, metrics = step_fn(state, frozen, rows)
        if step % 50 == 0:
          bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
        bar.update(1)
      bar.close()
    # bfloat16 halves the file shipped in the repo; the demo computes in float32 (config.model.dtype).
    export_pretrained(ts.policy_model(spec, state, frozen), out_dir, dtype="bfloat16", tokenizer_dir=tokenizer_dir,
                      overwrite=True)  # Rebuilding replaces the shipped base.
  return out_dir


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  print(build_base(*sys.argv[1:2]))
