"""The CPU demo over seeds: one row per seed (held-out EM of each agent, SFT start -> after RL, the manager's
"replaced where needed", the heuristics, the demo's wall time), then the mean and the minimum.

Each seed is a full demo run in its own process (`python -m memr1_jax.main --config=configs/demo.py
--config.seed=S`), in <workdir>/seed<S>; a finished seed's results.json is read instead of rerunning it.
  python benchmarks/demo_seeds.py [--seeds=0,1,2,3,4] [--algorithm=grpo] [--workdir=runs/demo_seeds] [-- more flags]
On a GPU machine's CPU: JAX_PLATFORMS=cpu taskset -c 0,1 python benchmarks/demo_seeds.py (two cores, as CI has).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "config.seed values.")
_ALGORITHM = flags.DEFINE_enum("algorithm", "grpo", ["grpo", "ppo"], "config.algorithm.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo_seeds", "Parent of the per-seed workdirs.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from machine import cpu_name  # pylint: disable=g-import-not-at-top,wrong-import-position


def run_seed(seed: int, algorithm: str, workdir: str, extra: list[str]) -> dict:
  """results.json of the demo at `seed` (run now unless `workdir` already holds it), with its wall time."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "memr1_jax.main", "--config=configs/demo.py", f"--config.seed={seed}",
                    f"--config.algorithm={algorithm}", f"--config.workdir={workdir}", *extra], cwd=REPO, check=True)
    print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def seed_row(results: dict) -> dict:
  """{"answer": (before, after), "manager": (before, after), "replaced": (before, after), "add_only",
  "answer_heuristic", "seconds"} from one demo's results.json."""
  runs = {r["agent"]: r for r in results["runs"]}
  row = {"add_only": results["heuristic"]["manager"]["eval/em"],
         "answer_heuristic": results["heuristic"]["answer"]["eval/em"], "seconds": results["seconds"]["total"]}
  for agent in ("answer", "manager"):
    if agent in runs:
      row[agent] = (runs[agent]["before"]["eval/em"], runs[agent]["after"]["eval/em"])
  if "manager" in runs:
    key = "eval/needed/UPDATE|DELETE"
    row["replaced"] = (runs["manager"]["before"].get(key, 0.0), runs["manager"]["after"].get(key, 0.0))
  return row


def table(rows: dict[int, dict]) -> str:
  """Markdown: one line per seed, then the mean and the minimum of every column."""

  def pair(p, fmt="{:.3f}"):
    return f"{fmt.format(p[0])} -> {fmt.format(p[1])}" if p else "-"

  lines = ["| seed | answer agent | memory manager | manager replaced where needed | ADD-only heuristic | "
           "heuristic answerer | demo wall time |", "|---|---|---|---|---|---|---|"]
  for seed, r in rows.items():
    lines.append(f"| {seed} | {pair(r.get('answer'))} | {pair(r.get('manager'))} | "
                 f"{pair(r.get('replaced'), '{:.0%}')} | {r['add_only']:.3f} | {r['answer_heuristic']:.3f} | "
                 f"{r['seconds']:.0f} s |")
  for name, reduce in (("mean", statistics.mean), ("min", min)):
    def agg(key, rows=rows, reduce=reduce):
      values = [r[key] for r in rows.values() if key in r]
      return (reduce(v[0] for v in values), reduce(v[1] for v in values)) if values else None
    scalar = lambda key, reduce=reduce: reduce(r[key] for r in rows.values())  # noqa: E731
    lines.append(f"| {name} | {pair(agg('answer'))} | {pair(agg('manager'))} | {pair(agg('replaced'), '{:.0%}')} | "
                 f"{scalar('add_only'):.3f} | {scalar('answer_heuristic'):.3f} | {scalar('seconds'):.0f} s |")
  return "\n".join(lines)


def main(argv):
  rows = {}
  for seed in map(int, _SEEDS.value):
    workdir = os.path.join(_WORKDIR.value, _ALGORITHM.value, f"seed{seed}")
    rows[seed] = seed_row(run_seed(seed, _ALGORITHM.value, workdir, argv[1:]))
  print(f"\nThe demo ({_ALGORITHM.value.upper()}) over seeds on {cpu_name()}; held-out EM SFT start -> after RL:\n")
  print(table(rows))


if __name__ == "__main__":
  app.run(main)
