"""LLM-as-a-judge (the "J" metric): is a generated answer CORRECT or WRONG against the gold one?

One prompt, one never-raising parser, and one `Judge` over a pluggable backend. A backend maps a
batch of chat conversations to completions:

- `generate_fn_backend(generate_fn, render)`: a local model through the rollout engine;
  `generate_fn(list[str]) -> list[str]`, with `render` turning chat messages into a prompt string
  (the tokenizer's chat template, or `agents.prompts.render_plain_text`).
- `HttpChatBackend(HttpJudgeConfig(...))`: an OpenAI-compatible `/chat/completions` endpoint through
  `memr1_jax.openai_client` (shared with the frozen fact extractor). The API key is read from the
  environment variable NAMED in the config at request time; it is never stored on an object,
  logged, or written anywhere. `check()` sends one tiny request (fail fast before long work);
  `stream()` yields each reply as it arrives.

`VerdictCache` keeps verdicts on disk (JSONL, one flushed line per verdict, keyed by `verdict_key`
of judge name, question, gold and prediction); `Judge.cached_verdicts` asks only for the missing
ones and stores each as it arrives, so an interrupted judging loses nothing already answered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence

from memr1_jax import errors, openai_client
from memr1_jax.agents.prompts import ChatMessage, render_plain_text
from memr1_jax.eval import report as report_lib

Backend = Callable[[list[list[ChatMessage]]], list[str]]

# The grading protocol of the paper's LLM-as-a-Judge (Appendix C.3), in our own words: the judge sees the question,
# the gold answer and the generated answer, is generous about date formats and about answers on the gold's topic,
# and replies in JSON with a short reason and the label CORRECT or WRONG.
JUDGE_SYSTEM_PROMPT = (
    "You grade answers to questions about a long conversation between two people. You are "
    "fair and generous: meaning matters, wording does not.")

JUDGE_USER_TEMPLATE = """\
Label the generated answer below CORRECT or WRONG, taking the gold answer as the truth.

How to grade:
- The gold answer is usually short; the generated answer may be longer or worded differently. It is
  CORRECT when it is about the same thing as the gold answer and does not contradict it: a
  paraphrase, a synonym, a more or less detailed version of the same fact all count.
- For a question about time, it is CORRECT when it names the same date or period in any format
  ("7 May 2023", "May 7th", "2023-05-07"), or a relative expression ("the week before") that comes to
  the same time.
- It is WRONG when it is about something else, names another time, contradicts the gold answer, or
  gives no answer.

Question: {question}
Gold answer: {gold}
Generated answer: {pred}

First think in one short sentence, then reply with one JSON object and nothing else:
{{"reason": "<one short sentence>", "label": "CORRECT"}} or {{"reason": "<one short sentence>", "label": "WRONG"}}."""

# Work on at most this many characters of a judge's reply.
_MAX_REPLY_CHARS = 20_000
_JSON_LABEL_RE = re.compile(r'"label"\s*:\s*"\s*([A-Za-z]{1,16})\s*"', re.IGNORECASE)
_BARE_LABEL_RE = re.compile(r"\b(CORRECT|WRONG)\b")
_JSON_OBJECT_RE = re.compile(r"\{[^{}]*\}")
# Kept of a judge's reason, in characters.
_MAX_REASON_CHARS = 500


@dataclasses.dataclass(frozen=True)
class JudgeVerdict:
  """A parsed judge reply: `correct`; `format_error` (None when the format was followed); `unparsed`: no label could
  be read at all (then `correct` is False); `reason`: the judge's short reason ("" when it gave none)."""

  correct: bool
  format_error: str | None = None
  unparsed: bool = False
  reason: str = ""


def judge_messages(question: str, gold: str, pred: str) -> list[ChatMessage]:
  """Chat messages asking the judge to grade `pred` against `gold` for `question`."""
  user = JUDGE_USER_TEMPLATE.format(question=question, gold=gold, pred=pred)
  return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _reason(text: str) -> str:
  """The "reason" of the last JSON object in `text` that has one ("" when none)."""
  for match in reversed(_JSON_OBJECT_RE.findall(text)):
    try:
      obj = json.loads(match)
    except json.JSONDecodeError:
      continue
    if isinstance(obj, dict) and isinstance(obj.get("reason"), str):
      return obj["reason"].strip()[:_MAX_REASON_CHARS]
  return ""


