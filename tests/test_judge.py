"""The LLM judge of mode=eval against a stub OpenAI-compatible server on 127.0.0.1: the paper's protocol (reason +
CORRECT / WRONG in JSON), malformed replies, 429s, resuming from the verdict cache, and the self-judging refusal."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memr1_jax import components, defaults, evaluate
from memr1_jax.checkpoint import Checkpointer
from memr1_jax.data import read_locomo
from memr1_jax.data.splits import without_adversarial
from memr1_jax.episodes.policy import ScriptedPolicy
from memr1_jax.episodes.runner import RunnerConfig
from memr1_jax.errors import ConfigError
from memr1_jax.eval import judge as judge_lib
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.testing.chat_server import ChatServer, last_user_message
from memr1_jax.testing.smoke import LOCOMO_FIXTURE, locomo_fixture_config


def _fixture_questions():
  """{category: question} of the fixture's conv-30 (one scored question per category 1-4)."""
  sample = next(s for s in json.load(open(LOCOMO_FIXTURE)) if s["sample_id"] == "conv-30")
  return {qa["category"]: qa["question"] for qa in sample["qa"] if qa["category"] != 5}


def _question(user: str) -> str:
  return user.split("Question: ", 1)[1].split("\n", 1)[0]


def _scripted_eval(tmp_path, config):
  """evaluate_conversations over the fixture's conv-30 with ADD-all banks, an answerer that always says "Paris", the
  HTTP judge of `config` (built as mode=eval builds it) and a report directory under tmp_path (no model runs)."""
  conv = without_adversarial(next(c for c in read_locomo(LOCOMO_FIXTURE) if c.sample_id == "conv-30"))
  answerer = ScriptedPolicy(lambda prompt: "Useful memories: none\n**Answer:** Paris")
  return evaluate.evaluate_conversations(
      [conv], manager=None, answerer=answerer,
      bank_factory=lambda: MemoryBank(HashingEmbedder(32), 32, index="brute_force"),
      rcfg=RunnerConfig(answer_k_per_speaker=2), judge=evaluate.http_judge(config),
      store=evaluate.EvalStore(str(tmp_path / "eval"), {"run": 1}))


def _judge_overrides(url):
  return {"eval.judge": url, "eval.judge_model": "judge-model", "eval.judge_api_key_env": "",
          "eval.judge_retries": 2, "eval.judge_backoff_s": 0.0, "eval.judge_concurrency": 2}


def test_judge_protocol_malformed_replies_and_429s(tmp_path):
  """Per question: 429 then CORRECT, no label at all, WRONG with a reason, a bare CORRECT: J, reasons, counts."""
  questions = _fixture_questions()
  replies = {questions[1]: json.dumps({"reason": "same city", "label": "CORRECT"}),
             questions[2]: "I am not sure about this one.",
             questions[3]: json.dumps({"reason": "another year", "label": "WRONG"}),
             questions[4]: "The answers agree, so CORRECT"}

  def reply(body, attempt):
    user = last_user_message(body)
    if "Generated answer:" not in user:
      return '{"reason": "check", "label": "CORRECT"}'
    question = _question(user)
    return 429 if question == questions[1] and attempt == 1 else replies[question]

  with ChatServer(reply) as server:
    outcome = _scripted_eval(tmp_path, locomo_fixture_config(tmp_path, **_judge_overrides(server.url)))
    graded = [_question(u) for u in server.user_messages() if "Generated answer:" in u]
  assert sorted(graded) == sorted(list(questions.values()) + [questions[1]])  # The 429 asked twice, nothing else.
  user = next(u for u in server.user_messages() if "Generated answer:" in u)
  assert '"reason"' in user and "CORRECT" in user and "WRONG" in user and "Gold answer:" in user
  assert {row.category: row.j for row in outcome.rows} == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0, None: 0.5}
  assert outcome.work["judge_unparseable"] == 1 and outcome.work["judge_format_errors"] == 2
  reasons = {p["question"]: p["judge_reason"] for p in outcome.predictions}
  assert reasons[questions[1]] == "same city" and reasons[questions[3]] == "another year"
  assert reasons[questions[2]] == ""
  saved = judge_lib.VerdictCache(str(tmp_path / "eval" / "verdicts.jsonl"))
  assert len(saved) == 4 and sum(saved.get(k).unparsed for k in saved._verdicts) == 1


class _Killed(Exception):
  """Stands for the death of the process."""


