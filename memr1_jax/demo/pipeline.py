r"""mode=demo (the mode `memr1_jax.demo` adds to main): the CPU showcase. GRPO / PPO train a memory manager that
starts from heuristic trajectories and an answer agent that starts from the pretrained base.

  python -m memr1_jax.main --config=configs/demo.py

Every stage is one of this package's ordinary modes, run on a config derived from the demo's, so the demo goes
through the code path of the real configs (an HF checkpoint directory as the policy, episode runner, memory bank
with the MiniLM encoder, rollout engine, GRPO / PPO update, orbax checkpoints, evaluation). The policy starts from
a small pretrained base shipped in the repo (`base.DEMO_BASE_DIR`, rebuilt by `python -m memr1_jax.demo.base`): a
0.5M-parameter decoder that has learned to copy (random-token copy exercises) and has read the task's prompts with
well-formed but uninformed replies (random operations; a random statement of the asked attribute), so it copies,
has seen the formats and answers from a statement of the asked attribute, but has no memory-management policy. Its
tokenizer is the demo tokenizer plus one token per agent instruction (`base.instruction_tokenizer`), which keeps
prompts around 250 tokens on a CPU.

1. Heuristic trajectories (`demo.policies`) of the agents whose RL starts from the SFT model (`sft_agents`): the
   ADD-only heuristic manager walks the training conversations through `episodes.runner.build_banks`
   (config.demo.explore of its replies, at the turns config.demo.explore_with picks, are other operations, so the
   SFT model samples them); with answer_start = "sft", the first-match heuristic answerer also answers their
   questions over ADD-all banks. Every (prompt, reply) pair becomes a line of `<workdir>/sft_data.jsonl`.
2. SFT warm start (`mode=sft`): the model imitates those heuristics -> `<workdir>/sft/hf`, the manager's start.
3. RL (`mode=train`) of each agent of `config.demo.agents` in `<workdir>/<agent>_<algorithm>/`: the manager from the
   SFT model, the answer agent from the base itself (as the paper's answer agent starts from the instruct model;
   it trains while stages 1-2 run, `train_agents`) or, with answer_start = "sft", from the SFT model
   (`start_path`). The manager's reward comes through a frozen answer agent (config.train.manager_answerer;
   configs/demo.py: the heuristic answerer, so the reward measures the manager's banks, not the small model's
   reading).
   Held-out exact match / F1 (and, for the manager, the operation mix of the banks it builds and how often it
   UPDATEs / DELETEs at the turns that change / retract a fact) are measured with greedy decoding before the first
   RL step (the start) and after the last, beside the scripted heuristics (ADD-only, and an informed manager
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
import signal
import threading
import time

import jax
import tensorboardX  # noqa: F401  pylint: disable=unused-import  # Imported by each worker at its start.

from memr1_jax import components, console, sft, tasks, train
from memr1_jax.demo import base, policies, report
from memr1_jax.demo import config as demo_config
from memr1_jax.demo.report import AgentResult
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import ScriptedPolicy
from memr1_jax.errors import ConfigError
from memr1_jax.models.loading import export_pretrained
from memr1_jax.models.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


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


def sft_agents(config) -> list[str]:
  """The agents of config.demo.agents whose RL starts from the SFT model (`_starts_from_base` is False): the SFT
  imitates only their heuristic trajectories."""
  return [a for a in demo_config.agent_names(config.demo) if not _starts_from_base(config, a)]


def make_sft_data(config, path: str) -> dict:
  """Writes the heuristic agents' trajectories on the training conversations to `path` (JSONL), for the agents of
  `sft_agents`: the manager's on every turn of the first `config.demo.sft_manager_conversations`, the answerer's on
  every training question.

  Returns {"manager": records, "answer": records} counts (0 for an agent not in `sft_agents`).
  """
  convs = tasks.load(config).splits()["train"]
  factory = components.bank_factory(config)
  rcfg = components.runner_config(config)
  agents = sft_agents(config)
  manager, answer = [], []
  if "manager" in agents:
    manager, _ = policies.manager_trajectories(convs[:config.demo.sft_manager_conversations or None], factory, rcfg,
                                               explore=config.demo.explore, explore_with=config.demo.explore_with)
  if "answer" in agents:
    answer = policies.answer_trajectories(convs, runner.add_all_banks(convs, factory, rcfg), rcfg,
                                         explore=config.demo.answer_explore, seed=config.seed)
  policies.write_jsonl(manager + answer, path)
  return {"manager": len(manager), "answer": len(answer)}


def warm_start(config) -> str:
  """Stages 1-2: heuristic trajectories, then SFT of config.model on them. Returns the SFT model's HF directory."""
  data = os.path.join(config.workdir, "sft_data.jsonl")
  counts = make_sft_data(config, data)
  logger.info("demo: %d manager and %d answer trajectories in %s", counts["manager"], counts["answer"], data)
  sft_config = stage_config(config, **{"mode": "sft", "workdir": os.path.join(config.workdir, "sft"),
                                       "sft.path": data, "sft.export_path": ""})
  return sft.run(sft_config)["export_path"]


