"""configs/locomo_rehearsal.py end to end at reduced counts: prepare -> manager GRPO -> export -> answer GRPO on the
manager's banks -> export -> eval of both, on the LoCoMo fixture (always) and on the real locomo10.json (when present).
"""

from __future__ import annotations

import collections
import json
import os
import re

import pytest

from memr1_jax import main as main_lib
from memr1_jax.models.random_checkpoint import write_random_checkpoint
from memr1_jax.testing.smoke import LOCOMO_FIXTURE, shipped_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = LOCOMO_FIXTURE
DATA_DIR = os.environ.get("MEMR1_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
REAL_LOCOMO = os.path.join(DATA_DIR, "locomo", "locomo10.json")
# Reduced counts: 4 tuples or questions per step, groups of 2, replies of 4 tokens (random weights never stop early).
REDUCED = {"rollout.batch_size": 4, "rollout.group_size": 2, "rollout.max_new_tokens": 4, "rl.micro_batch_size": 4,
           "memory.extractor_max_tokens": 4, "memory.encoder": "hashing:64"}


def rehearse(tmp_path, data: str, **overrides) -> dict:
  """Runs every stage in `tmp_path` (config overrides `overrides` on top of REDUCED); returns {"prepare": the tuples
  file's header, "manager" / "answer": their step's metrics, "report": the eval report, "extractor_config": the
  extractor's config.json}."""
  extractor = tmp_path / "extractor"
  overrides = {**REDUCED, **overrides, "data.path": data}
  cfg = shipped_config("locomo_rehearsal", tmp_path / "manager", **overrides)
  assert write_random_checkpoint(str(extractor), preset="tiny", tokenizer_dir=cfg.model.tokenizer, seed=1)
  assert not write_random_checkpoint(str(extractor), preset="tiny", tokenizer_dir=cfg.model.tokenizer, seed=1)

  def stage(workdir, mode, **fields):
    c = shipped_config("locomo_rehearsal", tmp_path / workdir,
                       **{**overrides, "memory.extractor": str(extractor), "mode": mode, **fields})
    main_lib.run(c, "configs/locomo_rehearsal.py")

  stage("manager", "prepare")
  stage("manager", "train", agent="manager")
  stage("manager", "export", **{"export.path": str(tmp_path / "manager_hf")})
  stage("answer", "train", agent="answer", **{"train.answer_banks": str(tmp_path / "manager_hf")})
  stage("answer", "export", **{"export.path": str(tmp_path / "answer_hf")})
  stage("answer", "eval", **{"eval.split": "validation", "eval.checkpoint": "none",
                             "eval.manager_path": str(tmp_path / "manager_hf"),
                             "eval.answer_path": str(tmp_path / "answer_hf")})
  out = {}
  with open(tmp_path / "manager" / "manager_tuples.jsonl", encoding="utf-8") as f:
    out["prepare"] = json.loads(f.readline())
  for agent in ("manager", "answer"):
    with open(tmp_path / agent / "metrics.jsonl", encoding="utf-8") as f:
      out[agent] = {k: v for line in f for k, v in json.loads(line).items()}
  (report,) = [os.path.join(d, "report.json") for d, _, files in os.walk(tmp_path / "answer" / "eval")
               if "report.json" in files]
  with open(report, encoding="utf-8") as f:
    out["report"] = json.load(f)
  with open(extractor / "config.json", encoding="utf-8") as f:
    out["extractor_config"] = json.load(f)
  return out


def expected_counts(data: str) -> dict:
  """Counted from the raw JSON: conv-26's distinct last-evidence turns (tuples) and their questions (those citing only
  turns that exist), and conv-30's questions; category 5 left out as in the paper's split."""
  raw = {s["sample_id"]: s for s in json.load(open(data, encoding="utf-8"))}

  def turn_order(sample):
    conv = sample["conversation"]
    sessions = sorted((k for k in conv if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k.split("_")[1]))
    return {t["dia_id"]: i for i, t in enumerate(t for k in sessions for t in conv[k])}

  order = turn_order(raw["conv-26"])
  last = collections.Counter()
  for qa in raw["conv-26"]["qa"]:
    cited = [d for ev in qa.get("evidence", []) for d in re.findall(r"D\d+:\d+", ev)]
    if qa["category"] != 5 and cited and all(d in order for d in cited):
      last[max(order[d] for d in cited)] += 1
  validation = [qa for qa in raw["conv-30"]["qa"] if qa["category"] != 5]
  return {"tuples": len(last), "linked": sum(last.values()), "validation": len(validation)}


def check(result: dict, data: str) -> None:
  """What every rehearsal must show, whatever the random weights say."""
  want = expected_counts(data)
  counts = result["prepare"]["counts"]
  assert (counts["tuples"], counts["linked_questions"]) == (want["tuples"], want["linked"])
  assert result["extractor_config"]["vocab_size"] >= 151_000  # The Qwen tokenizer's vocabulary, not the demo's.
  # Manager step: 4 tuples x 2 responses (every turn has its fallback fact), each fork answered per linked question.
  assert result["manager"]["rollout/generations"] == 8
  assert result["manager"]["rollout/answer_generations"] >= 8
  assert result["manager"]["train/rows"] == 8
  # Answer step: 4 questions x 2 answers on the manager's banks.
  assert result["answer"]["rollout/generations"] == 8
  assert result["answer"]["train/rows"] == 8
  overall = [g for g in result["report"]["groups"] if g["name"] == "overall"]
  assert result["report"]["questions"] == overall[0]["count"] == want["validation"]


def test_rehearsal_on_the_locomo_fixture(tmp_path):
  """Every stage runs on the fixture, with the step counts of the reduced batch and every validation question scored."""
  check(rehearse(tmp_path, FIXTURE), FIXTURE)


@pytest.mark.skipif(not os.path.exists(REAL_LOCOMO), reason=f"{REAL_LOCOMO} is absent (the LoCoMo release file)")
def test_rehearsal_on_real_locomo(tmp_path):
  """On locomo10.json: conv-26 gives 113 tuples and 150 linked questions, and all 81 validation questions are scored
  (on one device: the fixture's rehearsal covers the 8-device mesh, where 8 shards of a tiny model on 2 cores only
  cost time)."""
  result = rehearse(tmp_path, REAL_LOCOMO, **{"mesh.num_devices": 1})
  check(result, REAL_LOCOMO)
  assert (result["prepare"]["counts"]["tuples"], result["prepare"]["counts"]["linked_questions"]) == (113, 150)
