"""The frozen fact extractor of `memory.extraction=llm`: a model of its own, never the policy under training.

`FrozenExtractor` is a plain callable, (session, turn) pairs -> one `agents.extraction.Extraction` each, which is what
`episodes.runner.RunnerConfig.extract` takes; `components.fact_extractor` builds it from config.memory.extractor*.
It asks a backend (chat conversations in, reply strings out, in order) for the replies the cache lacks:
- `openai_client.ChatClient`: any OpenAI-compatible `/chat/completions` endpoint (timeouts, retries with exponential
  backoff on 429 / 5xx / connection errors, a thread pool of `max_concurrency` requests, the API key read from the
  environment at request time and never kept, logged or saved); replies are saved as they arrive;
- `EngineBackend`: a Hugging Face checkpoint of its own path run by our rollout engine, greedy, every prompt of a call
  in one `generate` (batched by the engine); the model loads at the first prompt the cache lacks, so a rerun whose
  every turn is cached loads nothing.

`ExtractionCache` keeps the raw replies in a sqlite3 file keyed by `cache_key` (a hash of the extractor's identity:
backend, model or path and reply budget, and the exact prompt messages), one transaction per batch of replies, so each
turn of a dataset is extracted once, a rerun makes no call, and what was extracted before a failure is kept.

A reply is read with `agents.extraction.facts_from_reply`: an unusable reply (a format error and no fact) is counted as
malformed and gives no fact; the frozen extractor's word is final, no simple fact stands in for it, unless
`fallback_to_turn` (config.memory.extractor_fallback) says otherwise: then the turn's own text is its one fact. That is
for rehearsals, whose random-weight extractor never writes JSON (configs/locomo_rehearsal.py). A reply read despite a
format problem (one fact per line instead of a JSON list, facts cut) keeps its facts and is counted under
format_errors. A backend that fails for good raises ExtractorError, naming the extractor and
saying that the cache keeps what was extracted so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence

from memr1_jax import errors, openai_client
from memr1_jax.agents import extraction as extraction_lib
from memr1_jax.agents.parsers import MAX_FACTS
from memr1_jax.agents.prompts import ChatMessage
from memr1_jax.data.schema import Session, Turn
from memr1_jax.episodes.policy import ChatPolicy, Prompt

logger = logging.getLogger(__name__)

Backend = Callable[[list[list[ChatMessage]]], list[str]]

# Replies written to the cache per transaction while an endpoint streams them (and all that remain at the end).
FLUSH_EVERY = 32
# Keys per sqlite lookup (below every sqlite build's limit on bound parameters).
_LOOKUP_CHUNK = 500


class ExtractorError(errors.Error, RuntimeError):
  """The frozen fact extractor cannot extract: its endpoint failed for good, or its cache file is unreadable."""


def cache_key(identity: dict, messages: Sequence[ChatMessage]) -> str:
  """The cache key of a prompt: a SHA-256 hex digest of the extractor's `identity` and the exact `messages`."""
  text = json.dumps([identity, list(messages)], sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def endpoint_identity(config: openai_client.EndpointConfig) -> dict:
  """The identity of an endpoint extractor in cache keys: its URL, model and reply budget (never the API key)."""
  return {"backend": "http", "url": config.base_url.rstrip("/"), "model": config.model,
          "max_tokens": config.max_tokens}


def checkpoint_identity(path: str, max_tokens: int) -> dict:
  """The identity of a local checkpoint extractor in cache keys: its absolute path and reply budget (a checkpoint
  replaced in place at the same path needs a new cache file)."""
  return {"backend": "local", "path": os.path.abspath(path), "max_tokens": int(max_tokens)}


class ExtractionCache:
  """Extractor replies by `cache_key` in a sqlite3 file (`path` None: in memory only), opened at first use.

  Table `replies(key TEXT PRIMARY KEY, reply TEXT)`; `put_many` writes a batch in one transaction, so a killed process
  loses at most the batch it was writing and never leaves a torn row.
  """

  def __init__(self, path: str | None):
    """Remembers `path`; the file (and its directory) is created at the first lookup."""
    self.path = path
    self._db: sqlite3.Connection | None = None
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    return f"ExtractionCache({self.path!r})"

  def _connect(self) -> sqlite3.Connection:
    if self._db is None:
      try:
        if self.path:
          os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        db = sqlite3.connect(self.path or ":memory:", timeout=60.0, check_same_thread=False)
        db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        db.commit()
      except (sqlite3.Error, OSError) as e:
        raise ExtractorError(f"{self.path}: cannot open the fact extractor's cache ({type(e).__name__}: {e}); move "
                             "it aside or set config.memory.extractor_cache to another file") from None
      self._db = db
    return self._db

  def get_many(self, keys: Sequence[str]) -> dict[str, str]:
    """{key: reply} of those of `keys` the cache holds."""
    keys = list(dict.fromkeys(keys))
    found: dict[str, str] = {}
    with self._lock:
      db = self._connect()
      for start in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = keys[start:start + _LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(db.execute(f"SELECT key, reply FROM replies WHERE key IN ({marks})", chunk).fetchall())
    return found

  def put_many(self, rows: Sequence[tuple[str, str]]) -> None:
    """Stores (key, reply) rows in one transaction."""
    if not rows:
      return
    with self._lock:
      db = self._connect()
      with db:  # One transaction: committed on leaving, rolled back on an error.
        db.executemany("INSERT OR REPLACE INTO replies (key, reply) VALUES (?, ?)", list(rows))

  def __len__(self) -> int:
    with self._lock:
      return self._connect().execute("SELECT COUNT(*) FROM replies").fetchone()[0]

  def close(self) -> None:
    """Closes the file (it is reopened at the next use)."""
    with self._lock:
      if self._db is not None:
        self._db.close()
        self._db = None


class EngineBackend:
  """A backend that is a checkpoint's model decoding greedily (a `ChatPolicy`, e.g. `EnginePolicy`, which applies the
  tokenizer's chat template): every conversation of a call in one `generate`.

  `load` builds that policy; it is called at the first conversation asked, so a run served by the cache alone
  loads no model.
  """

  def __init__(self, load: Callable[[], ChatPolicy], name: str = ""):
    """`load` returns the policy; `name` (the checkpoint path) is what `repr` shows."""
    self._load = load
    self._policy: ChatPolicy | None = None
    self.name = name

  def __repr__(self) -> str:
    return f"EngineBackend({self.name!r})"

  def __call__(self, conversations: list[list[ChatMessage]]) -> list[str]:
    """The greedy reply of each conversation, in order."""
    if not conversations:
      return []
    if self._policy is None:
      logger.info("fact extractor: loading %s", self.name or "its model")
      self._policy = self._load()
    samples = self._policy.generate([Prompt(messages) for messages in conversations], n=1, greedy=True)
    return [group[0].text for group in samples]


@dataclasses.dataclass
class ExtractorCounters:
  """What a FrozenExtractor did so far."""

  calls: int = 0  # Prompts sent to the backend (one per distinct prompt the cache lacked).
  cache_hits: int = 0  # Turns whose reply came from the cache.
  malformed: int = 0  # Replies with a format error and no usable fact: they give no fact.
  format_errors: int = 0  # Replies read despite a format problem: their facts are kept.
  failures: int = 0  # Backend calls that failed for good (after the retries).


class FrozenExtractor:
  """(session, turn) pairs -> one `Extraction` each, by a frozen model behind `backend` with a disk cache (see the
  module doc)."""

  def __init__(self, backend: Backend, identity: dict, cache: ExtractionCache, *, label: str = "fact extractor",
               max_facts: int = MAX_FACTS, with_previous_turn: bool = True, fallback_to_turn: bool = False):
    """Takes the backend, its `identity` (part of every cache key: `endpoint_identity` / `checkpoint_identity`), the
    cache, and `label`, what errors call the extractor (e.g. "config.memory.extractor='http://...'");
    `fallback_to_turn`: a malformed reply gives the turn's text as its one fact (still counted as malformed)."""
    self.backend, self.identity, self.cache, self.label = backend, identity, cache, label
    self.max_facts, self.with_previous_turn = max_facts, with_previous_turn
    self.fallback_to_turn = fallback_to_turn
    self.counters = ExtractorCounters()

  def __repr__(self) -> str:
    return f"FrozenExtractor({self.backend!r}, cache={self.cache.path!r})"

  def __call__(self, turns: Sequence[tuple[Session, Turn]]) -> list[extraction_lib.Extraction]:
    """One Extraction per (session, turn), in order; raises ExtractorError when the backend fails for good."""
    replies = self._replies(turns)
    out = []
    for (session, turn), reply in zip(turns, replies):
      ext = extraction_lib.facts_from_reply(session, turn, reply, max_facts=self.max_facts,
                                            fallback=self.fallback_to_turn)
      if ext.format_error is not None:
        if ext.facts and not ext.fell_back:
          self.counters.format_errors += 1
        else:
          self.counters.malformed += 1
      out.append(ext)
    return out

  def prefetch(self, turns: Sequence[tuple[Session, Turn]]) -> int:
    """Extracts (into the cache) those of `turns` the cache lacks, all in one backend call; returns how many prompts
    it sent. The episode runner calls it with every turn of a batch of conversations before walking them."""
    before = self.counters.calls
    self._replies(turns)
    return self.counters.calls - before

  def _replies(self, turns: Sequence[tuple[Session, Turn]]) -> list[str]:
    """The reply of each turn's prompt: from the cache, else from the backend (each distinct prompt once, stored)."""
    if not turns:
      return []
    chats = [extraction_lib.extraction_prompt(s, t, self.with_previous_turn) for s, t in turns]
    keys = [cache_key(self.identity, chat) for chat in chats]
    known = self.cache.get_many(keys)
    self.counters.cache_hits += sum(key in known for key in keys)
    ask = list({key: chat for key, chat in zip(keys, chats) if key not in known}.items())
    if ask:
      self.counters.calls += len(ask)
      known.update(self._ask([key for key, _ in ask], [chat for _, chat in ask]))
    return [known[key] for key in keys]

  def _ask(self, keys: list[str], chats: list[list[ChatMessage]]) -> dict[str, str]:
    """{key: reply} from the backend, each reply stored in the cache (as it arrives when the backend streams)."""
    got: dict[str, str] = {}
    pending: list[tuple[str, str]] = []
    stream = getattr(self.backend, "stream", None)
    try:
      if stream is None:
        replies = list(self.backend(chats))
        if len(replies) != len(chats):
          raise ExtractorError(f"{self.label}: the backend returned {len(replies)} replies for {len(chats)} prompts")
        pending = list(zip(keys, replies))
        got.update(pending)
      else:
        for i, reply in stream(chats):
          got[keys[i]] = reply
          pending.append((keys[i], reply))
          if len(pending) >= FLUSH_EVERY:
            self.cache.put_many(pending)
            pending = []
    except openai_client.EndpointError as e:
      self.counters.failures += 1
      raise ExtractorError(
          f"{self.label}: {e}; the cache {self.cache.path or '(in memory)'} keeps the {len(got)} replies of this call "
          "and every one extracted before: rerun to go on from them") from None
    finally:  # Whatever stops the call, the replies that came are kept.
      self.cache.put_many(pending)
    return got

  def close(self) -> None:
    """Closes the cache file."""
    self.cache.close()