def _starts_from_base(config, agent: str) -> bool:
  """Whether `agent`'s RL starts from config.model.path (the answer agent with config.demo.answer_start = "base")
  rather than from the SFT model."""
  return agent == "answer" and config.demo.answer_start == "base"


def start_path(config, agent: str, sft_path):
  """The HF directory `agent`'s RL starts from: config.model.path (the base) where `_starts_from_base`, else
  `sft_path` (the SFT model, or the function that makes it for `train_agents`; None where no SFT ran)."""
  return config.model.path if _starts_from_base(config, agent) else sft_path


def rl_config(config, agent: str, init_path: str, workdir: str | None = None):
  """The mode=train config of `agent` starting from the HF directory `init_path` (evaluated after the last step, and
  every config.demo.eval_every steps where set; a PPO run with config.demo.ppo_<agent>'s settings where set)."""
  ppo = {k: v for k, v in config.demo[f"ppo_{agent}"].items() if v is not None} if config.algorithm == "ppo" else {}
  steps = ppo.pop("steps", None) or (config.demo.answer_steps if agent == "answer" else config.demo.manager_steps)
  fields = {"mode": "train", "agent": agent, "model.path": init_path, "model.tokenizer": "",
            "workdir": workdir or os.path.join(config.workdir, f"{agent}_{config.algorithm}"),
            "train.num_steps": steps, "train.eval_every": config.demo.eval_every or steps,
            "train.checkpoint_every": steps}
  if agent == "answer" and config.demo.answer_actor_lr:
    fields["rl.actor_lr"] = config.demo.answer_actor_lr
  if agent == "answer" and config.demo.answer_temperature:
    fields["rollout.temperature"] = config.demo.answer_temperature
  if "temperature" in ppo:
    fields["rollout.temperature"] = ppo.pop("temperature")
  fields.update({f"rl.{k}": v for k, v in ppo.items()})
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
  """Stage 3 for one agent from the HF directory `init_path`: held-out scores of the start, RL, held-out scores after
  the last step."""
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
  start_name = "base (start)" if os.path.abspath(init_path) == os.path.abspath(config.model.path) else "SFT start"
  return AgentResult(agent, config.algorithm, start_name, _eval_scores(before), after, trainer.workdir, model,
                     time.perf_counter() - start)


def _exit_with_parent(parent: int) -> None:
  """A worker's watch (a daemon thread): once its parent, the demo process, is gone (killed, so it can neither stop
  the worker nor read its result), SIGTERM the worker (a training run checkpoints after its current step and stops)
  and exit a minute later at the latest, instead of training on as an orphan."""
  while os.getppid() == parent:
    time.sleep(1.0)
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(60.0)
  os._exit(1)


def _start_child(config, parent: int) -> None:
  """A worker process's start: the watch of its parent (the pid `parent`, passed by the parent: one that died before
  this start is noticed too), logging and JAX settings, then the imports and the CPU backend of a training run."""
  threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
  console.setup()
  components.configure_jax(config)
  jax.devices()


