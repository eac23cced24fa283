"""The memory service's Python API: `Memory`, per-user persistent banks kept by a trained manager and answer agent.

  memory = Memory.load(manager="runs/demo/manager_grpo/hf", answer="runs/demo/answer_grpo/hf", store="mem_store",
                       extractor="task", config=demo_config)
  memory.add("alice", [{"role": "Anna", "content": "I live in Porto."}])   # -> the operations applied
  memory.answer("alice", "Where does Anna live?")                          # -> the answer and the memory ids used

An add extracts the facts of each message (config.memory.extraction: simple, task or llm), shows the manager each
message's facts beside the related memories of that user's bank (the training prompt, `runner.manager_prompt_from_hits`)
and applies its ADD / UPDATE / DELETE / NOOP reply; a reply that does not parse is a NOOP, counted in `stats()`.
`add_many` / `answer_many` serve many users with one engine call per message index (the batching queue of
`memr1_jax.service.batching` feeds them). Every change is logged and fsynced (`store.BankStore`) before it returns.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import logging
import os
import threading
from collections.abc import Sequence

from memr1_jax import errors
from memr1_jax.agents import parsers
from memr1_jax.data.schema import QA, Session, Turn
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import ChatPolicy
from memr1_jax.memory.bank import apply_to_banks, search_banks
from memr1_jax.memory.operations import OpKind
from memr1_jax.service.store import BankStore, check_user_id, entry_dict, op_dict, replay

logger = logging.getLogger(__name__)

# Bounds of one request (the HTTP server checks the same ones before the body reaches the API).
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 8000
MAX_NAME_CHARS = 64
MAX_QUERY_CHARS = 2000
MAX_K = 100
MAX_IMPORT_LINES = 100_000


class InvalidRequest(errors.Error, ValueError):
  """A request the service refuses (the message says which field and why); nothing was changed."""


class MemoryNotFound(errors.Error, LookupError):
  """A memory id that the user's bank does not hold."""


def today() -> str:
  """Today's date (UTC) as the memories' timestamps read: "8 May, 2023"."""
  d = datetime.datetime.now(datetime.timezone.utc)
  return f"{d.day} {d:%B}, {d.year}"


