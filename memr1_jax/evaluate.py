r"""mode=eval: build memory banks with a manager, answer a split's questions, write the per-category report.

  python -m memr1_jax.main --config=configs/grpo_qwen7b.py --config.mode=eval --config.workdir=$RUNS/grpo_qwen7b \
      --config.eval.manager_path=$RUNS/manager_grpo_qwen7b --config.eval.answer_path=$RUNS/grpo_qwen7b@best

Who plays which part (every model decodes greedily, the paper's evaluation setting). The manager, the answer agent,
the fact extractor and a local judge are each a model spec (`components.parse_model_spec`): "base" (config.model's
untrained weights), a Hugging Face checkpoint directory, or a training workdir (its latest checkpoint, or
"<workdir>@best" by validation EM; the model comes from the workdir's config.json, LoRA merged):
- the policy: config.model with the trained parameters of a checkpoint in <workdir>/checkpoints
  (config.eval.checkpoint: latest | best | none), the part played by an empty spec;
- the manager (config.eval.manager_path): a spec, "add_all" (the heuristic that ADDs every turn's facts; no model),
  or empty: the policy;
- the fact extractor (config.memory.extraction): with "llm", the frozen model of config.memory.extractor (a spec or an
  OpenAI-compatible endpoint, `memr1_jax.extractor`), never the manager, its replies cached in
  config.memory.extractor_cache (a rerun asks it nothing);
- the answer agent (config.eval.answer_path): a spec, or empty: the policy;
- the judge (config.eval.judge): "" (off), the base URL of an OpenAI-compatible endpoint (config.eval.judge_model;
  the API key is read from the environment variable NAMED by config.eval.judge_api_key_env; only process 0 calls
  it, judge_concurrency requests at once, judge_retries retries after judge_backoff_s * 2**i seconds), or a local
  spec, which may not be the weights of the manager or the answer agent under evaluation (SelfJudgingError). The
  judge sees the question, the gold and the generated answer and replies with a short reason and CORRECT / WRONG in
  JSON (`eval.judge`, the protocol of the paper's Appendix C.3). An endpoint gets one tiny request before any model
  loads: a judge that does not answer stops the eval at once (JudgeError: endpoint, model, reason).

The paper's rows in this harness: Memory-R1 (the manager run's workdir as manager, the answer run's as answer
agent), BASE (manager_path=answer_path=base), Mem0-like (manager_path=base over the LLM extractor's facts),
Memory-SFT (the workdirs of mode=sft on mode=distill's trajectories). LoCoMo is reported per category; LongMemEval per
question type under the paper's Table 4 names (SSU, SSP, OD, MS, KU, TR), MSC as one group. eval.method names the row
(`memr1_jax.table` renders Table 1 from the report.json files).

Each report has its own directory, <workdir>/eval/<split>/<checkpoint>-step<N> ("base" when the policy's weights
come from no checkpoint of the workdir; when the policy plays no part, eval.method or "pair-<hash>"), so the reports
of latest, best and none sit side by side:
- report.txt and report.json: per category (or question type) count, EM, F1, BLEU-1, J and LoCoMo F1, with the
  dataset, the method, the provenance (the spec, checkpoint path and step of the manager and the answer agent, the
  extractor), the config with the API key redacted, the judge model and its unparseable verdicts (work), timestamps,
  the operation mix of bank building and timings;
- predictions.jsonl: per question its question, gold, prediction, category, scores, judge label and the memories
  the answer agent was shown; appended and flushed as each batch of questions is answered;
- verdicts.jsonl: the judge's verdicts, one flushed line each, keyed by a hash of (judge model, question, gold,
  prediction);
- state.json: the settings the predictions depend on (and their fingerprint), and the bank-building stats.
An interrupted eval (a killed process, a judge that went down half way) resumes when rerun: questions already in
predictions.jsonl under the same settings are not answered again (with none left, the banks are not rebuilt either)
and cached verdicts are not asked again. Files of a run of other settings are moved to superseded-<time>-*/ first.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from memr1_jax import components, console, defaults, fileio, openai_client, tasks
from memr1_jax.data import longmemeval, msc
from memr1_jax.data.schema import QA, Conversation
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import ChatPolicy, EnginePolicy
from memr1_jax.errors import ConfigError
from memr1_jax.eval import judge as judge_lib
from memr1_jax.eval import report as report_lib
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.operations import OpKind


# config.eval.manager_path value selecting the heuristic manager that ADDs every fact of every turn (no model).
ADD_ALL = "add_all"
# The files of a report directory that an interrupted eval resumes from.
STATE_FILE, PREDICTIONS_FILE, VERDICTS_FILE = "state.json", "predictions.jsonl", "verdicts.jsonl"
# Fields of config.memory that change how the fact extractor is reached, not what it replies: not eval settings.
EXTRACTOR_RUNTIME_FIELDS = ("extractor_api_key_env", "extractor_cache", "extractor_concurrency", "extractor_timeout_s",
                            "extractor_retries", "extractor_backoff_s")
# The files a run of other settings moves aside (the verdict cache stays: its keys name what they grade).
RUN_FILES = (STATE_FILE, PREDICTIONS_FILE, "report.json", "report.txt", "banks.json")


@dataclasses.dataclass
class EvalOutcome:
  """What one evaluation produced.

  Attributes:
    rows: per-category scores, then the overall row (`eval.report.category_report`).
    predictions: one JSON-ready dict per question, in split order.
    bank_stats: operation mix, format errors and manager calls of bank building.
    seconds: wall time of each phase ("banks", "answers", "judge") of this run.
    work: what this run did and what it took from an earlier one ("answered", "answers_resumed",
      "verdicts_asked", "banks_resumed").
  """

  rows: list[report_lib.GroupScores]
  predictions: list[dict]
  bank_stats: runner.BankStats
  seconds: dict[str, float]
  work: dict = dataclasses.field(default_factory=dict)


def _share(obj):
  """Process 0's JSON-able `obj` on every process: what the processes generate must match (generation is collective
  across hosts), and only process 0 reads the report directory."""
  if jax.process_count() == 1:
    return obj
  # Bytes travel as int32 (collectives of every backend sum those); the size first, as shapes must match.
  data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8) if jax.process_index() == 0 else None
  size = int(multihost_utils.broadcast_one_to_all(np.array(0 if data is None else data.size, np.int32)))
  buffer = np.zeros(size, np.int32) if data is None else data.astype(np.int32)
  shared = np.asarray(multihost_utils.broadcast_one_to_all(buffer)).astype(np.uint8)
  return json.loads(shared.tobytes().decode("utf-8"))


def _answer_key(sample_id: str, qid: str, question: str) -> str:
  """A question's key in predictions.jsonl."""
  return json.dumps([sample_id, qid, question], ensure_ascii=False)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class EvalStore:
  """The resumable files of one report directory (see the module doc); `directory` None keeps everything in memory
  (tests, and every process but 0).

  Attributes:
    fingerprint: a hash of `settings`, the things the predictions depend on.
    answers: the prediction records saved under the same settings, by `_answer_key`.
    bank_mix: the saved bank-building stats (`operation_mix`), None before the banks are built.
    verdicts: the judge's `VerdictCache`.
    note: one line on what opening the directory found (resumed or superseded files), "" for a fresh one.
  """

  def __init__(self, directory: str | None, settings: dict):
    """Opens `directory`: resumes its files when their settings equal `settings`, else moves them aside."""
    self.directory, self.settings = directory, settings
    self.fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    self.answers: dict[str, dict] = {}
    self.bank_mix: dict | None = None
    self.note = ""
    if directory:
      os.makedirs(directory, exist_ok=True)
      self._open()
    self.verdicts = judge_lib.VerdictCache(self._path(VERDICTS_FILE) if directory else None)
    if not self.note and (self.answers or len(self.verdicts)):
      self.note = f"resuming {directory}: its {len(self.answers)} answers and {len(self.verdicts)} verdicts are reused"

  def _path(self, name: str) -> str:
    return os.path.join(self.directory, name)

  def _open(self) -> None:
    try:
      with open(self._path(STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
      state = None
    state = state if isinstance(state, dict) else None
    if state is not None and state.get("fingerprint") == self.fingerprint:
      self.bank_mix = state.get("banks")
      for row in report_lib.read_jsonl(self._path(PREDICTIONS_FILE)):
        if all(isinstance(row.get(k), str) for k in ("sample_id", "qid", "question", "prediction")):
          self.answers[_answer_key(row["sample_id"], row["qid"], row["question"])] = row
      return
    stale = [name for name in RUN_FILES if os.path.exists(self._path(name))]
    if stale:
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
      aside = tempfile.mkdtemp(prefix=f"superseded-{stamp}-", dir=self.directory)
      for name in stale:
        os.replace(self._path(name), os.path.join(aside, name))
      old = (state or {}).get("settings")
      changed = ([k for k in sorted(set(self.settings) | set(old)) if old.get(k) != self.settings.get(k)]
                 if isinstance(old, dict) else ["no saved settings"])
      self.note = (f"{self.directory} held an eval of other settings ({', '.join(changed)}): starting afresh, its "
                   f"files moved to {aside}")
    self._write_state()

  def _write_state(self) -> None:
    state = {"fingerprint": self.fingerprint, "settings": self.settings, "banks": self.bank_mix}
    fileio.write_atomic(self._path(STATE_FILE), json.dumps(state, indent=2, ensure_ascii=False) + "\n")

  def save_banks(self, mix: dict) -> None:
    """Records the bank-building stats (a rerun with every question answered skips bank building)."""
    self.bank_mix = mix
    if self.directory:
      self._write_state()

  def add_answers(self, records: Sequence[dict]) -> None:
    """Records answered questions: appended to predictions.jsonl and flushed at once."""
    for record in records:
      self.answers[_answer_key(record["sample_id"], record["qid"], record["question"])] = record
    if self.directory and records:
      report_lib.append_jsonl(self._path(PREDICTIONS_FILE), records)

  def finish(self, predictions: Sequence[dict]) -> None:
    """Rewrites predictions.jsonl atomically as the final list (split order, judge labels)."""
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    fileio.write_atomic(self._path(PREDICTIONS_FILE), text)


class _BankProgress:
  """runner.build_banks' progress callback as a bar over dialogue turns (opened at the first call)."""

  def __init__(self):
    self.bar, self.done = None, 0

  def __call__(self, done: int, total: int) -> None:
    if self.bar is None:
      self.bar = console.bar(total, desc="bank building (turns)", disable=jax.process_index() != 0)
    self.bar.update(done - self.done)
    self.done = done
    if done == total:
      self.bar.close()


def build_eval_banks(conversations: Sequence[Conversation], manager: ChatPolicy | None, bank_factory,
                     rcfg: runner.RunnerConfig) -> tuple[dict[str, MemoryBank], runner.BankStats]:
  """{sample_id: bank} built greedily by `manager` (None: the ADD-everything heuristic) over the facts of
  `rcfg.extract`, and the bank stats, with a progress bar over the turns."""
  return runner.greedy_banks(conversations, manager, bank_factory, rcfg, progress=_BankProgress())


def _memory_json(bank: MemoryBank, memory_id: int) -> dict:
  entry = bank.get(memory_id)
  return {"id": memory_id, "speaker": entry.speaker, "timestamp": entry.timestamp, "text": entry.text}


# The reported group of each non-LoCoMo question type: LongMemEval's under the paper's Table 4 names, then MSC.
QUESTION_GROUPS = {**longmemeval.QUESTION_TYPE_CODES, msc.QUESTION_TYPE: "MSC"}


def question_group(qa: QA) -> str:
  """The group `qa` is reported under: its QUESTION_GROUPS name, its own question type, or "" (LoCoMo: by
  category)."""
  return QUESTION_GROUPS.get(qa.question_type, qa.question_type)


def _answer_record(conv: Conversation, qa: QA, exp, bank: MemoryBank) -> dict:
  """The predictions.jsonl record of `qa` answered by experience `exp` over `bank` (judge fields come later)."""
  return {"sample_id": conv.sample_id, "qid": qa.qid, "category": qa.category, "group": question_group(qa),
          "question": qa.question,
          "gold": qa.answer, "prediction": exp.info["answer"], "response": exp.sample.text, "em": exp.info["em"],
          "f1": exp.info["f1"], "format_error": bool(exp.info["format_error"]),
          "memories": [_memory_json(bank, i) for i in exp.info["memory_ids"]]}


def evaluate_conversations(conversations: Sequence[Conversation], *, manager: ChatPolicy | None,
                           answerer: ChatPolicy, bank_factory, rcfg: runner.RunnerConfig,
                           judge: judge_lib.Judge | None = None,
                           store: EvalStore | None = None, batch_size: int = 64) -> EvalOutcome:
  """Builds the banks, answers every question of `conversations` greedily, judges, and scores per category.

  Args:
    conversations: the split to evaluate (their `qa` are the questions).
    manager: builds the banks (None: ADD every turn's fact).
    answerer: the answer agent.
    bank_factory: makes an empty MemoryBank.
    rcfg: retrieval sizes and the fact extractor (`rcfg.extract`).
    judge: grades each prediction against the gold answer (None: no J column).
    store: where answers and verdicts are saved as they come and resumed from (None: in memory only).
    batch_size: questions answered (and locally judged) per call; each batch is saved before the next.
  Raises:
    judge_lib.JudgeError: the judge failed; the message names the directory holding the work saved so far.
  """
  items = [(conv, qa) for conv in conversations for qa in conv.qa]
  if not items:
    raise ValueError("evaluate: the conversations have no questions")
  store = store or EvalStore(None, {})
  saved, bank_mix = _share([store.answers, store.bank_mix])  # Process 0 alone reads the directory.
  keys = [_answer_key(conv.sample_id, qa.qid, qa.question) for conv, qa in items]
  todo = [i for i, key in enumerate(keys) if key not in saved]
  t0 = time.perf_counter()
  rebuild = bool(todo) or bank_mix is None
  if rebuild:
    banks, stats = build_eval_banks(conversations, manager, bank_factory, rcfg)
    store.save_banks(operation_mix(stats))
  else:  # Every answer is saved: the banks are not needed again.
    banks, stats = {}, _bank_stats(bank_mix)
  t1 = time.perf_counter()
  answers = dict(saved)
  bar = console.bar(len(items), initial=len(items) - len(todo), desc="answering (questions)",
                    disable=jax.process_index() != 0 or not todo)
  for start in range(0, len(todo), max(1, batch_size)):
    batch = todo[start:start + max(1, batch_size)]
    experiences = runner.answer_episodes(answerer, banks, [items[i] for i in batch], rcfg, n=1, greedy=True)
    records = [_answer_record(*items[i], exp, banks[items[i][0].sample_id]) for i, exp in zip(batch, experiences)]
    store.add_answers(records)
    answers.update(zip((keys[i] for i in batch), records))
    bar.update(len(batch))
  bar.close()
  t2 = time.perf_counter()
  answered = [answers[key] for key in keys]
  verdicts: list[judge_lib.JudgeVerdict | None] = [None] * len(items)
  cached = len(store.verdicts)
  if judge is not None:
    try:
      verdicts = judge.cached_verdicts([a["question"] for a in answered], [a["gold"] for a in answered],
                                       [a["prediction"] for a in answered], store.verdicts, batch_size=batch_size,
                                       agree=_share)
    except judge_lib.JudgeError as err:
      if not store.directory:
        raise
      raise judge_lib.JudgeError(
          f"{err}; the {len(items)} answers and {len(store.verdicts)} verdicts so far are saved in "
          f"{store.directory}: rerun the same command to resume from them") from err
  t3 = time.perf_counter()
  records, predictions = [], []
  for answer, verdict in zip(answered, verdicts):
    label = None if verdict is None else verdict.correct
    records.append(report_lib.EvalRecord(answer["category"], answer["prediction"], answer["gold"], label,
                                         answer.get("group", "")))
    predictions.append({**answer, "judge": label,
                        "judge_reason": None if verdict is None else verdict.reason,
                        "judge_format_error": None if verdict is None else verdict.format_error})
  by_group = any(r.group for r in records)
  rows = report_lib.category_report(records, with_locomo_f1=not by_group and all(1 <= r.category <= 5 for r in records),
                                    group_order=list(QUESTION_GROUPS.values()))
  graded = [v for v in verdicts if v is not None]
  work = {"answered": len(todo), "answers_resumed": len(items) - len(todo),
          "verdicts_asked": len(store.verdicts) - cached, "banks_resumed": not rebuild,
          "judge_unparseable": sum(v.unparsed for v in graded),
          "judge_format_errors": sum(v.format_error is not None for v in graded)}
  return EvalOutcome(rows, predictions, stats, {"banks": t1 - t0, "answers": t2 - t1, "judge": t3 - t2}, work)


def operation_mix(stats: runner.BankStats) -> dict:
  """Bank-building summary: operation counts and shares, format errors, rejected operations, manager calls."""
  counts = {kind.value: int(stats.ops.get(kind.value, 0)) for kind in OpKind}
  total = sum(counts.values())
  return {"counts": counts, "shares": {k: (v / total if total else 0.0) for k, v in counts.items()},
          "format_errors": stats.format_errors, "rejected_ops": stats.rejected_ops,
          "manager_calls": stats.manager_calls}


def _bank_stats(mix: dict) -> runner.BankStats:
  """The BankStats that `operation_mix` summarised (as saved in state.json)."""
  return runner.BankStats(ops=collections.Counter({k: v for k, v in mix["counts"].items() if v}),
                          format_errors=mix["format_errors"], rejected_ops=mix["rejected_ops"],
                          manager_calls=mix["manager_calls"])


def report_dict(outcome: EvalOutcome, info: dict) -> dict:
  """The report as JSON: {"scale", "groups"} (`eval.report.report_to_json`), `info` (provenance: which models played
  which part, the config, the judge, timestamps), "banks" (`operation_mix`), "seconds" and "work"."""
  return {**report_lib.report_to_json(outcome.rows), **info, "banks": operation_mix(outcome.bank_stats),
          "seconds": outcome.seconds, "work": outcome.work}


def write_outcome(outcome: EvalOutcome, store: EvalStore, report: dict) -> None:
  """Writes report.txt / report.json (`report`, through `eval.report.write_report`) and the final predictions.jsonl
  under `store.directory`."""
  report_lib.write_report(outcome.rows, store.directory,
                          extra={k: v for k, v in report.items() if k not in ("scale", "groups")})
  store.finish(outcome.predictions)


class SelfJudgingError(ConfigError):
  """The configured judge is a model under evaluation: it would grade its own answers."""


def local_judge(policy: EnginePolicy, max_new_tokens: int, name: str) -> judge_lib.Judge:
  """A judge that is `policy`'s model decoding greedily through its rollout engine (chat template applied); `name`
  identifies that model in the verdict cache."""
  engine = policy.engine

  def generate_fn(prompts: list[str]) -> list[str]:
    completions = engine.generate(prompts, n=1, key=0, temperature=0.0, max_new_tokens=max_new_tokens)
    return [c.text or "" for c in completions]

  return judge_lib.Judge(judge_lib.generate_fn_backend(generate_fn, render=engine.tokenizer.apply_chat_template),
                         name=name)


def http_judge(config) -> judge_lib.Judge:
  """The judge at the OpenAI-compatible endpoint config.eval.judge (ConfigError naming the field on bad input)."""
  e = config.eval
  if not e.judge_model:
    raise ConfigError(f"config.eval.judge_model: empty; name the model served at {e.judge!r}")
  try:
    http_config = judge_lib.HttpJudgeConfig(
        base_url=e.judge, model=e.judge_model, api_key_env=e.judge_api_key_env, max_tokens=e.judge_max_tokens,
        max_retries=e.judge_retries, timeout_s=float(e.judge_timeout_s), backoff_s=float(e.judge_backoff_s),
        max_concurrency=int(e.judge_concurrency))
    return judge_lib.Judge(judge_lib.HttpChatBackend(http_config), name=e.judge_model)
  except ValueError as err:
    raise ConfigError(f"config.eval.judge={e.judge!r}: {err}") from None


def check_judge(judge: judge_lib.Judge) -> None:
  """Process 0 sends the HTTP judge one tiny request (with its retries); when it fails, every process raises a
  one-line JudgeError (endpoint, model, reason) before any model loads or bank is built."""
  error = ""
  if jax.process_index() == 0:
    try:
      judge.backend.check()
    except judge_lib.JudgeError as err:
      error = f"{err}; eval stopped before loading any model (config.eval.judge, config.eval.judge_model)"
  error = _share(error)
  if error:
    raise judge_lib.JudgeError(error)


def _weights_id(config, spec: str, field: str) -> str:
  """Which weights a model spec of mode=eval names, for the self-judging check: "base:<model>", "hf:<dir>" or
  "workdir:<dir>" ("" for the policy: config.workdir's checkpoint, or the base model when there is none)."""
  base = "base:" + (os.path.realpath(config.model.path) if config.model.path else f"preset {config.model.preset}")
  if not spec:
    has_checkpoints = os.path.isdir(os.path.join(config.workdir, "checkpoints"))
    return (f"workdir:{os.path.realpath(config.workdir)}" if has_checkpoints and config.eval.checkpoint != "none"
            else base)
  kind, path, _ = components.parse_model_spec(spec, field)
  if kind == "base" or (kind == "hf" and config.model.path and os.path.realpath(path) == base[5:]):
    return base
  return f"{kind}:{os.path.realpath(path)}"


def check_not_self_judging(config) -> None:
  """SelfJudgingError when config.eval.judge is a local checkpoint whose weights are those of the manager or the
  answer agent under evaluation (or "local", the answer agent itself); other local checkpoints may judge."""
  e = config.eval
  parts = {"answer agent": ("config.eval.answer_path", e.answer_path)}
  if e.manager_path != ADD_ALL:
    parts["manager"] = ("config.eval.manager_path", e.manager_path)
  if e.judge == "local":
    raise SelfJudgingError("config.eval.judge='local' is the answer agent under evaluation grading its own answers; "
                           "name an OpenAI-compatible endpoint or another model's checkpoint directory")
  judge = _weights_id(config, e.judge, "config.eval.judge")
  for part, (field, spec) in parts.items():
    if _weights_id(config, spec, field) == judge:
      raise SelfJudgingError(f"config.eval.judge={e.judge!r}: these are the weights of the {part} under evaluation "
                             f"({field}={spec or 'the policy'!r}); it would grade its own answers. Use an "
                             "OpenAI-compatible endpoint or another model's checkpoint")


def _check_config(config) -> None:
  e = config.eval
  if e.checkpoint not in components.CHECKPOINT_CHOICES:
    raise ConfigError(
        f"config.eval.checkpoint={e.checkpoint!r} is not one of {components.CHECKPOINT_CHOICES}")
  for field, spec in (("manager_path", "" if e.manager_path == ADD_ALL else e.manager_path),
                      ("answer_path", e.answer_path)):
    if spec:
      components.parse_model_spec(spec, f"config.eval.{field}")
  if e.judge_retries < 0:
    raise ConfigError(f"config.eval.judge_retries={e.judge_retries}: must be 0 or more")
  if e.judge and not openai_client.is_endpoint_url(e.judge):
    check_not_self_judging(config)


def eval_settings(config, conversations: Sequence[Conversation], policies: dict) -> dict:
  """What an eval's predictions depend on: the split's content, the models (`policies`: each part's provenance) and
  the config sections that change an answer. The judge is not among them: a verdict is cached under its model."""
  saved = defaults.redacted(config)
  split = hashlib.sha256()
  for conv in conversations:
    split.update(json.dumps(dataclasses.asdict(conv), sort_keys=True, default=str).encode("utf-8"))
  return {"split": [config.eval.split, split.hexdigest()], "policies": policies, "seed": config.seed,
          "model": saved["model"],
          "memory": {k: v for k, v in saved["memory"].items() if k not in EXTRACTOR_RUNTIME_FIELDS},
          "rollout": {k: saved["rollout"][k] for k in ("max_prompt_len", "max_new_tokens")}}


def _extractor_provenance(config) -> dict:
  """Which fact extractor built the banks: the extraction kind and, for "llm", the endpoint and model or the spec."""
  m = config.memory
  if m.extraction != "llm":
    return {"extraction": m.extraction}
  return {"extraction": "llm", "extractor": m.extractor, "model": m.extractor_model or m.extractor}


def _out_name(config, step: int | None, policy_used: bool, provenance: dict) -> str:
  """The report directory's name under <workdir>/eval/<split>: "<checkpoint>-step<N>" or "base" when the policy plays
  a part; else eval.method as a slug, or "pair-<hash of who plays which part>"."""
  e = config.eval
  if policy_used:
    return "base" if step is None else f"{e.checkpoint}-step{step}"
  if e.method:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in e.method)
  digest = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode("utf-8")).hexdigest()[:8]
  return f"pair-{digest}"


