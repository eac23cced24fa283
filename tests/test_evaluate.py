"""mode=eval (memr1_jax/evaluate.py): banks, greedy answers, judges, per-category report files."""

import collections
import json
import os
import secrets
import socket
import threading

import numpy as np
import pytest

from memr1_jax import components, evaluate, tasks
from memr1_jax.data import longmemeval, read_locomo
from memr1_jax.data.splits import without_adversarial
from memr1_jax.episodes.policy import ScriptedPolicy
from memr1_jax.episodes.runner import RunnerConfig
from memr1_jax.errors import ConfigError
from memr1_jax.eval.judge import Judge, JudgeError
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.testing.chat_server import ChatServer, last_user_message
from memr1_jax.testing.smoke import locomo_fixture_config as fixture_config
from memr1_jax.testing.smoke import smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "locomo_small.json")
DATA_DIR = os.environ.get("MEMR1_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
LOCOMO = os.path.join(DATA_DIR, "locomo", "locomo10.json")




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
  c = smoke_config(tmp_path, "locomo", **{"data.path": LOCOMO, "eval.split": "validation",
                                "eval.manager_path": "add_all", "rollout.max_new_tokens": 2,
                                "rollout.max_batch": 128, "memory.answer_k_per_speaker": 1})
  report = evaluate.run(c)
  expected = collections.Counter(qa["category"] for qa in raw_qa(LOCOMO, "conv-30"))
  assert report_counts(report) == dict(expected)
  assert report["groups"][-1]["name"] == "overall" and report["groups"][-1]["count"] == 81 == report["questions"]
  out = tmp_path / "eval" / "validation" / "base"
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
  manager_dir = _export_base(tmp_path, "manager_hf")
  c = fixture_config(tmp_path / "run", **{"eval.manager_path": manager_dir, "eval.answer_path": manager_dir})
  report = evaluate.run(c)
  turns = raw_turn_count(FIXTURE, "conv-30")
  assert report["banks"]["manager_calls"] == turns
  # Every reply yields at least one operation (a malformed one is a NOOP).
  assert sum(report["banks"]["counts"].values()) >= turns
  assert report["banks"]["format_errors"] <= turns
  assert report_counts(report) == dict(collections.Counter(qa["category"] for qa in raw_qa(FIXTURE, "conv-30")))
  assert report["manager"] == report["answer"] == manager_dir and "policy_step" not in report
  assert report["policies"]["manager"]["checkpoint"] == manager_dir == report["policies"]["answer"]["model"]
  assert report["policies"]["extractor"] == {"extraction": "simple"}
  assert os.path.basename(report["out_dir"]).startswith("pair-") and len(read_predictions(report["out_dir"])) == 4


def _scripted_answerer(correct_questions):
  def respond(prompt):
    question = prompt.view.question.question
    return f"Useful memories: none\n**Answer:** {correct_questions.get(question, 'no idea')}"
  return ScriptedPolicy(respond)


def test_evaluate_conversations_scores_scripted_agents():
  """A manager that ADDs one memory per turn and an answerer right on temporal / single-hop: exact hand scores."""
  conv = without_adversarial([c for c in read_locomo(FIXTURE) if c.sample_id == "conv-30"][0])
  calls = []

  def manage(prompt):
    calls.append(prompt)
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


def _export_base(tmp_path, name):
  """The fixture config's base model exported as a Hugging Face directory tmp_path/name; returns its path."""
  from memr1_jax.models.loading import export_pretrained  # pylint: disable=g-import-not-at-top
  base = fixture_config(tmp_path / "base")
  model, _ = components.load_policy(base, None)
  path = str(tmp_path / name)
  export_pretrained(model, path, tokenizer_dir=components.tokenizer_dir(base))
  return path


def test_eval_local_checkpoint_judge_grades_every_answer(tmp_path):
  """A local checkpoint that is not under evaluation judges every prediction; J is the mean of the labels."""
  judge_dir = _export_base(tmp_path, "judge_hf")
  report = evaluate.run(fixture_config(tmp_path, **{"eval.judge": judge_dir, "eval.judge_max_tokens": 4}))
  overall = report["groups"][-1]
  predictions = read_predictions(tmp_path / "eval" / "validation" / "base")
  assert overall["j_count"] == overall["count"] == 4 and report["judge"] == judge_dir
  assert judge_dir in report["judge_model"]
  assert all(isinstance(p["judge"], bool) for p in predictions)
  assert overall["j"] == np.mean([p["judge"] for p in predictions])
  assert report["work"]["judge_unparseable"] == sum(p["judge_format_error"] in ("no label found", "empty reply")
                                                    for p in predictions)


def _judge_server(correct, down_after=None):
  """A stub judge: CORRECT for the questions in `correct`, WRONG otherwise, with a reason; once it has given
  `server.down_after` verdicts it answers HTTP 503 (down) until that is set to None."""
  state = {"verdicts": 0}
  lock = threading.Lock()

  def reply(body, attempt):
    user = last_user_message(body)
    with lock:
      if server.down_after is not None and state["verdicts"] >= server.down_after:
        return 503
      if "Generated answer:" in user:
        state["verdicts"] += 1
    label = "CORRECT" if any(f"Question: {q}\n" in user for q in correct) else "WRONG"
    return json.dumps({"reason": "compared with the gold answer", "label": label})

  server = ChatServer(reply)
  server.down_after = down_after
  return server


def judge_requests(server, start=0):
  """The questions of the grading requests `server` received (from request `start` on; not the check request)."""
  users = [b["messages"][-1]["content"] for _, b in server.requests[start:]]
  return [u.split("Question: ", 1)[1].split("\n", 1)[0] for u in users if "Generated answer:" in u]


def test_eval_http_judge_scores_per_category(tmp_path, monkeypatch):
  """An HTTP judge on 127.0.0.1 grades each question once; J per category follows its labels; no key on disk."""
  key = "sk-test-" + secrets.token_hex(12)
  monkeypatch.setenv("MEMR1_TEST_EVAL_JUDGE_KEY", key)
  qas = raw_qa(FIXTURE, "conv-30")
  correct = [qa["question"] for qa in qas if qa["category"] in (1, 4)]
  with _judge_server(correct) as server:
    report = evaluate.run(fixture_config(tmp_path, **{
        "eval.judge": server.url, "eval.judge_model": "judge-model", "eval.judge_api_key_env":
        "MEMR1_TEST_EVAL_JUDGE_KEY"}))
  assert len(judge_requests(server)) == len(qas) and len(server.requests) == len(qas) + 1  # + the check request.
  assert all(h["Authorization"] == f"Bearer {key}" and b["model"] == "judge-model" for h, b in server.requests)
  j = {g["category"]: g["j"] for g in report["groups"]}
  assert j == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0, None: 0.5}
  for path in (tmp_path / "eval").rglob("*"):
    assert path.is_dir() or key not in path.read_text()


