"""One client of OpenAI-compatible `/chat/completions` endpoints, shared by the LLM judge (`eval.judge`) and the frozen
fact extractor (`extractor`).

`ChatClient(EndpointConfig(...))` maps a batch of chat conversations to reply strings, one POST per conversation over
urllib, `max_concurrency` requests in flight (a thread pool). A request that fails with HTTP 408 / 409 / 429 / 5xx, a
connection error, a timeout or an unreadable body is retried after backoff_s * 2**i seconds; other HTTP errors (401,
404, ...) fail at once. The API key is read from the environment variable NAMED in the config at request time: it is
never kept on an object, logged, or written anywhere, and is scrubbed from every message. `stream()` yields each reply
as it arrives (so a caller can save it before the next one comes); `check()` sends one tiny request (fail fast before
long work).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from memr1_jax import errors
from memr1_jax.agents.prompts import ChatMessage

_log = logging.getLogger(__name__)

# HTTP statuses worth another attempt: timeouts, conflicts, rate limits, server errors.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class EndpointError(errors.Error, RuntimeError):
  """An endpoint failed after all retries: one line naming its role, URL, model and the reason (never the API key)."""


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
  """Where and how to call an OpenAI-compatible chat-completions endpoint.

  Attributes:
    base_url: e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1"; "/chat/completions" is appended.
    model: the model name sent in the request.
    api_key_env: NAME of the environment variable holding the key ("" for endpoints without one). Only the name is
      kept here, so saving or printing a config never leaks the key.
    timeout_s: per-request timeout.
    max_retries: extra attempts after a failed request (HTTP 429 / 5xx / connection errors).
    backoff_s: wait before retry i is backoff_s * 2**i.
    max_concurrency: requests in flight at once.
    max_tokens: completion budget per reply.
    json_mode: send `response_format={"type": "json_object"}` (not every server supports it).
  """

  base_url: str
  model: str
  api_key_env: str = "OPENAI_API_KEY"
  timeout_s: float = 60.0
  max_retries: int = 3
  backoff_s: float = 1.0
  max_concurrency: int = 8
  max_tokens: int = 64
  json_mode: bool = False

  def __post_init__(self):
    name = type(self).__name__
    scheme = urllib.parse.urlparse(self.base_url).scheme
    if scheme not in ("http", "https"):
      raise ValueError(f"{name}.base_url must be http(s), got {self.base_url!r}")
    if not self.model:
      raise ValueError(f"{name}.model is empty")


def is_endpoint_url(text: str) -> bool:
  """True when `text` is an http(s) URL (an endpoint's base URL), False for anything else (e.g. a directory)."""
  return urllib.parse.urlparse(text).scheme in ("http", "https")


class ChatClient:
  """A backend that posts each conversation to `{base_url}/chat/completions` (see the module doc).

  `role` names the client in its logs and errors ("judge", "extractor"); `error_type` (an EndpointError) is what it
  raises when a request fails for good. Subclasses set both as class attributes.
  """

  role = "endpoint"
  error_type: type[EndpointError] = EndpointError
  # The messages of `check`'s tiny request.
  check_messages: list[ChatMessage] = [{"role": "user", "content": "Reply with OK."}]

  def __init__(self, config: EndpointConfig, role: str | None = None):
    """Checks that the key variable is set (when one is named); does not read or keep its value. `role` overrides
    the class's."""
    if config.api_key_env and not os.environ.get(config.api_key_env):
      raise ValueError(
          f"{type(config).__name__}.api_key_env names {config.api_key_env!r}, but that environment "
          "variable is not set")
    self.config = config
    self.role = role or self.role
    self.url = config.base_url.rstrip("/") + "/chat/completions"

  def __repr__(self) -> str:
    return f"{type(self).__name__}(url={self.url!r}, model={self.config.model!r})"

  def __call__(self, conversations: list[list[ChatMessage]]) -> list[str]:
    """Returns the reply text of each conversation, in order; raises `error_type` on failure."""
    replies = [""] * len(conversations)
    for i, reply in self.stream(conversations):
      replies[i] = reply
    return replies

  def stream(self, conversations: list[list[ChatMessage]]) -> Iterator[tuple[int, str]]:
    """(index, reply text) of each conversation as its reply arrives, `max_concurrency` requests in flight.

    After a request fails for good, requests not yet sent are dropped, the replies of those in flight are still
    yielded, then its `error_type` is raised.
    """
    if not conversations:
      return
    workers = max(1, min(self.config.max_concurrency, len(conversations)))
    error = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      futures = {pool.submit(self._complete_one, messages): i for i, messages in enumerate(conversations)}
      for future in concurrent.futures.as_completed(futures):
        if future.cancelled():
          continue
        try:
          reply = future.result()
        except EndpointError as e:
          if error is None:
            error = e
            for pending in futures:
              pending.cancel()
          continue
        yield futures[future], reply
    if error is not None:
      raise error

  def check(self) -> None:
    """Sends one tiny request (with the usual retries); raises `error_type` naming endpoint, model and reason."""
    self._complete_one(self.check_messages)

  def _complete_one(self, messages: list[ChatMessage]) -> str:
    body = {"model": self.config.model, "messages": messages, "temperature": 0.0,
            "max_tokens": self.config.max_tokens}
    if self.config.json_mode:
      body["response_format"] = {"type": "json_object"}
    data = json.dumps(body).encode("utf-8")
    last_error = ""
    for attempt in range(self.config.max_retries + 1):
      if attempt:
        time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
      request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
      try:
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
          payload = json.loads(response.read().decode("utf-8"))
        return reply_text(payload)
      except urllib.error.HTTPError as e:
        last_error = f"HTTP {e.code}"
        if e.code not in RETRYABLE_STATUS:
          break
      except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        last_error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
      except (ValueError, UnicodeDecodeError) as e:
        last_error = f"unreadable response: {type(e).__name__}"
      _log.warning("%s request to %s failed (%s), attempt %d of %d", self.role, self.url,
                   self._scrub(last_error), attempt + 1, self.config.max_retries + 1)
    raise self.error_type(f"{self.role} {self.config.model!r} at {self.url} does not answer: "
                          f"{self._scrub(last_error)}")

  def _headers(self) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if self.config.api_key_env:
      headers["Authorization"] = "Bearer " + os.environ.get(self.config.api_key_env, "")
    return headers

  def _scrub(self, message: str) -> str:
    key = os.environ.get(self.config.api_key_env, "") if self.config.api_key_env else ""
    return message.replace(key, "***") if key else message


def reply_text(payload: object) -> str:
  """The first choice's message content of a chat-completions response ("" when absent)."""
  try:
    content = payload["choices"][0]["message"]["content"]  # type: ignore[index]
  except (KeyError, IndexError, TypeError):
    return ""
  return content if isinstance(content, str) else ""
