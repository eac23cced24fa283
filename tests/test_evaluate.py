"""mode=eval (memr1_jax/evaluate.py): banks, greedy answers, judges, per-category report files."""

import collections
import http.server
import importlib.util
import json
import os
import secrets
import threading

import numpy as np
import pytest

from memr1_jax import components, evaluate
from memr1_jax.data import read_locomo
from memr1_jax.data.splits import without_adversarial
from memr1_jax.episodes.policy import ScriptedPolicy
from memr1_jax.episodes.runner import RunnerConfig
from memr1_jax.eval.judge import Judge
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "locomo_small.json")
DATA_DIR = os.environ.get("MEMR1_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
LOCOMO = os.path.join(DATA_DIR, "locomo", "locomo10.json")


def smoke_config(workdir, **overrides):
  """configs/smoke.py with `workdir` and dotted-key overrides."""
  spec = importlib.util.spec_from_file_location("smoke", os.path.join(REPO, "configs", "smoke.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.workdir = str(workdir)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def fixture_config(workdir, **overrides):
  """The smoke model on the LoCoMo fixture's validation conversation (conv-30: 6 turns, 4 scored questions)."""
  return smoke_config(workdir, **{"data.name": "locomo", "data.path": FIXTURE, "eval.split": "validation",
                                  "eval.manager_path": "add_all", "rollout.max_new_tokens": 3,
                                  "memory.answer_k_per_speaker": 2, **overrides})


def raw_qa(path, sample_id):
  """The non-adversarial QA dicts of `sample_id`, straight from the JSON file."""
  sample = next(s for s in json.load(open(path)) if s["sample_id"] == sample_id)
  return [qa for qa in sample["qa"] if qa["category"] != 5]


def raw_turn_count(path, sample_id):
  sample = next(s for s in json.load(open(path)) if s["sample_id"] == sample_id)
  conv = sample["conversation"]
  return sum(len(v) for k, v in conv.items() if k.startswith("session_") and isinstance(v, list))


def report_counts(report):
  return {g["category"]: g["count"] for g in report["groups"] if g["category"] is not None}


def read_predictions(out_dir):
  with open(os.path.join(out_dir, "predictions.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_eval_on_real_locomo_validation_conversation(tmp_path):
  """conv-30 of locomo10.json: 81 questions answered by the tiny model, counts per category as in the file."""
  if not os.path.exists(LOCOMO):
    pytest.skip(f"LoCoMo data not found at {LOCOMO} (set MEMR1_DATA_DIR to the directory holding locomo/)")
  c = smoke_config(tmp_path, **{"data.name": "locomo", "data.path": LOCOMO, "eval.split": "validation",
                                "eval.manager_path": "add_all", "rollout.max_new_tokens": 2,
                                "rollout.max_batch": 128, "memory.answer_k_per_speaker": 1})
  report = evaluate.run(c)
  expected = collections.Counter(qa["category"] for qa in raw_qa(LOCOMO, "conv-30"))
  assert report_counts(report) == dict(expected)
  assert report["groups"][-1]["name"] == "overall" and report["groups"][-1]["count"] == 81 == report["questions"]
  out = tmp_path / "eval" / "validation"
  assert json.loads((out / "report.json").read_text())["groups"] == report["groups"]
  table = (out / "report.txt").read_text()
  assert all(name in table for name in ("multi-hop", "temporal", "single-hop", "overall"))
  predictions = read_predictions(out)
  assert [p["question"] for p in predictions] == [qa["question"] for qa in raw_qa(LOCOMO, "conv-30")]
  assert all(len(p["memories"]) == 2 for p in predictions)  # One per speaker.
  assert report["banks"]["counts"]["ADD"] == raw_turn_count(LOCOMO, "conv-30")
  np.testing.assert_allclose(report["groups"][-1]["f1"], np.mean([p["f1"] for p in predictions]))


def test_eval_fixture_with_llm_manager_from_checkpoint_dir(tmp_path):
  """A tiny LLM manager (and answer agent) loaded from a Hugging Face directory runs every fixture turn."""
  from memr1_jax.models.loading import export_pretrained  # pylint: disable=g-import-not-at-top
  base = fixture_config(tmp_path / "base")
  model, _ = components.load_policy(base, None)
  manager_dir = str(tmp_path / "manager_hf")
  export_pretrained(model, manager_dir, tokenizer_dir=components.tokenizer_dir(base))
  c = fixture_config(tmp_path / "run", **{"eval.manager_path": manager_dir, "eval.answer_path": manager_dir})
  report = evaluate.run(c)
  turns = raw_turn_count(FIXTURE, "conv-30")
  assert report["banks"]["manager_calls"] == turns
  # Every reply yields at least one operation (a malformed one is a NOOP).
  assert sum(report["banks"]["counts"].values()) >= turns
  assert report["banks"]["format_errors"] <= turns
  assert report_counts(report) == dict(collections.Counter(qa["category"] for qa in raw_qa(FIXTURE, "conv-30")))
  assert report["manager"] == report["answer"] == manager_dir and "policy_step" not in report
  assert len(read_predictions(tmp_path / "run" / "eval" / "validation")) == 4


def _scripted_answerer(correct_questions):
  def respond(chat):
    question = chat[-1]["content"].rsplit("Question: ", 1)[1]
    return f"Useful memories: none\n**Answer:** {correct_questions.get(question, 'no idea')}"
  return ScriptedPolicy(respond)


def test_evaluate_conversations_scores_scripted_agents():
  """A manager that ADDs one memory per turn and an answerer right on temporal / single-hop: exact hand scores."""
  conv = without_adversarial([c for c in read_locomo(FIXTURE) if c.sample_id == "conv-30"][0])
  calls = []

  def manage(chat):
    calls.append(chat)
    return json.dumps({"operations": [{"op": "ADD", "text": f"memory {len(calls) - 1}"}]})

  right = {q.question: q.answer for q in conv.qa if q.category in (2, 4)}
  judge = Judge(lambda chats: ['{"label": "WRONG"}' if "Generated answer: no idea" in c[-1]["content"]
                               else '{"label": "CORRECT"}' for c in chats])
  outcome = evaluate.evaluate_conversations(
      [conv], manager=ScriptedPolicy(manage), answerer=_scripted_answerer(right),
      bank_factory=lambda: MemoryBank(HashingEmbedder(32), 32, index="brute_force"),
      rcfg=RunnerConfig(answer_k_per_speaker=2), judge=judge)
  assert len(calls) == len(conv.turns) == 6
  assert dict(outcome.bank_stats.ops) == {"ADD": 6} and outcome.bank_stats.format_errors == 0
  by_cat = {row.category: row for row in outcome.rows}
  for cat, expected in ((1, 0.0), (2, 1.0), (3, 0.0), (4, 1.0)):
    assert by_cat[cat].count == 1 and by_cat[cat].em == expected == by_cat[cat].j
  assert by_cat[None].em == 0.5 and by_cat[None].j == 0.5 and by_cat[None].j_count == 4
  speaker_of = {f"memory {i}": turn.speaker for i, (_, turn) in enumerate(conv.turns)}
  for p in outcome.predictions:
    assert p["prediction"] == right.get(p["question"], "no idea")
    assert len(p["memories"]) == 4  # 2 per speaker; each speaker has 3 memories.
    assert all(m["speaker"] == speaker_of[m["text"]] for m in p["memories"])
    assert [m["speaker"] for m in p["memories"]] == [conv.speaker_a] * 2 + [conv.speaker_b] * 2


def test_eval_local_judge_grades_every_answer(tmp_path):
  """judge="local": the answer model grades every prediction; J is the mean of the recorded labels."""
  report = evaluate.run(fixture_config(tmp_path, **{"eval.judge": "local", "eval.judge_max_tokens": 4}))
  overall = report["groups"][-1]
  predictions = read_predictions(tmp_path / "eval" / "validation")
  assert overall["j_count"] == overall["count"] == 4 and report["judge"] == "local"
  assert all(isinstance(p["judge"], bool) for p in predictions)
  assert overall["j"] == np.mean([p["judge"] for p in predictions])


class _JudgeServer:
  """A local chat-completions endpoint: CORRECT for the questions in `correct`, WRONG otherwise."""

  def __init__(self, correct):
    self.requests = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((dict(self.headers), body))
        user = body["messages"][-1]["content"]
        label = "CORRECT" if any(f"Question: {q}\n" in user for q in correct) else "WRONG"
        reply = json.dumps({"choices": [{"message": {"content": json.dumps({"label": label})}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def test_eval_http_judge_scores_per_category(tmp_path, monkeypatch):
  """An HTTP judge on 127.0.0.1 grades each question once; J per category follows its labels; no key on disk."""
  key = "sk-test-" + secrets.token_hex(12)
  monkeypatch.setenv("MEMR1_TEST_EVAL_JUDGE_KEY", key)
  qas = raw_qa(FIXTURE, "conv-30")
  correct = [qa["question"] for qa in qas if qa["category"] in (1, 4)]
  with _JudgeServer(correct) as server:
    report = evaluate.run(fixture_config(tmp_path, **{
        "eval.judge": server.url, "eval.judge_model": "judge-model", "eval.judge_api_key_env":
        "MEMR1_TEST_EVAL_JUDGE_KEY"}))
  assert len(server.requests) == len(qas)
  assert all(h["Authorization"] == f"Bearer {key}" and b["model"] == "judge-model" for h, b in server.requests)
  j = {g["category"]: g["j"] for g in report["groups"]}
  assert j == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0, None: 0.5}
  for path in (tmp_path / "eval" / "validation").iterdir():
    assert key not in path.read_text()


@pytest.mark.parametrize("overrides,field", [
    ({"eval.judge": "ftp://127.0.0.1/v1", "eval.judge_model": "m"}, "config.eval.judge"),
    ({"eval.judge": "http://127.0.0.1:9/v1"}, "config.eval.judge_model"),
    ({"eval.manager_path": "/nonexistent/manager"}, "config.eval.manager_path"),
    ({"eval.split": "dev"}, "config.eval.split"),
    ({"eval.checkpoint": "first"}, "config.eval.checkpoint"),
    ({"memory.extraction": "llm"}, "config.eval.manager_path"),
])
def test_eval_bad_config_names_the_field(tmp_path, overrides, field):
  """Bad eval settings fail before any model loads, with a ConfigError naming the config field."""
  with pytest.raises(components.ConfigError, match=field.replace(".", r"\.")):
    evaluate.run(fixture_config(tmp_path, **overrides))