@pytest.mark.parametrize("overrides,field", [
    ({"eval.judge": "ftp://127.0.0.1/v1", "eval.judge_model": "m"}, "config.eval.judge"),
    ({"eval.judge": "http://127.0.0.1:9/v1"}, "config.eval.judge_model"),
    ({"eval.manager_path": "/nonexistent/manager"}, "config.eval.manager_path"),
    ({"eval.split": "dev"}, "config.eval.split"),
    ({"eval.checkpoint": "first"}, "config.eval.checkpoint"),
    ({"memory.extraction": "llm"}, "config.memory.extractor"),
    ({"memory.extraction": "llm", "memory.extractor": "/nonexistent/extractor"}, "config.memory.extractor"),
    ({"memory.extraction": "llm", "memory.extractor": "http://127.0.0.1:9/v1"}, "config.memory.extractor_model"),
])
def test_eval_bad_config_names_the_field(tmp_path, overrides, field):
  """Bad eval settings fail before any model loads, with a ConfigError naming the config field."""
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    evaluate.run(fixture_config(tmp_path, **overrides))


def _http_judge_overrides(url):
  """Fixture overrides for the stub judge at `url`: no API key, no retries (a 503 fails at once)."""
  return {"eval.judge": url, "eval.judge_model": "judge-model", "eval.judge_api_key_env": "",
          "eval.judge_retries": 0}