def run(config) -> dict:
  """Entry point of mode=eval; returns the report (see `write_outcome`, plus "out_dir") and prints its table."""
  started = _now()
  _check_config(config)
  e = config.eval
  splits = tasks.load(config).splits()  # Fails fast on bad data before any model loads.
  if e.split not in splits:
    raise ConfigError(f"config.eval.split={e.split!r} is not one of {sorted(splits)}")
  conversations = splits[e.split]
  if not any(conv.qa for conv in conversations):
    raise ConfigError(f"config.eval.split={e.split!r}: no questions in {config.data.name} "
                                 f"({config.data.path or config.data.data_dir})")
  rcfg = components.runner_config(config)  # Checks the fact extractor's fields; loads no model, sends no request.
  judge = None
  if e.judge and openai_client.is_endpoint_url(e.judge):
    judge = http_judge(config)  # Checked on every process; only process 0 sends requests.
    check_judge(judge)
    judge = judge if jax.process_index() == 0 else None
  mesh = components.setup_mesh(config)
  bank_factory = components.bank_factory(config)
  policies: dict[str, EnginePolicy] = {}
  sources: dict[str, dict] = {}
  info = {"split": e.split, "dataset": config.data.name, "questions": sum(len(c.qa) for c in conversations),
          "checkpoint": e.checkpoint}

  def policy_for(spec: str, field: str) -> EnginePolicy:
    """The engine of model spec `spec` ("": the policy), loaded once; its provenance in `sources`."""
    if spec not in policies:
      if spec:
        model, tokenizer, sources[spec] = components.load_model_spec(config, mesh, spec, field)
      else:
        model, tokenizer, step = components.load_trained_policy(config, mesh, e.checkpoint)
        info["policy_step"] = step
        sources[spec] = {"spec": "policy", "model": config.model.path or f"preset {config.model.preset}", "step": step,
                         "checkpoint": None if step is None else os.path.join(config.workdir, "checkpoints", str(step))}
      policies[spec] = components.make_engine_policy(model, tokenizer, config, mesh, seed=config.seed)
    return policies[spec]

  manager = None if e.manager_path == ADD_ALL else policy_for(e.manager_path, "config.eval.manager_path")
  answerer = policy_for(e.answer_path, "config.eval.answer_path")
  provenance = {"manager": {"model": ADD_ALL} if manager is None else sources[e.manager_path],
                "answer": sources[e.answer_path], "extractor": _extractor_provenance(config)}
  if e.judge and judge is None and not openai_client.is_endpoint_url(e.judge):  # A local checkpoint judges.
    model, tokenizer, judged_by = components.load_model_spec(config, mesh, e.judge, "config.eval.judge")
    judge_policy = components.make_engine_policy(model, tokenizer, config, mesh, seed=config.seed,
                                                 max_new_tokens=e.judge_max_tokens)
    judge = local_judge(judge_policy, e.judge_max_tokens, name="local " + json.dumps(judged_by, sort_keys=True))
  step = info.get("policy_step")
  out_dir = os.path.join(config.workdir, "eval", e.split, _out_name(config, step, "" in sources, provenance))
  info.update(method=e.method or os.path.basename(os.path.normpath(config.workdir)),
              manager=e.manager_path or "policy", answer=e.answer_path or "policy", policies=provenance,
              judge=e.judge, judge_model=judge.name if judge is not None else e.judge_model if e.judge else "",
              judge_prompt=judge_lib.PROMPT_ID, config=defaults.redacted(config), out_dir=out_dir)
  store = EvalStore(out_dir if jax.process_index() == 0 else None, eval_settings(config, conversations, provenance))
  if store.note:
    print(f"# {store.note}", flush=True)
  outcome = evaluate_conversations(conversations, manager=manager, answerer=answerer, bank_factory=bank_factory,
                                   rcfg=rcfg, judge=judge, store=store, batch_size=config.rollout.max_batch)
  counters = getattr(rcfg.extract, "counters", None)
  if counters is not None:  # The frozen LLM extractor: its calls, cache hits, malformed replies and failures.
    info["extractor"] = dataclasses.asdict(counters)
  report = report_dict(outcome, {**info, "started": started, "finished": _now()})
  if jax.process_index() != 0:
    return report
  write_outcome(outcome, store, report)
  mix = report["banks"]
  ops = ", ".join(f"{k} {v}" for k, v in mix["counts"].items())
  extracted = ("; fact extractor: " + ", ".join(f"{k} {v}" for k, v in report["extractor"].items())
               if "extractor" in report else "")
  judged = (f"; judge {info['judge_model']}: {outcome.work['judge_unparseable']} unparseable verdicts"
            if info["judge_model"] else "; J off (no judge: --config.eval.judge=<endpoint URL or model spec>)")
  print(f"# eval {e.split} ({info['dataset']}, {info['method']}): {info['questions']} questions; manager "
        f"{info['manager']}, answer agent {info['answer']}; bank operations: {ops}; manager format errors "
        f"{mix['format_errors']}{extracted}{judged}\n"
        f"{report_lib.render_table(outcome.rows)}# written to {out_dir}", flush=True)
  return report
