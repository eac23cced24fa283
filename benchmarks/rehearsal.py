r"""The paper's LoCoMo pipeline, one step of each stage at its batch sizes (configs/locomo_rehearsal.py), on this CPU.

  python benchmarks/rehearsal.py --data=<locomo10.json> [--workdir=runs/rehearsal_bench] [--max_new_tokens=32]

Stages, each `python -m memr1_jax.main` (or the checkpoint writer) in a process of its own, in order:
  extractor      the tiny random fact extractor (memr1_jax.models.random_checkpoint)
  prepare        extract the train split's facts, build the manager's tuples (window 50)
  manager        one GRPO step of the manager over 128 tuples x 8 responses, rewarded by the frozen answer agent
  export_manager the trained manager as a Hugging Face directory
  answer         one GRPO step of the answer agent over 128 questions x 8 answers, its banks built by that manager
  export_answer  the trained answer agent as a Hugging Face directory
  eval           both trained agents on --eval_split (the extractor, the manager's banks, the answers, the scores)
Per stage it prints the counts (tuples, generations, rows trained on, questions), the wall time and the process's
peak resident memory (getrusage of that child). Random weights reply with rollout.max_new_tokens tokens every time, so
--max_new_tokens (and --extractor_max_tokens) bound the decode cost; prompts keep their real lengths in tokens.
A rerun in the same --workdir starts from scratch (the workdir is emptied first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from machine import cpu_name  # pylint: disable=g-import-not-at-top,wrong-import-position

DATA_DIR = os.environ.get("MEMR1_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))

_DATA = flags.DEFINE_string("data", os.path.join(DATA_DIR, "locomo", "locomo10.json"), "locomo10.json.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/rehearsal_bench", "Parent of the stages' workdirs (emptied first).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "rollout.max_new_tokens (the paper's config: 2048).")
_EXTRACTOR_MAX = flags.DEFINE_integer("extractor_max_tokens", 32, "memory.extractor_max_tokens (default 256).")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "validation", "Split the eval stage scores.")
_SET = flags.DEFINE_multi_string("set", [], "More --config.<field>=<value> overrides for every stage.")

CONFIG = "configs/locomo_rehearsal.py"
STAGES = ("extractor", "prepare", "manager", "export_manager", "answer", "export_answer", "eval")


def stage_commands(workdir: str, data: str, max_new: int, extractor_max: int, eval_split: str,
                   extra: list[str]) -> dict[str, list[str]]:
  """The command line of each stage (STAGES order), all on one extractor, data file and reply budget."""
  extractor, manager_dir, answer_dir = (os.path.join(workdir, d) for d in ("extractor", "manager", "answer"))
  manager_hf, answer_hf = os.path.join(workdir, "manager_hf"), os.path.join(workdir, "answer_hf")
  main = [sys.executable, "-m", "memr1_jax.main", f"--config={CONFIG}", f"--config.data.path={data}",
          f"--config.memory.extractor={extractor}", f"--config.memory.extractor_max_tokens={extractor_max}",
          f"--config.rollout.max_new_tokens={max_new}", *[f"--config.{kv}" for kv in extra]]
  return {
      "extractor": [sys.executable, "-m", "memr1_jax.models.random_checkpoint", f"--config={CONFIG}",
                    f"--out={extractor}"],
      "prepare": [*main, "--config.mode=prepare", f"--config.workdir={manager_dir}"],
      "manager": [*main, "--config.mode=train", "--config.agent=manager", f"--config.workdir={manager_dir}"],
      "export_manager": [*main, "--config.mode=export", f"--config.workdir={manager_dir}",
                         f"--config.export.path={manager_hf}"],
      "answer": [*main, "--config.mode=train", "--config.agent=answer", f"--config.workdir={answer_dir}",
                 f"--config.train.answer_banks={manager_hf}"],
      "export_answer": [*main, "--config.mode=export", f"--config.workdir={answer_dir}",
                        f"--config.export.path={answer_hf}"],
      "eval": [*main, "--config.mode=eval", f"--config.workdir={answer_dir}", f"--config.eval.split={eval_split}",
               f"--config.eval.manager_path={manager_hf}", f"--config.eval.answer_path={answer_hf}",
               "--config.eval.checkpoint=none"],
  }


def run_stage(command: list[str], log_path: str) -> tuple[float, float, str]:
  """Runs `command` from the repository root with its output teed to `log_path`; returns (wall seconds, peak RSS in
  GiB of that process, its output). Raises RuntimeError naming the log when it fails."""
  start = time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  seconds = time.perf_counter() - start
  with open(log_path, encoding="utf-8") as f:
    output = f.read()
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}; its output: {log_path}\n{output[-3000:]}")
  return seconds, usage.ru_maxrss / 2**20, output


def _last_metrics(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {k: v for row in rows for k, v in row.items()}


def stage_counts(stage: str, workdir: str, output: str) -> str:
  """What stage `stage` worked on, read from its output or files: one short line."""
  if stage == "prepare":
    m = re.search(r"(\d+) tuples over (\d+) turns .*?; (\d+) linked questions", output)
    return f"{m.group(1)} tuples over {m.group(2)} turns, {m.group(3)} linked questions" if m else "?"
  if stage in ("manager", "answer"):  # The step's generations, the frozen answer agent's (manager), rows updated.
    m = _last_metrics(os.path.join(workdir, stage))
    line = f"{m.get('rollout/generations', 0):.0f} generations"
    if "rollout/answer_generations" in m:
      line += f" + {m['rollout/answer_generations']:.0f} answer-agent generations"
    return line + f", {m.get('train/rows', 0):.0f} rows trained on"
  if stage == "eval":
    reports = [os.path.join(r, "report.json") for r, _, files in os.walk(os.path.join(workdir, "answer", "eval"))
               if "report.json" in files]
    with open(reports[0], encoding="utf-8") as f:
      report = json.load(f)
    overall = next(g for g in report["groups"] if g["name"] == "overall")
    return f"{overall['count']} questions scored (EM {overall['em']:.3f})"
  return ""


def main(argv):
  del argv
  if not os.path.exists(_DATA.value):
    raise SystemExit(f"--data={_DATA.value}: no such file (locomo10.json of the LoCoMo release)")
  workdir = os.path.abspath(_WORKDIR.value)
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  commands = stage_commands(workdir, os.path.abspath(_DATA.value), _MAX_NEW.value, _EXTRACTOR_MAX.value,
                            _EVAL_SPLIT.value, _SET.value)
  print(f"# {CONFIG} on {cpu_name()}; replies up to {_MAX_NEW.value} tokens (extractor {_EXTRACTOR_MAX.value})",
        flush=True)
  print("| stage | counts | wall s | peak RSS GiB |\n|---|---|---|---|", flush=True)
  for stage in STAGES:
    seconds, rss, output = run_stage(commands[stage], os.path.join(workdir, f"{stage}.log"))
    print(f"| {stage} | {stage_counts(stage, workdir, output)} | {seconds:.1f} | {rss:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