def agent_pool(config, num_runs: int) -> concurrent.futures.ProcessPoolExecutor | None:
  """With config.demo.parallel_agents, on the CPU backend of a single JAX process, for more than one run: a pool of
  `num_runs` spawned processes, already started (imports, JAX backend), for `train_agents`; else None."""
  if not (config.demo.parallel_agents and num_runs > 1 and jax.default_backend() == "cpu"
          and jax.process_count() == 1):
    return None
  pool = concurrent.futures.ProcessPoolExecutor(num_runs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_start_child, initargs=(config, os.getpid()))
  for _ in range(num_runs):  # Each submission starts one more worker, which runs the initializer.
    pool.submit(int)
  return pool


def _lower_priority(niceness: int = 10) -> None:
  """Lowers this process's CPU priority to `niceness` (each thread's on Linux, where the nice value is per thread:
  the XLA CPU client's threads already run), so that it yields the cores to a process on the critical path."""
  tasks_dir = "/proc/self/task"
  threads = [int(t) for t in os.listdir(tasks_dir)] if os.path.isdir(tasks_dir) else [0]
  for tid in threads:
    try:
      os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except (AttributeError, OSError):  # No setpriority (Windows), or the thread has exited.
      pass


def _train_agent_beside(*args) -> AgentResult:
  """`train_agent` at a lower CPU priority: a run that trains while the calling process makes another run's start."""
  _lower_priority()
  return train_agent(*args)


def train_agents(config, runs: list[tuple], pool: concurrent.futures.ProcessPoolExecutor | None = None
                 ) -> list[AgentResult]:
  """Stage 3 for several runs, each (run config, agent, start, workdir or None) as for `train_agent`, where start is
  the HF directory the run starts from or a function of no arguments that makes it (the SFT warm start: called once
  in this process, however many runs share it). Returns their results in `runs` order.

  The runs are independent; with a pool (`agent_pool(config, len(runs))` unless given) each runs in a process of its
  own: those with a directory at once, the others as soon as this process has made their start, so the answer agent
  learns from the base while the SFT that the manager starts from runs here (the answer agent's process at a lower
  CPU priority: the SFT and then the manager's RL are the longer path). The same programs on the same inputs,
  so the same numbers as one after the other, sooner (a small model's steps leave much of a CPU idle: the demo's
  stages on 2 cores). The pool is shut down at the end.
  """
  made = {}

  def start(init):
    if not callable(init):
      return init
    if init not in made:
      made[init] = init()
    return made[init]

  pool = pool or agent_pool(config, len(runs))
  if pool is None:
    return [train_agent(c, agent, start(init), workdir) for c, agent, init, workdir in runs]
  # The workers' progress bars are drawn here, one line each, from the updates they send; below the bar of a start
  # made in this process.
  makes_start = any(callable(init) for _, _, init, _ in runs)
  offset = int(makes_start)
  with pool, multiprocessing.get_context("spawn").Manager() as manager:
    queue = manager.Queue()
    renderer = console.BarRenderer(queue)
    try:
      order = sorted(range(len(runs)), key=lambda i: callable(runs[i][2]))  # Runs with a ready start first.
      futures = {}
      for i in order:
        c, agent, init, workdir = runs[i]
        fn = _train_agent_beside if makes_start and not callable(init) else train_agent
        futures[i] = pool.submit(fn, c, agent, start(init), workdir, console.QueueBar(queue, i + offset))
      return [futures[i].result() for i in range(len(runs))]
    finally:
      renderer.stop()


def heuristic_scores(config) -> dict:
  """Held-out scores of the scripted heuristics: {"answer": answerer over ADD-all banks, "manager": the ADD-only
  manager's banks answered by the heuristic answerer, "manager_informed": likewise for the scripted manager that
  reads the task's statements (`policies.informed_manager_reply`, the headroom); managers with their operation
  mix and the task's bank metrics}."""
  task = tasks.load(config)
  convs = task.splits()[config.data.eval_split]
  factory = components.bank_factory(config)
  rcfg = components.runner_config(config)
  answerer = ScriptedPolicy(policies.heuristic_answer_reply)

  def manager_scores(reply):
    return runner.evaluate_agents(convs, ScriptedPolicy(reply), answerer, factory, rcfg,
                                  bank_metrics=task.bank_metrics)

  return {"answer": runner.heldout_eval(convs, answerer, runner.add_all_banks(convs, factory, rcfg), rcfg),
          "manager": manager_scores(policies.heuristic_manager_reply),
          "manager_informed": manager_scores(policies.informed_manager_reply)}


