"""The memory service: the Python API on the demo base checkpoint, the store's write-ahead log and recovery, batching,
and a real uvicorn server under load, killed with SIGKILL and restarted."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from memr1_jax.service import store as store_lib
from memr1_jax.service.api import AddRequest, InvalidRequest, Memory, MemoryNotFound
from memr1_jax.testing import service as scripted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_KEY = "test-key-not-a-secret"


def _replayed(results: list[dict]) -> dict[int, str]:
  """{memory_id: text} after the operations `add` returned, applied in order to an empty bank."""
  bank: dict[int, str] = {}
  for result in results:
    for op in result["operations"]:
      if op["kind"] == "DELETE":
        del bank[op["memory_id"]]
      else:
        bank[op["memory_id"]] = op["text"]
  return bank


def test_api_on_the_demo_base_checkpoint(tmp_path):
  """The engine-backed Memory: each message is one manager call; the bank holds what the returned operations say; the
  answer lists only memories it was shown; a new Memory over the same store sees the same bank."""
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.memory.encoder = "hashing:256"  # No sentence encoder to compile.
  config.memory.related_min_score = -1.0
  config.rollout.max_new_tokens = 48
  config.jax_cache_dir = ""
  from memr1_jax.demo import DEMO_BASE_DIR  # pylint: disable=g-import-not-at-top
  memory = Memory.load(manager=DEMO_BASE_DIR, answer=DEMO_BASE_DIR, store=str(tmp_path), extractor="simple",
                       config=config)
  talks = [[{"role": "Kate", "content": "I got a pony named Daisy."}, {"role": "Hugo", "content": "I moved to Oslo."}],
           [{"role": "Kate", "content": "My pony ran away."}]]
  results = [memory.add("u1", talk, timestamp="7:05 pm on 21 June, 2023") for talk in talks]
  assert [r["manager_calls"] for r in results] == [2, 1]
  assert memory.stats()["manager_calls"] == 3
  bank = {e["memory_id"]: e["text"] for e in memory.get_all("u1")}
  assert bank == _replayed(results)
  assert [(h["kind"], h["memory_id"]) for h in memory.history("u1")] == [
      (op["kind"], op["memory_id"]) for r in results for op in r["operations"]]
  reply = memory.answer("u1", "What pet does Kate have now?")
  assert set(reply["retrieved_ids"]) <= set(bank) and set(reply["memory_ids"]) <= set(reply["retrieved_ids"])
  reopened = Memory(memory.manager, memory.answerer, store_lib.BankStore(
      str(tmp_path), memory.store.bank_factory, encoder=memory.store.encoder), memory.cfg)
  assert reopened.get_all("u1") == memory.get_all("u1")


class _CountingPolicy:
  """A ChatPolicy wrapper that records the number of prompts of every generate call."""

  def __init__(self, policy):
    self.policy, self.calls = policy, []

  def generate(self, prompts, **kwargs):
    self.calls.append(len(prompts))
    return self.policy.generate(prompts, **kwargs)


def test_add_many_batches_users_into_one_manager_call_per_message_index(tmp_path):
  """8 users' 2-message adds take 2 manager calls of 8 prompts and leave the banks that one-at-a-time adds leave; a
  user's second add in the same batch sees its first."""
  talks = {f"user{i}": [f"I moved to city {i}.", f"I work as a baker number {i}."] for i in range(8)}
  batched = scripted.scripted_memory(str(tmp_path / "batched"))
  batched.manager = _CountingPolicy(batched.manager)
  batched.add_many([AddRequest.make(u, talk, "t") for u, talk in talks.items()])
  assert batched.manager.calls == [8, 8]
  single = scripted.scripted_memory(str(tmp_path / "single"))
  for u, talk in talks.items():
    single.add(u, talk, "t")
  assert all(batched.get_all(u) == single.get_all(u) for u in talks)
  twice = batched.add_many([AddRequest.make("user0", "I moved to Oslo.", "t"),
                            AddRequest.make("user0", "I moved to Oslo again.", "t")])
  assert twice[1]["operations"][0]["old_text"] == twice[0]["operations"][0]["text"] == "user: I moved to Oslo."


def test_malformed_manager_reply_is_a_counted_noop(tmp_path):
  """A manager reply that does not parse changes nothing and is counted as a format error."""
  memory = scripted.scripted_memory(str(tmp_path))
  memory.add("u", "I moved to Oslo.")
  result = memory.add("u", "MALFORMED reply please")
  assert result["operations"] == [] and result["format_errors"] == 1
  assert memory.stats()["manager_format_errors"] == 1 and len(memory.get_all("u")) == 1


