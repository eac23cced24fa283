"""The frozen fact extractor of memory.extraction=llm (memr1_jax/extractor.py): an OpenAI-compatible endpoint (a stub
server on 127.0.0.1) or a local checkpoint, its disk cache, its errors, and its wiring into the runner and mode=eval."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time

import pytest

from memr1_jax import components, defaults, evaluate, main
from memr1_jax import extractor as extractor_lib
from memr1_jax.data.schema import Conversation, Session, Turn
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import ScriptedPolicy
from memr1_jax.errors import ConfigError
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.models.loading import export_pretrained
from memr1_jax.testing.chat_server import ChatServer, last_user_message
from memr1_jax.testing.smoke import smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "locomo_small.json")
KEY_ENV = "MEMR1_TEST_EXTRACTOR_KEY"
_TURN_RE = re.compile(r"Turn by ([^:\n]+): (.*?)\n\nReply", re.DOTALL)


def canned_fact(speaker: str, text: str) -> str:
  """The fact the stub endpoint extracts from `speaker`'s turn `text`."""
  return f"{speaker} stated: {text}"


def _extractor_server(ok_first: int | None = None, slow_s: float = 0.0) -> ChatServer:
  """A stub endpoint that extracts `canned_fact` from the turn of each request.

  The first attempt at a turn whose text holds RATE / FAIL / GARBAGE / SLOW gets HTTP 429 / HTTP 500 / a body that
  is not JSON / its reply after `slow_s` seconds; a turn holding MALFORMED gets "[1, 2]" (no usable fact), EMPTY gets
  "[]". With `server.ok_first` set, every request after that many answers HTTP 503 (the endpoint is down).
  `server.turn_attempts` counts the requests per turn text.
  """
  attempts: collections.Counter = collections.Counter()
  lock = threading.Lock()

  def reply(body, attempt):
    speaker, text = _TURN_RE.search(last_user_message(body)).groups()
    with lock:
      attempts[text] += 1
      first = attempts[text] == 1
    down = server.ok_first is not None and len(server.requests) > server.ok_first
    if down or (first and ("RATE" in text or "FAIL" in text)):
      return 503 if down else 429 if "RATE" in text else 500
    if first and "SLOW" in text:
      time.sleep(slow_s)
    if first and "GARBAGE" in text:
      return b"<html>not json</html>"
    return "[1, 2]" if "MALFORMED" in text else "[]" if "EMPTY" in text else json.dumps([canned_fact(speaker, text)])

  server = ChatServer(reply)
  server.ok_first, server.turn_attempts = ok_first, attempts
  return server


@pytest.fixture
def api_key(monkeypatch):
  key = "sk-extractor-" + secrets.token_hex(12)
  monkeypatch.setenv(KEY_ENV, key)
  return key


def extractor_config(tmp_path, url, **overrides):
  """The smoke config with the frozen extractor at `url`: tiny timeout and backoff, its cache under tmp_path."""
  return smoke_config(tmp_path, **{
      "memory.extraction": "llm", "memory.extractor": url, "memory.extractor_model": "extractor-model",
      "memory.extractor_api_key_env": KEY_ENV, "memory.extractor_cache": str(tmp_path / "cache" / "facts.sqlite"),
      "memory.extractor_timeout_s": 0.5, "memory.extractor_retries": 2, "memory.extractor_backoff_s": 0.0,
      "memory.extractor_concurrency": 4, **overrides})


def session_of(*texts, speaker="Alice", index=1) -> Session:
  """A session whose turns by `speaker` say `texts` (dia_ids D<index>:1, D<index>:2, ...)."""
  return Session(index, "1 May 2023", tuple(Turn(speaker, text, f"D{index}:{i + 1}") for i, text in enumerate(texts)))


def items_of(session: Session):
  return [(session, turn) for turn in session.turns]