def _count_calls(monkeypatch, module, name, count=lambda *args, **kwargs: 1):
  """Wraps module.name so that each call adds count(*args, **kwargs) to the returned list."""
  calls, real = [], getattr(module, name)

  def wrapped(*args, **kwargs):
    calls.append(count(*args, **kwargs))
    return real(*args, **kwargs)

  monkeypatch.setattr(module, name, wrapped)
  return calls


def test_eval_resumes_after_judge_goes_down(tmp_path, monkeypatch):
  """Judge down after 2 verdicts: JudgeError naming the dir, work kept; the rerun asks only the 2 missing verdicts."""
  qas = raw_qa(FIXTURE, "conv-30")
  correct = [qa["question"] for qa in qas if qa["category"] in (1, 4)]
  out = tmp_path / "eval" / "validation" / "base"
  answered = _count_calls(monkeypatch, evaluate.runner, "answer_episodes", lambda policy, banks, items, *a, **k:
                          len(items))
  built = _count_calls(monkeypatch, evaluate, "build_eval_banks")
  with _judge_server(correct, down_after=2) as server:
    c = fixture_config(tmp_path, **_http_judge_overrides(server.url))
    with pytest.raises(JudgeError, match="HTTP 503") as error:
      evaluate.run(c)
    assert str(out) in str(error.value) and "\n" not in str(error.value)
    assert sum(answered) == 4 and len(built) == 1
    assert len(read_predictions(out)) == 4 and len((out / "verdicts.jsonl").read_text().splitlines()) == 2
    first = judge_requests(server)
    graded = first[:2]  # The two requests the endpoint answered before it went down.
    server.down_after, start = None, len(server.requests)
    report = evaluate.run(c)
    again = judge_requests(server, start)
  assert sum(answered) == 4 and len(built) == 1  # Nothing answered twice; no bank rebuilt.
  assert sorted(again) == sorted(set(qa["question"] for qa in qas) - set(graded))
  assert len(read_predictions(out)) == 4 and len((out / "verdicts.jsonl").read_text().splitlines()) == 4
  assert {g["category"]: g["j"] for g in report["groups"]} == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0, None: 0.5}
  assert report["work"] == {"answered": 0, "answers_resumed": 4, "verdicts_asked": 2, "banks_resumed": True,
                            "judge_unparseable": 0, "judge_format_errors": 0}


def test_eval_unreachable_judge_fails_before_loading_models(tmp_path, monkeypatch):
  """A judge endpoint that does not answer: a one-line JudgeError (endpoint, model, reason) before any model loads."""
  with socket.socket() as sock:  # A port nothing listens on.
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

  def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded")

  monkeypatch.setattr(components, "load_trained_policy", no_model)
  monkeypatch.setattr(components, "load_policy", no_model)
  with pytest.raises(JudgeError) as error:
    evaluate.run(fixture_config(tmp_path, **_http_judge_overrides(url)))
  message = str(error.value)
  assert url in message and "'judge-model'" in message and "refused" in message.lower() and "\n" not in message
  assert not (tmp_path / "eval").exists()