@pytest.mark.parametrize("snapshot_every", [1, 3, 1000])
def test_banks_reopen_as_they_were_after_a_crash(tmp_path, snapshot_every):
  """Without close (a crash after the log append, before or after a snapshot), a new Memory over the store replays the
  log: the same memories, embeddings, history and next id, for adds, updates, deletes and imports."""
  memory = scripted.scripted_memory(str(tmp_path), snapshot_every=snapshot_every)
  memory.add("u", [{"role": "Kate", "content": "I got a pony."}, {"role": "Hugo", "content": "I moved to Oslo."}])
  memory.add("u", [{"role": "Kate", "content": "I got a pony named Daisy."}])
  memory.add("u", "MALFORMED")
  memory.import_("u", '{"text": "imported memory", "speaker": "Iris", "timestamp": "today"}\n')
  memory.delete("u", 1)
  reopened = scripted.scripted_memory(str(tmp_path))
  before, after = memory.store.user("u").bank, reopened.store.user("u").bank
  assert reopened.get_all("u") == memory.get_all("u") and len(after) == 2
  for entry in before.entries():
    np.testing.assert_allclose(after.embedding(entry.memory_id), before.embedding(entry.memory_id), atol=1e-6)
  assert reopened.history("u") == memory.history("u")
  assert reopened.import_("u", '{"text": "next"}')["memory_ids"] == [before.next_id]


def test_torn_log_tail_is_cut_and_damage_before_it_raises(tmp_path):
  """A half-written last log line (killed inside the append) is dropped and cut off, so the next add logs cleanly; a
  damaged line before the last raises StoreError naming the file."""
  memory = scripted.scripted_memory(str(tmp_path), snapshot_every=1000)
  memory.add("u", "I moved to Oslo.")
  log = os.path.join(tmp_path, "users", "u", store_lib.LOG_FILE)
  good = open(log, "rb").read()
  with open(log, "ab") as f:
    f.write(b'{"seq": 2, "time": "x", "kind": "add", "steps": [{"timest')
  reopened = scripted.scripted_memory(str(tmp_path))
  assert [e["text"] for e in reopened.get_all("u")] == ["user: I moved to Oslo."]
  assert open(log, "rb").read() == good
  reopened.add("u", "I like chess.")
  assert [r["seq"] for r in store_lib.read_log(log)] == [1, 2]
  with open(log, "r+b") as f:
    f.seek(5)
    f.write(b"X")
  with pytest.raises(store_lib.StoreError, match="log.jsonl: line 1 is damaged"):
    scripted.scripted_memory(str(tmp_path)).get_all("u")


@pytest.mark.parametrize("user_id", ["", "..", "../etc", "a/b", ".hidden", "x" * 129, "caf\u00e9", None])
def test_user_ids_that_are_not_one_directory_are_refused(tmp_path, user_id):
  """User ids that could leave the store or are not plain names raise InvalidUserId, and nothing is written."""
  memory = scripted.scripted_memory(str(tmp_path))
  with pytest.raises(store_lib.InvalidUserId):
    memory.add(user_id, "I moved to Oslo.")
  with pytest.raises(store_lib.InvalidUserId):
    memory.get_all(user_id)
  assert memory.store.known_users() == []


def test_api_refuses_bad_requests_without_changing_anything(tmp_path):
  """Empty or oversized messages, bad k, a bad import line or an unknown memory raise named errors; the bank is
  unchanged."""
  memory = scripted.scripted_memory(str(tmp_path))
  memory.add("u", "I moved to Oslo.")
  for call in (lambda: memory.add("u", []), lambda: memory.add("u", "  "), lambda: memory.add("u", "x" * 10_000),
               lambda: memory.add("u", [{"role": "a", "text": "x"}]), lambda: memory.search("u", "q", k=0),
               lambda: memory.add("u", "\ud800"), lambda: memory.import_("u", '{"text": "ok"}\nnot json\n')):
    with pytest.raises(InvalidRequest):
      call()
  with pytest.raises(MemoryNotFound):
    memory.delete("u", 7)
  assert len(memory.get_all("u")) == 1 and len(memory.history("u")) == 1