def parse_judge_output(text: object) -> JudgeVerdict:
  """Reads a judge reply; never raises.

  `{"reason": "...", "label": "CORRECT"|"WRONG"}` (label case-insensitive) is the format. Without a JSON label, the
  last bare upper-case CORRECT / WRONG is used and a format error recorded; with neither, WRONG, an error and
  `unparsed`.
  """
  if not isinstance(text, str):
    return JudgeVerdict(False, f"reply is {type(text).__name__}, not str", unparsed=True)
  text = text[:_MAX_REPLY_CHARS]
  reason = _reason(text)
  labels = [m.group(1).upper() for m in _JSON_LABEL_RE.finditer(text)]
  labels = [label for label in labels if label in ("CORRECT", "WRONG")]
  if labels:
    error = None if len(set(labels)) == 1 else "several different JSON labels; used the last"
    return JudgeVerdict(labels[-1] == "CORRECT", error, reason=reason)
  bare = _BARE_LABEL_RE.findall(text)
  if bare:
    return JudgeVerdict(bare[-1] == "CORRECT", "no JSON label; used the last bare label", reason=reason)
  return JudgeVerdict(False, "no label found" if text.strip() else "empty reply", unparsed=True)


def generate_fn_backend(
    generate_fn: Callable[[list[str]], list[str]],
    render: Callable[[list[ChatMessage]], str] = render_plain_text,
) -> Backend:
  """A backend that renders each conversation with `render` and calls `generate_fn` once."""

  def complete(conversations: list[list[ChatMessage]]) -> list[str]:
    return list(generate_fn([render(messages) for messages in conversations]))

  return complete


class JudgeError(errors.Error, RuntimeError):
  """The judge cannot grade: one line naming the endpoint, the model and the reason (never the API key)."""


class JudgeHTTPError(JudgeError, openai_client.EndpointError):
  """The judge endpoint failed after all retries (the message never contains the API key)."""


class HttpJudgeConfig(openai_client.EndpointConfig):
  """Where and how to call the judge's OpenAI-compatible endpoint: `openai_client.EndpointConfig`'s fields
  (base_url, model, api_key_env, timeout_s, max_retries, backoff_s, max_concurrency, max_tokens, json_mode)."""


class HttpChatBackend(openai_client.ChatClient):
  """A judge backend that posts each conversation to `{base_url}/chat/completions` (`openai_client.ChatClient`);
  it raises JudgeHTTPError when a request fails for good."""

  role = "judge"
  error_type = JudgeHTTPError
  check_messages = [{"role": "user", "content": 'Reply with {"reason": "check", "label": "CORRECT"}.'}]


# Part of every verdict key: a verdict given under other grading instructions is not reused.
PROMPT_ID = hashlib.sha256((JUDGE_SYSTEM_PROMPT + JUDGE_USER_TEMPLATE).encode("utf-8")).hexdigest()[:12]


def verdict_key(judge_name: str, question: str, gold: str, pred: str) -> str:
  """The verdict cache's key of a triple graded by the judge named `judge_name` under this module's prompt: a SHA-256
  hex digest."""
  text = json.dumps([judge_name, PROMPT_ID, question, gold, pred], ensure_ascii=False)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


class VerdictCache:
  """Verdicts by `verdict_key`, read from and appended to a JSONL file (None: in memory only).

  Each line is {"key", "correct", "format_error", "unparsed", "reason"}, written and flushed as soon as the verdict
  is known; a torn last line (a killed process) is skipped on reading.
  """

  def __init__(self, path: str | None = None):
    """Loads the verdicts already in `path` (a missing file is an empty cache)."""
    self.path = path
    self._verdicts = {}
    for row in report_lib.read_jsonl(path) if path else ():
      if isinstance(row.get("key"), str) and isinstance(row.get("correct"), bool):
        self._verdicts[row["key"]] = JudgeVerdict(row["correct"], row.get("format_error"),
                                                  bool(row.get("unparsed", False)), str(row.get("reason", "")))

  def __len__(self) -> int:
    return len(self._verdicts)

  def __contains__(self, key: str) -> bool:
    return key in self._verdicts

  def get(self, key: str) -> JudgeVerdict | None:
    """The verdict stored under `key`, or None."""
    return self._verdicts.get(key)

  def put(self, key: str, verdict: JudgeVerdict) -> None:
    """Stores `verdict` under `key`, on disk at once when the cache has a file."""
    self._verdicts[key] = verdict
    if self.path:
      report_lib.append_jsonl(self.path, [{"key": key, **dataclasses.asdict(verdict)}])


