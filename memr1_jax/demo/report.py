"""The demo's report: the results table (console, results.md) and the reward plot (reward.png)."""

from __future__ import annotations

import dataclasses
import os

import matplotlib
from matplotlib import pyplot as plt

from memr1_jax.metrics_writer import read_jsonl

matplotlib.use("Agg")

OPS = ("ADD", "UPDATE", "DELETE", "NOOP")


@dataclasses.dataclass
class AgentResult:
  """Held-out scores of one agent's RL run: `before` (its start, named by `start`: "SFT start" or "base (start)")
  and `after` (the last step), each a dict of eval/em, eval/f1 and, for the manager, eval/ops/<OP> shares; the run's
  directory, the trained policy exported as a Hugging Face directory, and the run's wall time."""

  agent: str
  algorithm: str
  start: str
  before: dict
  after: dict
  workdir: str
  model: str
  seconds: float


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
      row(label, r.start, r.before)
      row(label, f"after {r.algorithm.upper()}", r.after)
  return "\n".join(lines)


def plot_rewards(results: list[AgentResult], path: str) -> str:
  """Saves the training reward (and held-out EM before / after) over RL steps of every run as a PNG at `path`."""
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