def test_restart_mid_judging_asks_no_verdict_twice(tmp_path, monkeypatch):
  """Killed after 2 verdicts are cached: the rerun asks only the other 2 questions, and J covers all 4."""
  questions = _fixture_questions()

  def reply(body, attempt):
    user = last_user_message(body)
    label = "CORRECT" if "Generated answer:" in user and _question(user) in (questions[1], questions[4]) else "WRONG"
    return json.dumps({"reason": "r", "label": label})

  real_put = judge_lib.VerdictCache.put

  def put(self, key, verdict):
    real_put(self, key, verdict)
    if len(self) == 2:
      raise _Killed

  with ChatServer(reply) as server:
    config = locomo_fixture_config(tmp_path, **{**_judge_overrides(server.url), "eval.judge_concurrency": 1})
    monkeypatch.setattr(judge_lib.VerdictCache, "put", put)
    with pytest.raises(_Killed):
      _scripted_eval(tmp_path, config)
    first = [_question(u) for u in server.user_messages() if "Generated answer:" in u]
    monkeypatch.setattr(judge_lib.VerdictCache, "put", real_put)
    start = len(server.requests)
    outcome = _scripted_eval(tmp_path, config)
    again = [_question(u) for u in server.user_messages(start) if "Generated answer:" in u]
  assert len(first) >= 2 and not set(first[:2]) & set(again)
  assert sorted(first[:2] + again) == sorted(questions.values())
  assert outcome.work["verdicts_asked"] == 2 and outcome.work["answers_resumed"] == 4
  assert {row.category: row.j for row in outcome.rows} == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0, None: 0.5}


def _no_model(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("a model was loaded")
  monkeypatch.setattr(components, "load_trained_policy", refuse)
  monkeypatch.setattr(components, "load_policy", refuse)


def test_self_judging_is_refused_before_any_model_loads(tmp_path, monkeypatch):
  """The judge may not be the weights under evaluation ("local", the answer agent's directory, the untrained policy);
  each is a SelfJudgingError naming the part, before any model loads; the verdicts cached before stay."""
  answer_dir = tmp_path / "answer_hf"  # What a Hugging Face directory looks like (no model is read here).
  answer_dir.mkdir()
  (answer_dir / "config.json").write_text("{}")
  (answer_dir / "model.safetensors").write_bytes(b"")
  answer_dir = str(answer_dir)
  verdicts = tmp_path / "run" / "eval" / "validation" / "base" / "verdicts.jsonl"
  verdicts.parent.mkdir(parents=True)
  verdicts.write_text('{"key": "k", "correct": true}\n')
  _no_model(monkeypatch)
  for overrides, part in (({"eval.judge": "local"}, "answer agent"),
                          ({"eval.judge": answer_dir, "eval.answer_path": answer_dir}, "answer agent"),
                          ({"eval.judge": "base"}, "answer agent"),
                          ({"eval.judge": answer_dir + "/", "eval.manager_path": answer_dir}, "manager")):
    with pytest.raises(evaluate.SelfJudgingError, match=part):
      evaluate.run(locomo_fixture_config(tmp_path / "run", **overrides))
  assert verdicts.read_text() == '{"key": "k", "correct": true}\n'
  assert issubclass(evaluate.SelfJudgingError, ConfigError)


def _save_run(workdir, config, params):
  """A training workdir holding `config` and a step-3 checkpoint whose policy is `params`."""
  os.makedirs(workdir, exist_ok=True)
  defaults.save(config, os.path.join(workdir, "config.json"))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  ckpt.save(3, {"learner": {"policy": params}}, {"step": 3})
  ckpt.close()


def test_answer_agent_from_a_training_workdir_and_a_checkpoint_of_the_wrong_shape(tmp_path):
  """A workdir's latest checkpoint loads with its step and its arrays (and can be the extractor, named by its last
  step); a checkpoint whose arrays have another shape stops mode=eval with a ConfigError naming it."""
  config = locomo_fixture_config(tmp_path / "run")
  model, _ = components.load_policy(config, None)
  params = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])
  params = jax_tree_float32(params)
  _save_run(str(tmp_path / "good"), config, params)
  loaded, _, answer = components.load_model_spec(config, None, str(tmp_path / "good"), "config.eval.answer_path")
  assert answer["step"] == 3 and answer["checkpoint"] == os.path.join(str(tmp_path / "good"), "checkpoints", "3")
  got = jax_tree_float32(nnx.to_pure_dict(nnx.split(loaded, nnx.Param, ...)[1]))
  jax.tree.map(np.testing.assert_array_equal, got, params)
  extractor = components.frozen_extractor(locomo_fixture_config(tmp_path / "run", **{
      "memory.extraction": "llm", "memory.extractor": str(tmp_path / "good") + "@best"}))
  assert extractor.identity["checkpoint"] == "best" and extractor.identity["last_step"] == 3  # The run, named.
  bad = dict(params)
  name = sorted(bad)[0]
  bad[name] = jax_tree_float32(_cut(bad[name]))
  _save_run(str(tmp_path / "bad"), config, bad)
  with pytest.raises(ConfigError, match="cannot read the policy"):
    evaluate.run(locomo_fixture_config(tmp_path / "run", **{"eval.answer_path": str(tmp_path / "bad") + "@latest"}))


def jax_tree_float32(tree):
  """`tree` with float arrays as float32 numpy arrays (the learner's master dtype)."""
  return jax.tree.map(lambda x: np.asarray(x, np.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _cut(tree):
  """The first array of `tree` with one row less."""
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, [leaves[0][:-1]] + leaves[1:])