def _text(value: object, field: str, max_chars: int, allow_empty: bool = False) -> str:
  """`value` checked to be a str of valid Unicode (no lone surrogates), non-blank unless `allow_empty`, of at most
  `max_chars` characters; else InvalidRequest naming `field`."""
  if not isinstance(value, str):
    raise InvalidRequest(f"{field}: expected a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise InvalidRequest(f"{field}: empty")
  if len(value) > max_chars:
    raise InvalidRequest(f"{field}: {len(value)} characters, more than {max_chars}")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    raise InvalidRequest(f"{field}: not valid Unicode (a lone surrogate)") from None
  return value


@dataclasses.dataclass(frozen=True)
class AddRequest:
  """A checked add: the user, the (speaker, text) of each message in order, and the session date of its memories."""

  user_id: str
  messages: tuple[tuple[str, str], ...]
  timestamp: str

  @classmethod
  def make(cls, user_id: str, messages: object, timestamp: str | None = None) -> AddRequest:
    """Checks an add. `messages`: a string (one message of speaker "user"), or a list of strings or of
    {"role", "content", optional "name"} dicts (the speaker is the name, else the role). InvalidRequest /
    store.InvalidUserId when unusable."""
    check_user_id(user_id)
    if isinstance(messages, str):
      messages = [messages]
    if not isinstance(messages, (list, tuple)) or not 1 <= len(messages) <= MAX_MESSAGES:
      raise InvalidRequest(f"messages: expected a string or a list of 1-{MAX_MESSAGES} messages")
    out = []
    for i, m in enumerate(messages):
      if isinstance(m, str):
        m = {"role": "user", "content": m}
      if not isinstance(m, dict) or set(m) - {"role", "content", "name"}:
        raise InvalidRequest(f"messages[{i}]: expected a string or an object with 'role', 'content' and optionally "
                             "'name'")
      speaker = m.get("name") or m.get("role") or "user"
      out.append((_text(speaker, f"messages[{i}].name/role", MAX_NAME_CHARS),
                  _text(m.get("content"), f"messages[{i}].content", MAX_MESSAGE_CHARS)))
    stamp = today() if timestamp is None else _text(timestamp, "timestamp", 100, allow_empty=True)
    return cls(user_id, tuple(out), stamp)


@dataclasses.dataclass(frozen=True)
class AnswerRequest:
  """A checked question: the user, the question and its date (None: the prompt shows none, as in training on LoCoMo
  and the demo's task)."""

  user_id: str
  question: str
  timestamp: str | None = None

  @classmethod
  def make(cls, user_id: str, question: object, timestamp: str | None = None) -> AnswerRequest:
    """Checks a question (InvalidRequest / store.InvalidUserId when unusable)."""
    check_user_id(user_id)
    stamp = None if timestamp is None else _text(timestamp, "timestamp", 100)
    return cls(user_id, _text(question, "question", MAX_QUERY_CHARS), stamp)


def _rounds(user_ids: Sequence[str]) -> list[list[int]]:
  """Request indexes split into rounds holding each user at most once, a user's requests in order (a user's second
  add must see the bank the first one left)."""
  rounds: list[list[int]] = []
  seen: collections.Counter = collections.Counter()
  for i, user_id in enumerate(user_ids):
    r = seen[user_id]
    seen[user_id] += 1
    if r == len(rounds):
      rounds.append([])
    rounds[r].append(i)
  return rounds


class Memory:
  """Per-user memory banks kept by a manager policy and read by an answer policy (any `ChatPolicy`: the rollout
  engine over trained checkpoints, or scripted ones). Thread-safe: calls run one at a time.

  Args:
    manager / answerer: the policies (greedy).
    store: the persistent banks.
    cfg: the episode settings the agents were trained with (extractor, related_k, answer_k_per_speaker, prompts).
  """

  def __init__(self, manager: ChatPolicy, answerer: ChatPolicy, store: BankStore, cfg: runner.RunnerConfig):
    self.manager, self.answerer, self.store, self.cfg = manager, answerer, store, cfg
    self.counters: collections.Counter = collections.Counter()
    self._lock = threading.RLock()

  @classmethod
  def load(cls, *, manager: str, answer: str, store: str, extractor: str = "simple", config=None,
           snapshot_every: int = 32) -> Memory:
    """The service over the Hugging Face checkpoint directories `manager` and `answer` (one engine when equal).

    Args:
      manager / answer: checkpoint directories (e.g. a demo run's <workdir>/manager_grpo/hf and answer_grpo/hf).
      store: the directory of the users' banks (created when missing).
      extractor: "simple" (each message is a fact), "task" (config.task's own extractor), or the frozen LLM
        extractor: a checkpoint directory or the base URL of an OpenAI-compatible endpoint (config.memory.extractor_*
        for the rest; replies cached in <store>/extractor_cache.sqlite unless config.memory.extractor_cache is set).
      config: the config the agents were trained with (its memory, rollout and model sections are read; e.g.
        configs/demo.py's get_config() for the demo's checkpoints); None: `defaults.default_config()`.
      snapshot_every: log records between snapshots of a user's bank.
    """
    from memr1_jax import components, defaults  # pylint: disable=g-import-not-at-top  # JAX, models: only here.
    config = (config or defaults.default_config()).copy_and_resolve_references()
    m = config.memory
    if extractor in ("simple", "task"):
      m.extraction = extractor
    else:
      m.extraction, m.extractor = "llm", extractor
      m.extractor_cache = m.extractor_cache or os.path.join(store, "extractor_cache.sqlite")
    components.configure_jax(config)
    mesh = components.setup_mesh(config)
    policies = {}
    for path in dict.fromkeys(os.path.realpath(p) for p in (manager, answer)):
      model, tokenizer = components.load_policy(config, mesh, path)
      policies[path] = components.make_engine_policy(model, tokenizer, config, mesh, seed=config.seed)
    bank_store = BankStore(store, components.bank_factory(config), encoder=m.encoder or "default",
                           snapshot_every=snapshot_every)
    return cls(policies[os.path.realpath(manager)], policies[os.path.realpath(answer)], bank_store,
               components.runner_config(config))

  # Writing.

  def add(self, user_id: str, messages: object, timestamp: str | None = None) -> dict:
    """Extracts the facts of `messages` (see `AddRequest.make`) and applies the manager's operations for each message
    to `user_id`'s bank, logged before returning.

    Returns:
      {"operations": [{"kind", "memory_id", "text", "old_text", "speaker"}, ...] (those applied, in order; old_text
      for UPDATE / DELETE), "format_errors": manager replies that did not parse (read as NOOP), "rejected":
      operations the bank refused (e.g. an unknown id), "manager_calls"}.
    """
    return self.add_many([AddRequest.make(user_id, messages, timestamp)])[0]

  def add_many(self, requests: Sequence[AddRequest]) -> list[dict]:
    """`add` of many checked requests: users in lock step, one manager call per message index for all of them (a
    user's requests in order, in rounds). Returns one result per request, as `add`."""
    with self._lock:
      out: list = [None] * len(requests)
      for indexes in _rounds([r.user_id for r in requests]):
        for i, result in zip(indexes, self._add_round([requests[i] for i in indexes])):
          out[i] = result
      return out

  def delete(self, user_id: str, memory_id: int | None = None) -> dict:
    """Deletes memory `memory_id` of `user_id` (None: every memory of the user), logged before returning.

    Returns {"operations": the DELETEs, as `add`'s}. Raises MemoryNotFound for an id the bank does not hold.
    """
    with self._lock:
      user = self.store.user(user_id)
      if memory_id is not None and (not isinstance(memory_id, int) or memory_id not in user.bank):
        raise MemoryNotFound(f"user {user_id!r} has no memory {memory_id!r}")
      entries = user.bank.entries() if memory_id is None else [user.bank.get(memory_id)]
      ops = [op_dict("DELETE", e.memory_id, None, e.speaker, e.text) for e in entries]
      if ops:
        self._commit(user, {"kind": "delete", "steps": [{"timestamp": "", "turn_ids": [], "ops": ops}]})
      return {"operations": ops}

  def import_(self, user_id: str, jsonl: str) -> dict:
    """Adds the memories of `jsonl` (one {"text", optional "speaker", "timestamp", "source_turn_ids"} per line, as
    `export` writes; ids are new) to `user_id`'s bank, logged before returning. Returns {"memory_ids": the new ids}.
    InvalidRequest (naming the line) for a bad line; then nothing is added."""
    _text(jsonl, "body", MAX_IMPORT_LINES * MAX_MESSAGE_CHARS, allow_empty=True)
    lines = [line for line in jsonl.splitlines() if line.strip()]
    if len(lines) > MAX_IMPORT_LINES:
      raise InvalidRequest(f"import: {len(lines)} lines, more than {MAX_IMPORT_LINES}")
    entries = []
    for n, line in enumerate(lines, 1):
      try:
        raw = json.loads(line)
      except json.JSONDecodeError as e:
        raise InvalidRequest(f"import line {n}: not JSON ({e})") from None
      if not isinstance(raw, dict):
        raise InvalidRequest(f"import line {n}: expected a JSON object")
      turns = raw.get("source_turn_ids", [])
      if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise InvalidRequest(f"import line {n}: 'source_turn_ids' must be a list of strings")
      entries.append({"text": _text(raw.get("text"), f"import line {n}: text", MAX_MESSAGE_CHARS),
                      "speaker": _text(raw.get("speaker", ""), f"import line {n}: speaker", MAX_NAME_CHARS, True),
                      "timestamp": _text(raw.get("timestamp", ""), f"import line {n}: timestamp", 100, True),
                      "source_turn_ids": turns})
    with self._lock:
      user = self.store.user(user_id)
      first = user.bank.next_id
      entries = [{"memory_id": first + i, **e} for i, e in enumerate(entries)]
      if entries:
        self._commit(user, {"kind": "import", "entries": entries})
      return {"memory_ids": [e["memory_id"] for e in entries]}

  # Reading.

  def search(self, user_id: str, query: str, k: int = 10) -> list[dict]:
    """The `k` memories of `user_id` nearest to `query` (all speakers), best first: entries with their "score"."""
    query = _text(query, "query", MAX_QUERY_CHARS)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
      raise InvalidRequest(f"k: expected an int in 1..{MAX_K}, got {k!r}")
    with self._lock:
      (hits,) = self.store.user(user_id).bank.search(query, k)
      return [{**entry_dict(e), "score": score} for e, score in hits]

  def answer(self, user_id: str, question: str, timestamp: str | None = None) -> dict:
    """The answer agent's reply to `question` over `user_id`'s memories.

    Returns:
      {"answer" ("" when the reply did not parse), "memory_ids": the ids its reply lists as used, "retrieved_ids":
      the ids its prompt showed, "format_error": None or what was wrong with the reply}.
    """
    return self.answer_many([AnswerRequest.make(user_id, question, timestamp)])[0]

  def answer_many(self, requests: Sequence[AnswerRequest]) -> list[dict]:
    """`answer` of many checked requests with one retrieval call per speaker slot and one answer-agent call."""
    with self._lock:
      banks = [self.store.user(r.user_id).bank for r in requests]
      speakers = [bank.speakers() for bank in banks]
      k = self.cfg.answer_k_per_speaker
      shown: list[list] = [[] for _ in requests]
      for slot in range(max((len(s) for s in speakers), default=0)):
        hits = search_banks(banks, [[r.question] if slot < len(s) else [] for r, s in zip(requests, speakers)], k,
                            speaker=[s[slot] if slot < len(s) else None for s in speakers])
        for i, per_query in enumerate(hits):
          shown[i] += [e for e, _ in (per_query[0] if per_query else [])]
      prompts = [runner.answer_prompt(QA(r.question, "", 0, question_date=r.timestamp), memories, s, k,
                                      self.cfg.prompt_set)
                 for r, memories, s in zip(requests, shown, speakers)]
      samples = self.answerer.generate(prompts, n=1, greedy=True) if prompts else []
      out = []
      for memories, sample in zip(shown, samples):
        ids = [e.memory_id for e in memories]
        parsed = parsers.parse_answer_output(sample[0].text, ids)
        self.counters["answer_format_errors"] += parsed.format_error is not None
        out.append({"answer": parsed.answer, "memory_ids": parsed.selected_ids, "retrieved_ids": ids,
                    "format_error": parsed.format_error})
      self.counters["answers"] += len(out)
      return out

  def get_all(self, user_id: str) -> list[dict]:
    """Every memory of `user_id`, in id order."""
    with self._lock:
      return [entry_dict(e) for e in self.store.user(user_id).bank.entries()]

  def history(self, user_id: str) -> list[dict]:
    """Every operation ever applied to `user_id`'s bank, oldest first: {"seq", "time", "source" (add / delete /
    import), "kind", "memory_id", "text", "old_text", "speaker"} (an import's memories as ADDs)."""
    with self._lock:
      out = []
      for record in self.store.records(user_id):
        head = {"seq": record["seq"], "time": record["time"], "source": record["kind"]}
        if record["kind"] == "import":
          out += [{**head, **op_dict("ADD", e["memory_id"], e["text"], e["speaker"], None)} for e in record["entries"]]
        else:
          out += [{**head, **op} for step in record["steps"] for op in step["ops"]]
      return out

  def export(self, user_id: str) -> str:
    """`user_id`'s memories as JSONL, one `get_all` entry a line (what `import_` reads)."""
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.get_all(user_id))

  def stats(self) -> dict:
    """Counters since start: adds, answers, manager_calls, manager_format_errors (replies read as NOOP),
    answer_format_errors, rejected_ops."""
    with self._lock:
      return dict(self.counters)

  def close(self) -> None:
    """Snapshots every bank changed since its last snapshot (the log already holds every change)."""
    with self._lock:
      self.store.close()

  # Internals.

  def _commit(self, user, record: dict) -> None:
    """Applies a delete / import `record` to `user`'s bank through the replay path (so that a replay does exactly
    this) and logs it."""
    try:
      replay(user.bank, record)
      self.store.commit(user, record)
    except BaseException:
      self.store.evict(user.user_id)
      raise

  def _add_round(self, requests: Sequence[AddRequest]) -> list[dict]:
    """`add_many` of requests of distinct users."""
    cfg = self.cfg
    users = [self.store.user(r.user_id) for r in requests]
    sessions = [Session(1, r.timestamp, tuple(Turn(speaker, text, f"{u.seq + 1}:{j}")
                                              for j, (speaker, text) in enumerate(r.messages)))
                for r, u in zip(requests, users)]
    items = [(s, t) for s in sessions for t in s.turns]
    prefetch = getattr(cfg.extract, "prefetch", None)
    if prefetch is not None:
      prefetch(items)
    extracted = iter(cfg.extract(items))
    facts = [[next(extracted).facts for _ in s.turns] for s in sessions]
    steps: list[list[dict]] = [[] for _ in requests]
    results = [{"operations": [], "format_errors": 0, "rejected": 0, "manager_calls": 0} for _ in requests]
    try:
      for step in range(max((len(s.turns) for s in sessions), default=0)):
        live = [i for i, s in enumerate(sessions) if step < len(s.turns) and facts[i][step]]
        if live:
          self._manager_step(live, [users[i].bank for i in live], [sessions[i] for i in live],
                             [facts[i][step] for i in live], step, steps, results)
      for user, user_steps in zip(users, steps):
        if user_steps:
          self.store.commit(user, {"kind": "add", "steps": user_steps})
    except BaseException:
      for user in users:  # Their banks may hold changes the log lacks: reopen them from disk.
        self.store.evict(user.user_id)
      raise
    for result in results:
      self.counters["adds"] += 1
      for key in ("manager_calls", "rejected"):
        self.counters["rejected_ops" if key == "rejected" else key] += result[key]
      self.counters["manager_format_errors"] += result["format_errors"]
    return results

  def _manager_step(self, live, banks, sessions, facts, step, steps, results) -> None:
    """One manager call for message `step` of the `live` requests (their banks, sessions and facts): prompts, greedy
    replies, parsed operations applied to each bank (one embedding call); appends to `steps` / `results`."""
    cfg = self.cfg
    hits = search_banks(banks, [[f.text for f in fs] for fs in facts], cfg.related_k)
    prompts, shown = [], []
    for h, fs, session in zip(hits, facts, sessions):
      prompt, ids = runner.manager_prompt_from_hits(h, fs, session, session.turns[step], cfg)
      prompts.append(prompt)
      shown.append(ids)
    samples = self.manager.generate(prompts, n=1, greedy=True)
    parsed = [runner.parse_manager_reply(s[0].text, ids, session.turns[step].speaker, cfg)
              for s, ids, session in zip(samples, shown, sessions)]
    # The texts of the memories the replies name, before they change (the old text of an UPDATE / DELETE).
    texts = [{op.memory_id: bank.get(op.memory_id).text for op in p.ops if op.memory_id in bank}
             for bank, p in zip(banks, parsed)]
    applied = apply_to_banks(banks, [p.ops for p in parsed], timestamps=[s.date_time for s in sessions],
                             source_turn_ids=[(s.turns[step].dia_id,) for s in sessions])
    for i, p, rs, current, session in zip(live, parsed, applied, texts, sessions):
      ops = []
      for r in rs:
        if not r.applied or r.op.kind == OpKind.NOOP:
          continue
        kind = OpKind(r.op.kind).value
        text = None if kind == "DELETE" else r.op.text[:banks[0].max_text_chars]
        ops.append(op_dict(kind, r.memory_id, text, r.op.speaker or "", current.get(r.memory_id)))
        current[r.memory_id] = text
      results[i]["operations"] += ops
      results[i]["format_errors"] += p.format_error is not None
      results[i]["rejected"] += sum(not r.applied for r in rs)
      results[i]["manager_calls"] += 1
      if ops:
        turn = session.turns[step]
        steps[i].append({"timestamp": session.date_time, "turn_ids": [turn.dia_id], "ops": ops})