def test_eval_reports_of_checkpoints_sit_side_by_side(tmp_path, monkeypatch, capsys):
  """eval.checkpoint=latest (step 7) and none write to latest-step7/ and base/, each report.json with provenance."""
  real = components.load_trained_policy
  monkeypatch.setattr(components, "load_trained_policy", lambda config, mesh, checkpoint: (
      *real(config, mesh, "none")[:2], 7 if checkpoint == "latest" else None))
  out = tmp_path / "eval" / "validation"
  latest = evaluate.run(fixture_config(tmp_path, **{"eval.checkpoint": "latest"}))
  assert capsys.readouterr().out.rstrip().endswith(f"# written to {out / 'latest-step7'}")
  latest_text = (out / "latest-step7" / "report.json").read_text()
  base = evaluate.run(fixture_config(tmp_path, **{"eval.checkpoint": "none"}))
  assert (out / "latest-step7" / "report.json").read_text() == latest_text
  assert latest["out_dir"] == str(out / "latest-step7") and base["out_dir"] == str(out / "base")
  for report, step in ((latest, 7), (base, None)):
    saved = json.loads((out / ("base" if step is None else "latest-step7") / "report.json").read_text())
    assert saved["groups"] == report["groups"] and len(read_predictions(report["out_dir"])) == 4
    assert saved["policies"]["manager"] == {"model": "add_all"} and saved["policies"]["answer"]["step"] == step
    assert saved["policies"]["answer"]["checkpoint"] == (None if step is None else
                                                         os.path.join(str(tmp_path), "checkpoints", "7"))
    assert saved["config"]["eval"]["checkpoint"] == ("latest" if step else "none")
    assert saved["config"]["workdir"] == str(tmp_path) and saved["judge_model"] == ""
    assert saved["started"] <= saved["finished"]


class _Killed(Exception):
  """Stands for the death of the process."""


def _resume_fixture():
  """The fixture's conv-30, a scripted manager and an answerer right on temporal / single-hop, each logging calls."""
  conv = without_adversarial([c for c in read_locomo(FIXTURE) if c.sample_id == "conv-30"][0])
  calls = {"manager": 0, "answer": []}

  def manage(prompt):
    calls["manager"] += 1
    return json.dumps({"operations": [{"op": "ADD", "text": f"memory {calls['manager']}"}]})

  answerer = _scripted_answerer({q.question: q.answer for q in conv.qa if q.category in (2, 4)})

  def answer(prompt):
    calls["answer"].append(prompt.view.question.question)
    if calls.get("fail_at") == len(calls["answer"]):
      raise _Killed  # The process dies here.
    return answerer.respond(prompt)

  def evaluate_with(store):
    return evaluate.evaluate_conversations(
        [conv], manager=ScriptedPolicy(manage), answerer=ScriptedPolicy(answer),
        bank_factory=lambda: MemoryBank(HashingEmbedder(32), 32, index="brute_force"),
        rcfg=RunnerConfig(answer_k_per_speaker=2), store=store, batch_size=2)

  return conv, calls, evaluate_with


def test_eval_killed_while_answering_resumes_without_answering_twice(tmp_path):
  """Killed at the 3rd answer (batches of 2): the first batch is on disk; the rerun answers only the other 2."""
  conv, calls, evaluate_with = _resume_fixture()
  calls["fail_at"] = 3
  with pytest.raises(_Killed):
    evaluate_with(evaluate.EvalStore(str(tmp_path), {"run": 1}))
  assert [p["question"] for p in read_predictions(tmp_path)] == calls["answer"][:2]
  calls["fail_at"], before = None, list(calls["answer"])
  store = evaluate.EvalStore(str(tmp_path), {"run": 1})
  assert "resuming" in store.note and len(store.answers) == 2
  outcome = evaluate_with(store)
  assert sorted(before[:2] + calls["answer"][len(before):]) == sorted(q.question for q in conv.qa)
  assert [p["question"] for p in outcome.predictions] == [q.question for q in conv.qa]
  assert outcome.work["answered"] == 2 and outcome.work["answers_resumed"] == 2
  assert {row.category: row.em for row in outcome.rows} == {1: 0.0, 2: 1.0, 3: 0.0, 4: 1.0, None: 0.5}