def run(config) -> dict:
  """Entry point of mode=demo (see the module docstring). Returns the results dict also written to results.json."""
  start = time.perf_counter()
  os.makedirs(config.workdir, exist_ok=True)
  agents = demo_config.agent_names(config.demo)
  if config.model.path and os.path.abspath(config.model.path) == base.DEMO_BASE_DIR:
    if not os.path.exists(os.path.join(base.DEMO_BASE_DIR, "model.safetensors")):
      raise ConfigError(f"config.model.path: the demo base {base.DEMO_BASE_DIR} is missing; build it with "
                        "`python -m memr1_jax.demo.base`")
    base.check_instruction_tokens(Tokenizer.from_pretrained(base.DEMO_BASE_DIR))
  timings = {}
  sft_path = None
  # The heuristic baselines are scored by a thread of this process while the RL that comes last trains.
  side = concurrent.futures.ThreadPoolExecutor(1)
  baselines = []

  def score_baselines() -> dict:
    t = time.perf_counter()
    scores = heuristic_scores(config)
    timings["heuristic baselines"] = time.perf_counter() - t
    return scores

  def sft_stage() -> str:
    nonlocal sft_path
    t = time.perf_counter()
    sft_path = warm_start(config)
    timings["heuristic trajectories + SFT"] = time.perf_counter() - t
    baselines.append(side.submit(score_baselines))
    return sft_path

  # The RL stages' processes start (imports, JAX) at once; the runs that start from the base train while this
  # process runs the SFT.
  pool = agent_pool(config, len(agents))
  runs = [(config, agent, start_path(config, agent, sft_stage), None) for agent in agents]
  if not any(callable(init) for _, _, init, _ in runs):
    baselines.append(side.submit(score_baselines))
  t = time.perf_counter()
  try:
    results = train_agents(config, runs, pool)
    heuristic = baselines[0].result()
  finally:
    side.shutdown(cancel_futures=True)
    if pool is not None:
      pool.shutdown(cancel_futures=True)
  for result in results:
    timings[f"{result.agent} {config.algorithm.upper()} (with evaluations)"] = result.seconds
  if len(results) > 1:
    stages = ("SFT and " if sft_path else "") + "RL of " + " and ".join(agents)
    timings[stages + (" at once" if pool else "")] = time.perf_counter() - t
  table = report.results_table(heuristic, results, report.manager_reader(config))
  plot = report.plot_rewards(results, os.path.join(config.workdir, "reward.png"))
  timings["total"] = time.perf_counter() - start
  out = {"heuristic": heuristic, "runs": [dataclasses.asdict(r) for r in results], "table": table,
         "plot": plot, "seconds": timings, "sft_model": sft_path}
  with open(os.path.join(config.workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  with open(os.path.join(config.workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  num_eval = len(tasks.load(config).splits()[config.data.eval_split])
  lines = [f"\nHeld-out results ({num_eval} conversations, greedy decoding):\n", table, "",
           f"results:      {os.path.join(config.workdir, 'results.md')} (and results.json)",
           f"reward plot:  {plot}"] + ([f"SFT model:    {sft_path}"] if sft_path else [])
  names = {"answer": "answer agent:", "manager": "manager:"}
  lines += [f"{names[r.agent]:13} {r.model} (checkpoints: {os.path.join(r.workdir, 'checkpoints')})" for r in results]
  lines += [f"logs:         tensorboard --logdir {config.workdir} (metrics.jsonl in each run's directory)",
            "wall time:    " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())]
  print("\n".join(lines), flush=True)
  return out
