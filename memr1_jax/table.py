r"""The paper's Table 1 layout (method x category x F1 / B1 / J) from any set of mode=eval reports.

  python -m memr1_jax.table runs/grpo_qwen7b/eval/test/latest-step200 runs/base/eval/test/base --out=table

Each argument is a report.json or the directory holding one. Writes <out>.md (Markdown), <out>.csv and <out>.png (a
bar plot, one panel per metric), and prints the Markdown. One row per report, named by its eval.method; the columns
are its groups in the paper's order (LoCoMo: single-hop, multi-hop, open-domain, temporal; LongMemEval: SSU, SSP,
OD, MS, KU, TR), then overall, each with F1, BLEU-1 and J in percent ("-" where the report has no judge). Every
report must come from the same dataset and split: one from another is a TableError naming both.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence

from memr1_jax import errors, fileio

# The paper's column order of LoCoMo categories and LongMemEval question types; other groups follow, as first seen.
GROUP_ORDER = ("single-hop", "multi-hop", "open-domain", "temporal", "SSU", "SSP", "OD", "MS", "KU", "TR")
# Report fields shown per group, and their column names.
METRICS = (("f1", "F1"), ("bleu1", "B1"), ("j", "J"))


class TableError(errors.Error, ValueError):
  """The reports cannot share one table (unreadable, or from another dataset or split); the message names the file."""


def read_report(path: str) -> dict:
  """The report.json at `path` (or in directory `path`) with its "path"; TableError when it is not an eval report."""
  file = os.path.join(path, "report.json") if os.path.isdir(path) else path
  try:
    with open(file, encoding="utf-8") as f:
      report = json.load(f)
  except (OSError, ValueError) as e:
    raise TableError(f"{file}: cannot read an eval report ({type(e).__name__}: {e})") from None
  if not isinstance(report, dict) or not isinstance(report.get("groups"), list):
    raise TableError(f"{file}: not a mode=eval report.json (no 'groups')")
  return {**report, "path": file}


def _source(report: dict) -> tuple[str, str]:
  return str(report.get("dataset", "?")), str(report.get("split", "?"))


def table_rows(reports: Sequence[dict]) -> tuple[list[str], list[tuple[str, dict]]]:
  """(the group names in column order, [(method, {group: {metric: percent or None}})]) of `reports`.

  Raises:
    TableError: no report, or reports of different datasets or splits.
  """
  if not reports:
    raise TableError("no eval report given")
  first = reports[0]
  for report in reports[1:]:
    if _source(report) != _source(first):
      raise TableError(f"{report['path']} is a report on {'/'.join(_source(report))}, {first['path']} on "
                       f"{'/'.join(_source(first))}: one table holds one dataset and split")
  seen = [g["name"] for r in reports for g in r["groups"] if g["name"] != "overall"]
  rank = {name: i for i, name in enumerate(GROUP_ORDER)}
  groups = sorted(dict.fromkeys(seen), key=lambda name: (rank.get(name, len(rank)), seen.index(name))) + ["overall"]
  rows, names = [], {}
  for report in reports:
    method = str(report.get("method") or os.path.basename(os.path.dirname(report["path"])))
    names[method] = names.get(method, 0) + 1
    if names[method] > 1:
      method = f"{method} ({names[method]})"
    by_name = {g["name"]: g for g in report["groups"]}
    rows.append((method, {name: {key: (None if by_name.get(name, {}).get(key) is None else
                                       100.0 * by_name[name][key]) for key, _ in METRICS} for name in groups}))
  return groups, rows


def _cell(value: float | None) -> str:
  return "-" if value is None else f"{value:.2f}"


def render_markdown(groups: Sequence[str], rows: Sequence[tuple[str, dict]]) -> str:
  """The table as Markdown: one row per method, a column per (group, metric)."""
  header = ["method"] + [f"{group} {label}" for group in groups for _, label in METRICS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method, scores in rows:
    cells = [method] + [_cell(scores[group][key]) for group in groups for key, _ in METRICS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def render_csv(groups: Sequence[str], rows: Sequence[tuple[str, dict]]) -> str:
  """The table as CSV (empty cells where a report has no value)."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["method"] + [f"{group} {label}" for group in groups for _, label in METRICS])
  for method, scores in rows:
    writer.writerow([method] + ["" if scores[group][key] is None else f"{scores[group][key]:.4f}"
                                for group in groups for key, _ in METRICS])
  return out.getvalue()


def plot(groups: Sequence[str], rows: Sequence[tuple[str, dict]], path: str) -> None:
  """A bar plot of the table at `path` (PNG): one panel per metric, groups on the x axis, one bar per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top  # Only the plot needs it (a second to import).
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.5), squeeze=False)
  width = 0.8 / max(1, len(rows))
  for ax, (key, label) in zip(axes[0], METRICS):
    for i, (method, scores) in enumerate(rows):
      values = [scores[group][key] or 0.0 for group in groups]
      ax.bar([x + i * width for x in range(len(groups))], values, width, label=method)
    ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(groups))], groups, rotation=30, ha="right")
    ax.set_title(label)
    ax.set_ylabel("%")
    top = max((scores[group][key] or 0.0 for _, scores in rows for group in groups), default=0.0)
    ax.set_ylim(0, max(1.0, 1.1 * top))
  axes[0][0].legend(fontsize="small")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)


def write_table(report_paths: Sequence[str], out: str) -> dict[str, str]:
  """Reads the reports, writes <out>.md, <out>.csv and <out>.png; returns {"md", "csv", "png"} -> path."""
  groups, rows = table_rows([read_report(path) for path in report_paths])
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  paths = {"md": out + ".md", "csv": out + ".csv", "png": out + ".png"}
  fileio.write_atomic(paths["md"], render_markdown(groups, rows))
  fileio.write_atomic(paths["csv"], render_csv(groups, rows))
  plot(groups, rows, paths["png"])
  return paths


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: report paths and --out; prints the Markdown table and the files written."""
  parser = argparse.ArgumentParser(prog="python -m memr1_jax.table", description=__doc__.split("\n\n")[0])
  parser.add_argument("reports", nargs="+", help="report.json files, or the eval directories holding them")
  parser.add_argument("--out", default="table", help="output path without extension (default: table)")
  args = parser.parse_args(argv)
  try:
    paths = write_table(args.reports, args.out)
  except errors.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with open(paths["md"], encoding="utf-8") as f:
    print(f.read(), end="")
  print("# written: " + ", ".join(paths.values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
