"""mode=distill (memr1_jax/distill.py): a teacher behind a stub OpenAI-compatible server writes the manager and
answer-agent trajectories mode=sft reads; cached, resumable, and its failures named."""

import json
import os
import socket

import pytest

from memr1_jax import distill, main, sft
from memr1_jax.errors import ConfigError
from memr1_jax.testing.chat_server import ChatServer, last_user_message
from memr1_jax.testing.smoke import LOCOMO_FIXTURE, locomo_fixture_config


def _train_questions():
  """{question: gold} of the fixture's training conversation conv-26 (category 5 left out)."""
  sample = next(s for s in json.load(open(LOCOMO_FIXTURE)) if s["sample_id"] == "conv-26")
  return {qa["question"]: str(qa["answer"]) for qa in sample["qa"] if qa["category"] != 5}


def _teacher(golds, down_after=None):
  """A stub teacher: ADDs each turn's first fact (its 3rd manager prompt gets an unreadable reply); answers right,
  except the first question it is asked, which it answers "no idea"; HTTP 503 after `server.down_after` requests."""
  state = {"manager": 0, "answers": 0}

  def reply(body, attempt):
    if server.down_after is not None and len(server.requests) > server.down_after:
      return 503
    user = last_user_message(body)
    if "New information from the turn:" in user:
      state["manager"] += 1
      fact = user.split("New information from the turn:\n- ", 1)[1].split("\n", 1)[0]
      return "not json" if state["manager"] == 3 else json.dumps({"operations": [{"op": "ADD", "text": fact}]})
    state["answers"] += 1
    question = user.rsplit("Question: ", 1)[1].strip()
    answer = "no idea" if state["answers"] == 1 else golds[question]
    return f"Useful memories: none\n**Answer:** {answer}"

  server = ChatServer(reply)
  server.down_after = down_after
  return server


def _config(tmp_path, url, **overrides):
  return locomo_fixture_config(tmp_path, **{"mode": "distill", "distill.teacher": url,
                                            "distill.teacher_model": "teacher-model", "distill.teacher_api_key_env": "",
                                            "distill.retries": 0, "distill.concurrency": 2, **overrides})


def test_distill_writes_sft_trajectories_and_a_rerun_asks_nothing(tmp_path):
  """Every readable manager reply and correct-or-not answer becomes a trajectory mode=sft reads; a rerun of the same
  command makes no request and writes the same files."""
  golds = _train_questions()
  with _teacher(golds) as server:
    config = _config(tmp_path, server.url)
    main.validate_config(config)
    summary = distill.run(config)
    asked = len(server.requests)
    out = tmp_path / "distill"
    first = {name: (out / name).read_text() for name in (distill.MANAGER_FILE, distill.ANSWER_FILE)}
    again = distill.run(config)
    assert len(server.requests) == asked  # All from the cache.
  turns = summary["manager"]["prompts"]
  assert asked == turns + len(golds) and summary["teacher_calls"] == asked and again["cache_hits"] == asked
  assert summary["manager"]["kept"] == turns - 1 and summary["manager"]["format_errors"] == 1
  assert summary["answer"] == {"questions": len(golds), "kept": len(golds), "format_errors": 0,
                               "exact_match": len(golds) - 1}
  assert {name: (out / name).read_text() for name in first} == first
  manager = sft.read_trajectories(str(out / distill.MANAGER_FILE))
  answers = sft.read_trajectories(str(out / distill.ANSWER_FILE))
  assert len(manager) == turns - 1 and all(json.loads(r["response"])["operations"][0]["op"] == "ADD" for r in manager)
  assert sorted(r["messages"][-1]["content"].rsplit("Question: ", 1)[1] for r in answers) == sorted(golds)
  assert all(r["response"].startswith("Useful memories:") for r in answers)


def test_distill_correct_only_and_a_teacher_that_goes_down(tmp_path):
  """The endpoint down after 4 replies: TeacherError naming it, those 4 cached; the rerun (endpoint back, correct
  answers only) asks only the rest and leaves out the wrong answer."""
  golds = _train_questions()
  with _teacher(golds, down_after=4) as server:
    config = _config(tmp_path, server.url, **{"distill.correct_answers_only": True})
    with pytest.raises(distill.TeacherError, match="HTTP 503.*keeps") as error:
      distill.run(config)
    assert "teacher-model" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "distill" / distill.MANAGER_FILE).exists()
    server.down_after, start = None, len(server.requests)
    summary = distill.run(config)
    asked_again = len(server.requests) - start
  assert summary["cache_hits"] == 4 and asked_again == summary["teacher_calls"] == summary["manager"]["prompts"] + len(
      golds) - 4
  assert summary["answer"]["kept"] == len(golds) - 1


def test_distill_bad_teacher_is_a_named_config_error(tmp_path):
  """No teacher, a URL without a model, a path that is no model: ConfigError naming the field; nothing written."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
  for overrides, field in (({"distill.teacher": ""}, "config.distill.teacher"),
                           ({"distill.teacher_model": ""}, "config.distill.teacher_model"),
                           ({"distill.teacher": str(tmp_path / "nowhere")}, "config.distill.teacher")):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
      distill.run(_config(tmp_path, url, **overrides))
  assert not os.path.exists(tmp_path / "distill" / distill.MANAGER_FILE)
