"""Per-category evaluation report: count, EM, F1, BLEU-1, J (and optionally LoCoMo F1).

Scores are means over the records of a group, stored as fractions in [0, 1]; the text table shows
them as percentages. J is the share of CORRECT judge labels among the records that have one.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable, Sequence

from memr1_jax.data.schema import CATEGORY_NAMES
from memr1_jax.eval import metrics


@dataclasses.dataclass(frozen=True)
class EvalRecord:
  """One answered question: its QA category, the prediction, the gold answer, the judge label."""

  category: int
  pred: str
  gold: str
  judge: bool | None = None


@dataclasses.dataclass(frozen=True)
class GroupScores:
  """Scores of one category (`category` None for the overall row).

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


def category_report(records: Iterable[EvalRecord | tuple], with_locomo_f1: bool = False
                    ) -> list[GroupScores]:
  """Scores per category (in category order), then the overall row.

  Args:
    records: `EvalRecord`s, or (category, pred, gold[, judge]) tuples.
    with_locomo_f1: also compute LoCoMo's stemmed F1 (`metrics.locomo_f1`).

  Raises:
    ValueError: when `records` is empty.
  """
  records = [r if isinstance(r, EvalRecord) else EvalRecord(*r) for r in records]
  if not records:
    raise ValueError("category_report: no records to score")
  by_category: dict[int, list[EvalRecord]] = {}
  for record in records:
    by_category.setdefault(record.category, []).append(record)
  rows = [_group_scores(c, category_name(c), by_category[c], with_locomo_f1)
          for c in sorted(by_category)]
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
                 stem: str = "report") -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `<stem>.txt` (the table) and `<stem>.json` under `out_dir`; returns both paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  text_path, json_path = out / f"{stem}.txt", out / f"{stem}.json"
  text_path.write_text(render_table(rows), encoding="utf-8")
  json_path.write_text(json.dumps(report_to_json(rows), indent=2) + "\n", encoding="utf-8")
  return text_path, json_path
