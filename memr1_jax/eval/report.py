"""Per-category evaluation report: count, EM, F1, BLEU-1, J (and optionally LoCoMo F1).

Records are grouped by LoCoMo category, or, when they carry a `group` (LongMemEval's question types under the
paper's Table 4 names, MSC), by that group.

Scores are means over the records of a group, stored as fractions in [0, 1]; the text table shows
them as percentages. J is the share of CORRECT judge labels among the records that have one.
Also the file helpers of report directories: JSONL read (torn last line skipped) and flushed append,
atomic writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable, Sequence

from memr1_jax import fileio
from memr1_jax.data.schema import CATEGORY_NAMES
from memr1_jax.eval import metrics


@dataclasses.dataclass(frozen=True)
class EvalRecord:
  """One answered question: its QA category, the prediction, the gold answer, the judge label, and the group it is
  reported under ("" : its category)."""

  category: int
  pred: str
  gold: str
  judge: bool | None = None
  group: str = ""


@dataclasses.dataclass(frozen=True)
class GroupScores:
  """Scores of one category or group (`category` None for a named group and for the overall row).

  `j` is None when no record of the group has a judge label; `j_count` counts those that do.
  `locomo_f1` is None unless the report was asked for it.
  """

  category: int | None
  name: str
  count: int
  em: float
  f1: float
  bleu1: float
  j: float | None
  j_count: int
  locomo_f1: float | None = None


def _mean(values: Sequence[float]) -> float:
  return sum(values) / len(values)


def _group_scores(category: int | None, name: str, records: Sequence[EvalRecord],
                  with_locomo_f1: bool) -> GroupScores:
  labels = [r.judge for r in records if r.judge is not None]
  locomo = None
  if with_locomo_f1:
    locomo = _mean([metrics.locomo_f1(r.pred, r.gold, r.category) for r in records])
  return GroupScores(
      category=category, name=name, count=len(records),
      em=_mean([float(metrics.exact_match(r.pred, r.gold)) for r in records]),
      f1=_mean([metrics.token_f1(r.pred, r.gold) for r in records]),
      bleu1=_mean([metrics.bleu1(r.pred, r.gold) for r in records]),
      j=_mean([float(label) for label in labels]) if labels else None, j_count=len(labels),
      locomo_f1=locomo)


def category_name(category: int) -> str:
  """The LoCoMo name of `category` ("multi-hop", ...), or "category N" for others."""
  return CATEGORY_NAMES.get(category, f"category {category}")


def category_report(records: Iterable[EvalRecord | tuple], with_locomo_f1: bool = False,
                    group_order: Sequence[str] = ()) -> list[GroupScores]:
  """Scores per category (in category order), or per group when every record has one, then the overall row.

  Args:
    records: `EvalRecord`s, or (category, pred, gold[, judge[, group]]) tuples.
    with_locomo_f1: also compute LoCoMo's stemmed F1 (`metrics.locomo_f1`).
    group_order: the order of named groups (groups not in it follow, sorted).

  Raises:
    ValueError: when `records` is empty.
  """
  records = [r if isinstance(r, EvalRecord) else EvalRecord(*r) for r in records]
  if not records:
    raise ValueError("category_report: no records to score")
  if all(r.group for r in records):
    by_group: dict[str, list[EvalRecord]] = {}
    for record in records:
      by_group.setdefault(record.group, []).append(record)
    rank = {name: i for i, name in enumerate(group_order)}
    names = sorted(by_group, key=lambda name: (rank.get(name, len(rank)), name))
    rows = [_group_scores(None, name, by_group[name], with_locomo_f1) for name in names]
  else:
    by_category: dict[int, list[EvalRecord]] = {}
    for record in records:
      by_category.setdefault(record.category, []).append(record)
    rows = [_group_scores(c, category_name(c), by_category[c], with_locomo_f1) for c in sorted(by_category)]
  return rows + [_group_scores(None, "overall", records, with_locomo_f1)]


def report_to_json(rows: Sequence[GroupScores]) -> dict:
  """The report as a JSON-ready dict: {"scale": "fraction", "groups": [row dicts]}."""
  return {"scale": "fraction", "groups": [dataclasses.asdict(row) for row in rows]}


def _percent(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def render_table(rows: Sequence[GroupScores]) -> str:
  """A fixed-width text table of the report, scores in percent ("-" where not available)."""
  with_locomo = any(row.locomo_f1 is not None for row in rows)
  header = ["category", "count", "EM", "F1", "BLEU-1", "J"] + (["LoCoMo-F1"] if with_locomo else [])
  lines = [header]
  for row in rows:
    cells = [row.name, str(row.count), _percent(row.em), _percent(row.f1), _percent(row.bleu1),
             _percent(row.j)]
    lines.append(cells + ([_percent(row.locomo_f1)] if with_locomo else []))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

  def fmt(cells: list[str]) -> str:
    return "  ".join([cells[0].ljust(widths[0])] +
                     [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])])

  rule = "-" * len(fmt(header))
  body = [fmt(line) for line in lines[1:]]
  return "\n".join([fmt(header), rule] + body[:-1] + [rule, body[-1]]) + "\n"


def write_report(rows: Sequence[GroupScores], out_dir: str | pathlib.Path,
                 stem: str = "report", extra: dict | None = None) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `<stem>.txt` (the table) and `<stem>.json` (`report_to_json` plus `extra`'s keys) under `out_dir`, each
  atomically; returns both paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  text_path, json_path = out / f"{stem}.txt", out / f"{stem}.json"
  fileio.write_atomic(text_path, render_table(rows))
  fileio.write_atomic(json_path, json.dumps({**report_to_json(rows), **(extra or {})}, indent=2, ensure_ascii=False) + "\n")
  return text_path, json_path


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
  """The JSON objects of `path`, one a line ([] when the file is missing); lines that do not parse (a line torn by a
  killed writer) are skipped."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return []
  rows = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict):
      rows.append(row)
  return rows


def append_jsonl(path: str | pathlib.Path, rows: Iterable[dict]) -> None:
  """Appends one JSON line per row to `path` and flushes it to disk (after a newline when the file ends in a torn
  line, so that a new row never joins it)."""
  data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
  with open(path, "a+b") as f:
    if f.seek(0, os.SEEK_END):
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        data = b"\n" + data
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
