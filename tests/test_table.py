"""`python -m memr1_jax.table`: the paper's Table 1 layout (method x category x F1 / B1 / J) from eval reports."""

import csv
import json
import os

import pytest

from memr1_jax import evaluate, table
from memr1_jax.data import read_locomo
from memr1_jax.data.splits import without_adversarial
from memr1_jax.episodes.policy import ScriptedPolicy
from memr1_jax.episodes.runner import RunnerConfig
from memr1_jax.eval.judge import Judge
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.testing.smoke import LOCOMO_FIXTURE, REPO, locomo_fixture_config, smoke_config

LONGMEMEVAL_FIXTURE = os.path.join(REPO, "tests", "fixtures", "longmemeval_hydrabuild_small.json")


def _scripted_report(out_dir):
  """A report written the way mode=eval writes one, of an answerer right on the temporal and single-hop questions of
  the fixture's conv-30, judged CORRECT exactly where it is right."""
  conv = without_adversarial(next(c for c in read_locomo(LOCOMO_FIXTURE) if c.sample_id == "conv-30"))
  right = {q.question: q.answer for q in conv.qa if q.category in (2, 4)}
  answerer = ScriptedPolicy(lambda p: f"Useful memories: none\n**Answer:** {right.get(p.view.question.question, 'no')}")
  judge = Judge(lambda chats: ['{"label": "WRONG"}' if "Generated answer: no\n" in c[-1]["content"]
                               else '{"label": "CORRECT"}' for c in chats], name="stub")
  store = evaluate.EvalStore(str(out_dir), {"run": "scripted"})
  outcome = evaluate.evaluate_conversations(
      [conv], manager=None, answerer=answerer, judge=judge, store=store, rcfg=RunnerConfig(answer_k_per_speaker=2),
      bank_factory=lambda: MemoryBank(HashingEmbedder(32), 32, index="brute_force"))
  report = evaluate.report_dict(outcome, {"dataset": "locomo", "split": "validation", "method": "scripted"})
  evaluate.write_outcome(outcome, store, report)
  return report


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
  """Three eval report directories: the tiny model on the LoCoMo fixture (method BASE), the scripted answerer on the
  same conversation, and the tiny model on the LongMemEval fixture."""
  root = tmp_path_factory.mktemp("runs")
  base = evaluate.run(locomo_fixture_config(root / "base", **{"eval.method": "BASE"}))
  _scripted_report(root / "scripted")
  lme = evaluate.run(smoke_config(root / "lme", "locomo", **{
      "data.name": "longmemeval", "data.path": LONGMEMEVAL_FIXTURE, "eval.manager_path": "add_all",
      "rollout.max_new_tokens": 3, "memory.answer_k_per_speaker": 2}))
  return {"base": base["out_dir"], "scripted": str(root / "scripted"), "lme": lme["out_dir"]}


def test_table_of_two_runs_as_markdown_csv_and_plot(reports, tmp_path, capsys):
  """Two LoCoMo runs: one row each, columns in the paper's category order, cells = the reports' scores in percent."""
  out = str(tmp_path / "t" / "table1")
  assert table.main([reports["base"], os.path.join(reports["scripted"], "report.json"), f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  md = open(out + ".md").read()
  assert md in printed and os.path.getsize(out + ".png") > 1000
  header = md.splitlines()[0]
  order = [header.index(f"{name} F1") for name in ("single-hop", "multi-hop", "open-domain", "temporal", "overall")]
  assert order == sorted(order)
  rows = list(csv.DictReader(open(out + ".csv")))
  assert [r["method"] for r in rows] == ["BASE", "scripted"]
  for row, name in zip(rows, ("base", "scripted")):
    saved = json.load(open(os.path.join(reports[name], "report.json")))
    for group in saved["groups"]:
      for key, label in (("f1", "F1"), ("bleu1", "B1"), ("j", "J")):
        cell = row[f"{group['name']} {label}"]
        assert cell == ("" if group[key] is None else f"{100 * group[key]:.4f}")
  assert rows[1]["temporal J"] == "100.0000" and rows[1]["multi-hop J"] == "0.0000" and rows[0]["overall J"] == ""
  assert "| scripted | " in md and "| - |" in md  # BASE has no judge: "-".


def test_report_of_another_dataset_is_a_named_error(reports, tmp_path, capsys):
  """A LongMemEval report beside a LoCoMo one: TableError naming both files and datasets; nothing is written."""
  out = str(tmp_path / "mixed")
  with pytest.raises(table.TableError, match="longmemeval.*locomo") as error:
    table.write_table([reports["base"], reports["lme"]], out)
  assert reports["lme"] in str(error.value) and reports["base"] in str(error.value)
  assert table.main([reports["base"], reports["lme"], f"--out={out}"]) == 1
  assert "one table holds one dataset" in capsys.readouterr().err
  assert not any(os.path.exists(out + ext) for ext in (".md", ".csv", ".png"))


def test_longmemeval_every_item_reported_per_question_type(reports, tmp_path):
  """LongMemEval's test split is every item (none kept back for training), grouped under the paper's Table 4 names."""
  saved = json.load(open(os.path.join(reports["lme"], "report.json")))
  assert [(g["name"], g["count"]) for g in saved["groups"]] == [("OD", 1), ("KU", 1), ("overall", 2)]
  assert saved["dataset"] == "longmemeval" and all(g["locomo_f1"] is None for g in saved["groups"])
  groups, _ = table.table_rows([table.read_report(reports["lme"])])
  assert groups == ["OD", "KU", "overall"]