# The HTTP server, in a subprocess.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _Server:
  """`python -m memr1_jax.testing.service` (the scripted agents behind the real app and uvicorn) on a free port."""

  def __init__(self, store: str, *extra: str):
    self.port = _free_port()
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "SERVICE_TEST_KEY": API_KEY}
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "memr1_jax.testing.service", f"--store={store}", f"--port={self.port}",
         "--api_key_env=SERVICE_TEST_KEY", "--max_body_bytes=65536", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      assert self.proc.poll() is None, self.proc.stdout.read().decode()
      try:
        if self.request("GET", "/healthz")[0] == 200:
          return
      except OSError:
        time.sleep(0.2)
    raise TimeoutError("the service did not start")

  def request(self, method: str, path: str, body=None, key: str | None = API_KEY, raw: bytes | None = None):
    """(status, parsed JSON or text) of one request."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=headers)
    try:
      with urllib.request.urlopen(req, timeout=30) as r:
        status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
      status, text = e.code, e.read().decode()
    try:
      return status, json.loads(text)
    except json.JSONDecodeError:
      return status, text

  def stop(self, sig=signal.SIGTERM) -> None:
    self.proc.send_signal(sig)
    self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  s = _Server(str(tmp_path_factory.mktemp("store")), "--related_min_score=2")
  yield s
  s.stop()


def test_server_under_load_batches_and_isolates_users(server):
  """32 concurrent users x 4 adds, then their questions: every add is acknowledged, they share batches (fewer batches
  than calls), and each user's bank and answer hold only that user's memories."""
  users = [f"load{i}" for i in range(32)]

  def session(user):
    acks = [server.request("POST", f"/v1/users/{user}/memories", {"messages": [
        {"role": "Kate", "content": f"{user} fact {n} is {user}-{n}"}], "timestamp": "t"}) for n in range(4)]
    return acks, server.request("POST", f"/v1/users/{user}/answer", {"question": f"what is {user} fact 2?"})

  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    out = dict(zip(users, pool.map(session, users)))
  for user, (acks, (status, reply)) in out.items():
    assert [s for s, _ in acks] == [200] * 4 and status == 200
    status, body = server.request("GET", f"/v1/users/{user}/memories")
    texts = {m["memory_id"]: m["text"] for m in body["memories"]}
    assert sorted(texts.values()) == sorted(f"Kate: {user} fact {n} is {user}-{n}" for n in range(4))
    assert set(reply["retrieved_ids"]) == set(texts) and user in reply["answer"]
  stats = server.request("GET", "/v1/stats")[1]
  assert stats["adds"] >= 128 and stats["batches"] < stats["adds"] + stats["answers"]


@pytest.mark.parametrize("method,path,body,raw,status,detail", [
    ("POST", "/v1/users/u/memories", None, b'{"messages": ', 422, "JSON decode error"),
    ("POST", "/v1/users/u/memories", {"messages": []}, None, 422, "at least 1 item"),
    ("POST", "/v1/users/u/memories", {"messages": "hi", "extra": 1}, None, 422, "Extra inputs"),
    ("POST", "/v1/users/u/search", {"query": "q", "k": 1000}, None, 422, "less than or equal to 100"),
    ("POST", "/v1/users/.hidden/search", {"query": "q"}, None, 422, "should match pattern"),
    ("POST", "/v1/users/u/search", None, b'{"query": "\xff\xfe"}', 400, "not UTF-8"),
    ("POST", "/v1/users/u/search", None, b'{"query": "' + b"a" * 70000 + b'"}', 413, "over 65536 bytes"),
    ("DELETE", "/v1/users/u/memories/12345", None, None, 404, "has no memory 12345"),
    ("POST", "/v1/users/u/import", None, b'{"text": "ok"}\n{"text": 5}\n', 400, "import line 2"),
])
def test_server_refuses_bad_requests_with_a_clear_4xx(server, method, path, body, raw, status, detail):
  """Malformed JSON, invalid fields, a bad user id, non-UTF-8 and oversized bodies, unknown memories and bad import
  lines get their 4xx with a message naming the problem."""
  got, reply = server.request(method, path, body, raw=raw)
  assert got == status and detail in json.dumps(reply)


def test_server_needs_the_api_key(server):
  """Without the key, or with a wrong one, /v1 answers 401; with it, 200; /healthz needs none."""
  assert server.request("GET", "/v1/users/u/memories", key=None)[0] == 401
  assert server.request("GET", "/v1/users/u/memories", key="wrong")[0] == 401
  assert server.request("GET", "/v1/users/u/memories")[0] == 200
  assert server.request("GET", "/healthz", key=None)[0] == 200


def test_sigkill_mid_load_loses_no_acknowledged_add(tmp_path):
  """32 users add concurrently until the server is killed with SIGKILL; after a restart every acknowledged add is in
  its user's bank, and every bank opens."""
  store = str(tmp_path / "store")
  server = _Server(store, "--related_min_score=2", "--snapshot_every=3")
  acked: dict[str, list[str]] = {f"k{i}": [] for i in range(32)}
  total = threading.Semaphore(0)

  def adder(user):
    for n in range(1000):
      text = f"{user} says {n}"
      try:
        status, _ = server.request("POST", f"/v1/users/{user}/memories", {"messages": text})
      except (OSError, http.client.HTTPException):  # Killed mid-reply: not acknowledged.
        return
      if status != 200:
        return
      acked[user].append(f"user: {text}")
      total.release()

  threads = [threading.Thread(target=adder, args=(u,)) for u in acked]
  for t in threads:
    t.start()
  for _ in range(200):
    assert total.acquire(timeout=60)
  server.stop(signal.SIGKILL)
  for t in threads:
    t.join()
  restarted = _Server(store, "--related_min_score=2")
  try:
    for user, texts in acked.items():
      status, body = restarted.request("GET", f"/v1/users/{user}/memories")
      held = [m["text"] for m in body["memories"]]
      assert status == 200 and held[:len(texts)] == texts and len(held) <= len(texts) + 1
  finally:
    restarted.stop()