def test_eval_store_of_other_settings_starts_afresh_and_keeps_old_files(tmp_path):
  """Saved answers of other settings are not reused: all questions answered again, the old files moved aside."""
  conv, calls, evaluate_with = _resume_fixture()
  evaluate_with(evaluate.EvalStore(str(tmp_path), {"run": 1}))
  first = (tmp_path / "predictions.jsonl").read_text()
  store = evaluate.EvalStore(str(tmp_path), {"run": 2})
  assert "other settings (run)" in store.note and not store.answers
  evaluate_with(store)
  assert len(calls["answer"]) == 2 * len(conv.qa)
  aside = [p for p in tmp_path.iterdir() if p.name.startswith("superseded-")]
  assert len(aside) == 1 and (aside[0] / "predictions.jsonl").read_text() == first
  assert len(read_predictions(tmp_path)) == len(conv.qa)


LONGMEMEVAL_SAMPLE = os.path.join(DATA_DIR, "longmemeval", "longmemeval_oracle_sample_hydrabuild.json")


def _scripted_split_eval(tmp_path, name, path, right_types=()):
  """The test split of dataset `name` at `path` (as mode=eval reads it), ADD-all banks, an answerer right on the
  question types `right_types`; returns (conversations, outcome)."""
  conversations = tasks.load(smoke_config(tmp_path, "locomo", **{"data.name": name, "data.path": path})).splits()[
      "test"]
  right = {qa.question: qa.answer for c in conversations for qa in c.qa if qa.question_type in right_types}
  answerer, embed = _scripted_answerer(right), HashingEmbedder(32)
  return conversations, evaluate.evaluate_conversations(
      conversations, manager=None, answerer=answerer,
      bank_factory=lambda: MemoryBank(embed, 32, index="brute_force"),
      rcfg=RunnerConfig(answer_k_per_speaker=2))


def test_longmemeval_shared_sample_every_item_per_question_type(tmp_path):
  """The shared oracle sample: all 16 items evaluated, reported as the paper's Table 4 (SSU SSP OD MS KU TR)."""
  if not os.path.exists(LONGMEMEVAL_SAMPLE):
    pytest.skip(f"LongMemEval sample not found at {LONGMEMEVAL_SAMPLE} (set MEMR1_DATA_DIR)")
  raw = json.load(open(LONGMEMEVAL_SAMPLE))["data"]
  conversations, outcome = _scripted_split_eval(tmp_path, "longmemeval", LONGMEMEVAL_SAMPLE, ("multi-session",))
  assert len(conversations) == len(raw) == 16
  expected = collections.Counter(longmemeval.QUESTION_TYPE_CODES[item["question_type"]] for item in raw)
  names = [row.name for row in outcome.rows]
  assert names == ["SSU", "SSP", "OD", "MS", "KU", "TR", "overall"]
  assert {row.name: row.count for row in outcome.rows[:-1]} == dict(expected) and outcome.rows[-1].count == 16
  assert {row.name: row.em for row in outcome.rows}["MS"] == 1.0 and outcome.rows[-1].em == expected["MS"] / 16


def test_longmemeval_and_msc_fixtures_evaluate_every_item(tmp_path):
  """The fixtures' test splits hold every item (none kept back for training); MSC is reported as one group."""
  fixtures = os.path.join(REPO, "tests", "fixtures")
  _, lme = _scripted_split_eval(tmp_path, "longmemeval", os.path.join(fixtures, "longmemeval_hydrabuild_small.json"),
                                ("knowledge-update",))
  assert [(row.name, row.count, row.em) for row in lme.rows] == [("OD", 1, 0.0), ("KU", 1, 1.0), ("overall", 2, 0.5)]
  _, msc_outcome = _scripted_split_eval(tmp_path, "msc", os.path.join(fixtures, "msc_self_instruct_small.jsonl"))
  assert [(row.name, row.count) for row in msc_outcome.rows] == [("MSC", 2), ("overall", 2)]