def test_http_extractor_retries_caches_and_a_rerun_makes_no_call(tmp_path, api_key, caplog, capsys):
  """429 / 500 / unreadable / timed-out replies are retried, a malformed reply gives no fact (counted), everything is
  cached: a rerun over the same cache sends nothing; the key goes only into the Bearer header."""
  caplog.set_level(logging.DEBUG)
  session = session_of("I drink tea.", "RATE I swim.", "FAIL I sing.", "GARBAGE I cook.", "SLOW I run.",
                       "MALFORMED hm.", "EMPTY hi.")
  with _extractor_server(slow_s=1.5) as server:
    config = extractor_config(tmp_path, server.url)
    extract = components.runner_config(config).extract
    assert isinstance(extract, extractor_lib.FrozenExtractor)
    first = extract(items_of(session))
    sent = len(server.requests)
    again = components.fact_extractor(config)  # A rerun: a new extractor over the same cache file.
    second = again(items_of(session))
    assert len(server.requests) == sent
  facts = [[f.text for f in ext.facts] for ext in first]
  plain = [[canned_fact("Alice", t.text)] for t in session.turns[:5]]
  assert facts == plain + [[], []]
  assert first[0].facts[0].source_turn_ids == ("D1:1",) and first[0].facts[0].timestamp == "1 May 2023"
  assert first[5].format_error is not None and first[6].format_error is None  # "[]" is well formed: nothing to store.
  assert dict(server.turn_attempts) == {t.text: 2 if t.text.split()[0] in ("RATE", "FAIL", "GARBAGE", "SLOW") else 1
                                   for t in session.turns}
  assert dataclasses.asdict(extract.counters) == {"calls": 7, "cache_hits": 0, "malformed": 1, "format_errors": 0,
                                                "failures": 0}
  assert second == first
  assert dataclasses.asdict(again.counters) == {"calls": 0, "cache_hits": 7, "malformed": 1, "format_errors": 0,
                                              "failures": 0}
  for headers, body in server.requests:
    assert headers["Authorization"] == f"Bearer {api_key}"
    assert body["model"] == "extractor-model" and body["temperature"] == 0.0 and body["max_tokens"] == 256
  assert "attempt 1 of 3" in caplog.text
  cache_bytes = b"".join(open(os.path.join(tmp_path / "cache", name), "rb").read()
                         for name in os.listdir(tmp_path / "cache"))
  captured = capsys.readouterr()
  shown = [caplog.text, repr(extract), repr(extract.backend), repr(extract.backend.config), str(extract.identity),
           captured.out, captured.err, json.dumps(defaults.redacted(config))]
  assert all(api_key not in text for text in shown) and api_key.encode() not in cache_bytes


def test_endpoint_down_names_the_extractor_and_the_cache_keeps_earlier_replies(tmp_path, api_key):
  """An endpoint that goes down after 2 replies: ExtractorError naming config.memory.extractor and the cache; the 2
  replies are in the cache file, and the rerun asks only for the 2 others."""
  session = session_of("I drink tea.", "I swim.", "I sing.", "I cook.")
  with _extractor_server(ok_first=2) as server:
    config = extractor_config(tmp_path, server.url, **{"memory.extractor_concurrency": 1})
    extract = components.fact_extractor(config)
    with pytest.raises(extractor_lib.ExtractorError) as error:
      extract(items_of(session))
    message = str(error.value)
    assert f"config.memory.extractor={server.url!r}" in message and "HTTP 503" in message
    assert config.memory.extractor_cache in message and "keeps" in message and "\n" not in message
    assert api_key not in message and extract.counters.failures == 1
    with sqlite3.connect(config.memory.extractor_cache) as db:
      assert db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 2
    server.ok_first, start = None, len(server.requests)
    rerun = components.fact_extractor(config)
    facts = [[f.text for f in ext.facts] for ext in rerun(items_of(session))]
    asked = [_TURN_RE.search(body["messages"][-1]["content"]).group(2) for _, body in server.requests[start:]]
  assert facts == [[canned_fact("Alice", t.text)] for t in session.turns]
  assert rerun.counters.calls == 2 and rerun.counters.cache_hits == 2
  assert sorted(asked) == ["I cook.", "I sing."]