class Judge:
  """Grades (question, gold, prediction) triples with an LLM behind `backend`."""

  def __init__(self, backend: Backend, name: str = ""):
    """`backend` maps a batch of chat conversations to reply strings (see module doc); `name` identifies the judge
    in a `VerdictCache` (the model name: a verdict is reused only from the same judge)."""
    self.backend = backend
    self.name = name

  def __repr__(self) -> str:
    return f"Judge(backend={self.backend!r})"

  def stream(self, questions: Sequence[str], golds: Sequence[str], preds: Sequence[str],
             batch_size: int = 0) -> Iterator[tuple[int, JudgeVerdict]]:
    """(index, verdict) of each triple as the backend replies: one by one from a backend with a `stream` method
    (HTTP), else after each batch of `batch_size` triples (0: one batch). A reply list of the wrong length is an
    error per item of its batch; a backend error is raised after the verdicts already obtained were yielded."""
    if not len(questions) == len(golds) == len(preds):
      raise ValueError(f"Judge: got {len(questions)} questions, {len(golds)} golds and "
                       f"{len(preds)} preds; they must be equal")
    conversations = [judge_messages(q, g, p) for q, g, p in zip(questions, golds, preds)]
    if hasattr(self.backend, "stream"):
      for i, reply in self.backend.stream(conversations):
        yield i, parse_judge_output(reply)
      return
    size = batch_size or max(1, len(conversations))
    for start in range(0, len(conversations), size):
      batch = conversations[start:start + size]
      replies = self.backend(batch)
      if len(replies) != len(batch):
        error = JudgeVerdict(False, f"backend returned {len(replies)} replies for {len(batch)} prompts", unparsed=True)
        yield from ((start + j, error) for j in range(len(batch)))
      else:
        yield from ((start + j, parse_judge_output(reply)) for j, reply in enumerate(replies))

  def verdicts(self, questions: Sequence[str], golds: Sequence[str],
               preds: Sequence[str]) -> list[JudgeVerdict]:
    """One `JudgeVerdict` per triple; a reply list of the wrong length is an error per item."""
    out: list = [None] * len(questions)
    for i, verdict in self.stream(questions, golds, preds):
      out[i] = verdict
    return out

  def cached_verdicts(self, questions: Sequence[str], golds: Sequence[str], preds: Sequence[str],
                      cache: VerdictCache, *, batch_size: int = 0,
                      agree: Callable[[list[bool]], list[bool]] = list) -> list[JudgeVerdict | None]:
    """One verdict per triple: from `cache`, else asked of the backend (each triple once) and stored in `cache` as
    it arrives, so an error leaves every verdict obtained so far in the cache.

    `agree` maps the mask of triples to ask to the one used (multi-host: process 0's, as a local judge's generation
    is collective); a triple asked on another process's word and absent here is None.
    """
    keys = [verdict_key(self.name, q, g, p) for q, g, p in zip(questions, golds, preds)]
    first = {key: i for i, key in reversed(list(enumerate(keys)))}  # One request per distinct triple.
    ask = [i for i, flag in enumerate(agree([first[k] == i and k not in cache for i, k in enumerate(keys)])) if flag]
    for j, verdict in self.stream([questions[i] for i in ask], [golds[i] for i in ask], [preds[i] for i in ask],
                                  batch_size):
      cache.put(keys[ask[j]], verdict)
    return [cache.get(key) for key in keys]

  def judge(self, questions: Sequence[str], golds: Sequence[str],
            preds: Sequence[str]) -> list[bool]:
    """True where the judge labelled the prediction CORRECT (unparseable replies count WRONG)."""
    return [v.correct for v in self.verdicts(questions, golds, preds)]