def test_runner_walks_over_the_extractors_facts_each_turn_asked_once(tmp_path, api_key):
  """build_banks and add_all_banks with the frozen extractor: the manager is shown the endpoint's facts, a turn with
  none is skipped, each turn's prompt goes to the endpoint once (all of them in one prefetch)."""
  conv_a = Conversation("a", "Alice", "Bob", (session_of("I drink tea.", "EMPTY hi.", "I swim."),), ())
  conv_b = Conversation("b", "Bob", "Alice", (session_of("I cook.", speaker="Bob"),), ())
  shown = []

  def manage(prompt):
    shown.append([f.text for f in prompt.view.facts])
    return json.dumps({"operations": [{"op": "ADD", "text": f.text} for f in prompt.view.facts]})

  embed = HashingEmbedder(32)
  bank = lambda: MemoryBank(embed, 32, index="brute_force")  # pylint: disable=unnecessary-lambda-assignment
  with _extractor_server() as server:
    cfg = components.runner_config(extractor_config(tmp_path, server.url))
    banks, stats = runner.greedy_banks([conv_a, conv_b], ScriptedPolicy(manage), bank, cfg)
    added = runner.add_all_banks([conv_a, conv_b], bank, cfg)
  assert sorted(map(tuple, shown)) == sorted([(canned_fact("Alice", "I drink tea."),),
                                              (canned_fact("Alice", "I swim."),), (canned_fact("Bob", "I cook."),)])
  assert stats.manager_calls == 3 and len(banks["a"]) == 2 and len(added["a"]) == 2 and len(added["b"]) == 1
  assert len(server.requests) == 4 and cfg.extract.counters.calls == 4


def test_local_checkpoint_extractor_extracts_and_caches(tmp_path, monkeypatch):
  """A tiny random checkpoint directory as the extractor: one Extraction per turn (whatever it says), cached, and a
  rerun over the cache loads no model."""
  base = smoke_config(tmp_path / "base")
  model, _ = components.load_policy(base, None)
  path = str(tmp_path / "extractor_hf")
  export_pretrained(model, path, tokenizer_dir=components.tokenizer_dir(base))
  del model
  config = smoke_config(tmp_path / "run", **{"memory.extraction": "llm", "memory.extractor": path,
                                             "memory.extractor_max_tokens": 4})
  session = session_of("I drink tea.", "I swim.", "I sing.")
  extract = components.fact_extractor(config)
  assert extract.identity == {"backend": "local", "path": path, "max_tokens": 4}
  first = extract(items_of(session))
  assert len(first) == 3 and extract.counters.calls == 3
  assert os.path.isfile(tmp_path / "run" / "extractor_cache.sqlite")

  def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded")

  monkeypatch.setattr(components, "load_policy", no_model)
  again = components.fact_extractor(config)
  assert again(items_of(session)) == first
  assert again.counters.calls == 0 and again.counters.cache_hits == 3


def test_eval_builds_banks_from_the_frozen_extractor_not_the_manager(tmp_path, api_key, monkeypatch):
  """mode=eval with memory.extraction=llm and the ADD-all manager: every fact ADDed is the endpoint's, the report
  counts the extractor's calls, and an eval of a fresh workdir over the same cache asks the endpoint nothing."""
  # A scripted answer agent in place of the tiny model: this test is about the facts, not the answers.
  monkeypatch.setattr(components, "load_trained_policy", lambda config, mesh, checkpoint: (None, None, None))
  monkeypatch.setattr(components, "make_engine_policy", lambda *args, **kwargs: ScriptedPolicy(
      lambda prompt: "Useful memories: none\n**Answer:** none"))
  overrides = {"task": "", "data.name": "locomo", "data.path": FIXTURE, "eval.split": "validation",
               "eval.manager_path": "add_all", "rollout.max_new_tokens": 2, "memory.answer_k_per_speaker": 2}
  with _extractor_server() as server:
    report = evaluate.run(extractor_config(tmp_path / "one", server.url, **overrides,
                                           **{"memory.extractor_cache": str(tmp_path / "facts.sqlite")}))
    sent = len(server.requests)
    again = evaluate.run(extractor_config(tmp_path / "two", server.url, **overrides,
                                          **{"memory.extractor_cache": str(tmp_path / "facts.sqlite")}))
    assert len(server.requests) == sent
  out = tmp_path / "one" / "eval" / "validation" / "base"
  memories = {m["text"] for line in (out / "predictions.jsonl").read_text().splitlines()
              for m in json.loads(line)["memories"]}
  assert memories and all(" stated: " in text for text in memories)
  assert report["extractor"]["calls"] == sent == report["banks"]["counts"]["ADD"] > 0
  assert again["extractor"]["calls"] == 0 and again["extractor"]["cache_hits"] >= sent


@pytest.mark.parametrize("overrides,message", [
    ({"memory.extractor": ""}, "config.memory.extraction='llm' needs config.memory.extractor"),
    ({"memory.extractor": "/nonexistent/extractor"}, "config.memory.extractor='/nonexistent/extractor': neither"),
    ({"memory.extractor_model": ""}, "config.memory.extractor_model: empty"),
    ({"memory.extractor_api_key_env": "MEMR1_TEST_UNSET_KEY"}, "config.memory.extractor_api_key_env='MEMR1_TEST_UN"),
    ({"memory.extractor_api_key_env": "sk-abc123"}, "config.memory.extractor_api_key_env must be the NAME"),
    ({"memory.extractor_retries": -1}, "config.memory.extractor_retries=-1 is out of range"),
    ({"memory.extractor_timeout_s": 0.0}, "config.memory.extractor_timeout_s=0.0 is out of range"),
])
def test_bad_extractor_config_names_the_field(tmp_path, api_key, monkeypatch, overrides, message):
  """main.validate_config rejects a bad frozen-extractor setting with a ConfigError naming the file and the field."""
  monkeypatch.delenv("MEMR1_TEST_UNSET_KEY", raising=False)
  config = extractor_config(tmp_path, "http://127.0.0.1:9/v1", **overrides)
  with pytest.raises(ConfigError, match=re.escape(f"smoke.py: {message}")):
    main.validate_config(config, "smoke.py")


def test_extractor_key_pasted_into_the_config_is_refused_and_redacted(tmp_path, api_key):
  """The extractor's key in a config field: validate_config refuses it without echoing it, redacted() hides it."""
  config = extractor_config(tmp_path, f"http://127.0.0.1:9/v1?key={api_key}")
  with pytest.raises(ConfigError, match=f"config.memory.extractor holds the value of \\${KEY_ENV}") as error:
    main.validate_config(config, "smoke.py")
  assert api_key not in str(error.value)
  saved = json.dumps(defaults.redacted(config))
  assert api_key not in saved and "key=<redacted>" in saved


def test_cache_file_that_is_not_sqlite_is_a_named_error(tmp_path, api_key):
  """A cache path holding something else: ExtractorError naming the file and config.memory.extractor_cache."""
  path = tmp_path / "facts.sqlite"
  path.write_text("not a database, " * 100)
  extract = components.fact_extractor(extractor_config(tmp_path, "http://127.0.0.1:9/v1",
                                                       **{"memory.extractor_cache": str(path)}))
  with pytest.raises(extractor_lib.ExtractorError, match="config.memory.extractor_cache") as error:
    extract(items_of(session_of("I drink tea.")))
  assert str(path) in str(error.value)


def test_cache_key_depends_on_extractor_and_exact_messages():
  """Another model, another reply budget or one changed character of the prompt is another cache key."""
  ident = {"backend": "http", "url": "http://x/v1", "model": "m", "max_tokens": 8}
  messages = [{"role": "user", "content": "Turn by A: hi"}]
  key = extractor_lib.cache_key(ident, messages)
  assert key == extractor_lib.cache_key(dict(reversed(list(ident.items()))), messages)
  assert key != extractor_lib.cache_key({**ident, "model": "n"}, messages)
  assert key != extractor_lib.cache_key({**ident, "max_tokens": 9}, messages)
  assert key != extractor_lib.cache_key(ident, [{"role": "user", "content": "Turn by A: hi!"}])


@pytest.mark.parametrize("fallback", [False, True])
def test_malformed_reply_gives_no_fact_or_with_fallback_the_turn_itself(tmp_path, fallback):
  """An empty reply is counted malformed; it yields no fact, or with fallback_to_turn the turn's own text."""
  session = session_of("I moved to Oslo.")
  extract = extractor_lib.FrozenExtractor(lambda chats: [""] * len(chats), {"backend": "stub"},
                                          extractor_lib.ExtractionCache(str(tmp_path / "cache.sqlite")),
                                          fallback_to_turn=fallback)
  (ext,) = extract(items_of(session))
  assert [f.text for f in ext.facts] == (["Alice: I moved to Oslo."] if fallback else [])
  assert (extract.counters.malformed, extract.counters.format_errors) == (1, 0)
