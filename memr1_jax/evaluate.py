r"""mode=eval: build memory banks with a manager, answer a split's questions, write the per-category report.

  python -m memr1_jax.main --config=configs/grpo_qwen7b.py --config.mode=eval --config.workdir=runs/grpo_qwen7b

Who plays which part (every model decodes greedily, the paper's evaluation setting):
- the policy: config.model with the trained parameters of a checkpoint in <workdir>/checkpoints
  (config.eval.checkpoint: latest | best | none), LoRA merged;
- the manager (config.eval.manager_path): a Hugging Face checkpoint directory, "add_all" (the heuristic that ADDs
  every turn's fact; no model), or empty: the policy. With config.memory.extraction="llm" the manager's model
  also extracts the facts;
- the answer agent (config.eval.answer_path): a checkpoint directory, or empty: the policy;
- the judge (config.eval.judge): "" (off), "local" (the answer agent's model through the rollout engine) or the
  base URL of an OpenAI-compatible endpoint (config.eval.judge_model; the API key is read from the environment
  variable NAMED by config.eval.judge_api_key_env, and only process 0 calls it).

Writes under <workdir>/eval/<split>/: report.txt and report.json (per category: count, EM, F1, BLEU-1, J and
LoCoMo F1), predictions.jsonl (per question: question, gold, prediction, category, scores, judge label and the
memories the answer agent was shown) and banks.json (operation mix of bank building, format errors, timings).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax

from memr1_jax import components, console, train
from memr1_jax.data.schema import Conversation
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import ChatPolicy, EnginePolicy
from memr1_jax.eval import judge as judge_lib
from memr1_jax.eval import report as report_lib
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.operations import OpKind


# config.eval.manager_path value selecting the heuristic manager that ADDs every turn's simple fact.
ADD_ALL = "add_all"


@dataclasses.dataclass
class EvalOutcome:
  """What one evaluation produced.

  Attributes:
    rows: per-category scores, then the overall row (`eval.report.category_report`).
    predictions: one JSON-ready dict per question, in split order.
    bank_stats: operation mix, format errors and manager calls of bank building.
    seconds: wall time of each phase ("banks", "answers", "judge").
  """

  rows: list[report_lib.GroupScores]
  predictions: list[dict]
  bank_stats: runner.BankStats
  seconds: dict[str, float]


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
                     rcfg: runner.RunnerConfig, extractor: ChatPolicy | None = None
                     ) -> tuple[dict[str, MemoryBank], runner.BankStats]:
  """{sample_id: bank} built greedily by `manager` (None: the ADD-everything heuristic), and the bank stats."""
  if manager is None:
    banks = train.add_all_banks(conversations, bank_factory, rcfg.extraction)
    stats = runner.BankStats()
    stats.ops["ADD"] = sum(len(bank) for bank in banks.values())
    return banks, stats
  built, stats = runner.build_banks(manager, conversations, bank_factory, rcfg, extractor=extractor, greedy=True,
                                    progress=_BankProgress())
  return {conv.sample_id: bank for conv, bank in zip(conversations, built)}, stats


def _memory_json(bank: MemoryBank, memory_id: int) -> dict:
  entry = bank.get(memory_id)
  return {"id": memory_id, "speaker": entry.speaker, "timestamp": entry.timestamp, "text": entry.text}


def evaluate_conversations(conversations: Sequence[Conversation], *, manager: ChatPolicy | None,
                           answerer: ChatPolicy, bank_factory, rcfg: runner.RunnerConfig,
                           extractor: ChatPolicy | None = None, judge: judge_lib.Judge | None = None
                           ) -> EvalOutcome:
  """Builds the banks, answers every question of `conversations` greedily, judges, and scores per category.

  Args:
    conversations: the split to evaluate (their `qa` are the questions).
    manager: builds the banks (None: ADD every turn's fact).
    answerer: the answer agent.
    bank_factory: makes an empty MemoryBank.
    rcfg: retrieval sizes and extraction mode.
    extractor: the fact extractor when rcfg.extraction == "llm".
    judge: grades each prediction against the gold answer (None: no J column).
  """
  items = [(conv, qa) for conv in conversations for qa in conv.qa]
  if not items:
    raise ValueError("evaluate: the conversations have no questions")
  t0 = time.perf_counter()
  banks, stats = build_eval_banks(conversations, manager, bank_factory, rcfg, extractor)
  t1 = time.perf_counter()
  experiences = runner.answer_episodes(answerer, banks, items, rcfg, n=1, greedy=True)
  t2 = time.perf_counter()
  verdicts: list[judge_lib.JudgeVerdict | None] = [None] * len(items)
  if judge is not None:
    verdicts = judge.verdicts([qa.question for _, qa in items], [qa.answer for _, qa in items],
                              [e.info["answer"] for e in experiences])
  t3 = time.perf_counter()
  records, predictions = [], []
  for (conv, qa), exp, verdict in zip(items, experiences, verdicts):
    label = None if verdict is None else verdict.correct
    records.append(report_lib.EvalRecord(qa.category, exp.info["answer"], qa.answer, label))
    bank = banks[conv.sample_id]
    predictions.append({
        "sample_id": conv.sample_id, "qid": qa.qid, "category": qa.category, "question": qa.question,
        "gold": qa.answer, "prediction": exp.info["answer"], "response": exp.sample.text, "em": exp.info["em"],
        "f1": exp.info["f1"], "format_error": bool(exp.info["format_error"]), "judge": label,
        "judge_format_error": None if verdict is None else verdict.format_error,
        "memories": [_memory_json(bank, i) for i in exp.info["memory_ids"]]})
  rows = report_lib.category_report(records, with_locomo_f1=all(1 <= r.category <= 5 for r in records))
  return EvalOutcome(rows, predictions, stats, {"banks": t1 - t0, "answers": t2 - t1, "judge": t3 - t2})


def operation_mix(stats: runner.BankStats) -> dict:
  """Bank-building summary: operation counts and shares, format errors, rejected operations, manager calls."""
  counts = {kind.value: int(stats.ops.get(kind.value, 0)) for kind in OpKind}
  total = sum(counts.values())
  return {"counts": counts, "shares": {k: (v / total if total else 0.0) for k, v in counts.items()},
          "format_errors": stats.format_errors, "rejected_ops": stats.rejected_ops,
          "manager_calls": stats.manager_calls}


def report_dict(outcome: EvalOutcome, info: dict) -> dict:
  """The report as JSON: {"scale", "groups"} (`eval.report.report_to_json`), `info` (which models played which
  part), "banks" (`operation_mix`) and "seconds"."""
  return {**report_lib.report_to_json(outcome.rows), **info, "banks": operation_mix(outcome.bank_stats),
          "seconds": outcome.seconds}


def write_outcome(outcome: EvalOutcome, out_dir: str, report: dict) -> None:
  """Writes report.txt / report.json (`eval.report.write_report`), predictions.jsonl and banks.json (`report`
  without the per-category groups) under `out_dir`."""
  report_lib.write_report(outcome.rows, out_dir)
  with open(os.path.join(out_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
    for prediction in outcome.predictions:
      f.write(json.dumps(prediction, ensure_ascii=False) + "\n")
  with open(os.path.join(out_dir, "banks.json"), "w", encoding="utf-8") as f:
    json.dump({k: v for k, v in report.items() if k not in ("scale", "groups")}, f, indent=2)


def local_judge(policy: EnginePolicy, max_new_tokens: int) -> judge_lib.Judge:
  """A judge that is `policy`'s model decoding greedily through its rollout engine (chat template applied)."""
  engine = policy.engine

  def generate_fn(prompts: list[str]) -> list[str]:
    completions = engine.generate(prompts, n=1, key=0, temperature=0.0, max_new_tokens=max_new_tokens)
    return [c.text or "" for c in completions]

  return judge_lib.Judge(judge_lib.generate_fn_backend(generate_fn, render=engine.tokenizer.apply_chat_template))


def http_judge(config) -> judge_lib.Judge:
  """The judge at the OpenAI-compatible endpoint config.eval.judge (ConfigError naming the field on bad input)."""
  e = config.eval
  if not e.judge_model:
    raise components.ConfigError(f"config.eval.judge_model: empty; name the model served at {e.judge!r}")
  try:
    http_config = judge_lib.HttpJudgeConfig(base_url=e.judge, model=e.judge_model, api_key_env=e.judge_api_key_env,
                                            max_tokens=e.judge_max_tokens)
    return judge_lib.Judge(judge_lib.HttpChatBackend(http_config))
  except ValueError as err:
    raise components.ConfigError(f"config.eval.judge={e.judge!r}: {err}") from None


def _check_config(config) -> None:
  e = config.eval
  if e.checkpoint not in components.CHECKPOINT_CHOICES:
    raise components.ConfigError(
        f"config.eval.checkpoint={e.checkpoint!r} is not one of {components.CHECKPOINT_CHOICES}")
  for field, path in (("manager_path", "" if e.manager_path == ADD_ALL else e.manager_path),
                      ("answer_path", e.answer_path)):
    if path and not os.path.isdir(path):
      raise components.ConfigError(f"config.eval.{field}={path!r}: not a directory (a Hugging Face checkpoint)")
  if e.manager_path == ADD_ALL and config.memory.extraction == "llm":
    raise components.ConfigError(
        f"config.eval.manager_path={ADD_ALL!r} stores the facts of a model-free extraction; config.memory.extraction="
        "'llm' needs a model manager (or set it to 'simple')")


def run(config) -> dict:
  """Entry point of mode=eval; returns the report (see `write_outcome`) and prints its table."""
  _check_config(config)
  e = config.eval
  splits = components.load_splits(config)  # Fails fast on bad data before any model loads.
  if e.split not in splits:
    raise components.ConfigError(f"config.eval.split={e.split!r} is not one of {sorted(splits)}")
  conversations = splits[e.split]
  if not any(conv.qa for conv in conversations):
    raise components.ConfigError(f"config.eval.split={e.split!r}: no questions in {config.data.name} "
                                 f"({config.data.path or config.data.data_dir})")
  judge = None
  if e.judge and e.judge != "local":
    judge = http_judge(config)  # Checked on every process; only process 0 sends requests.
    judge = judge if jax.process_index() == 0 else None
  mesh = components.setup_mesh(config)
  bank_factory = components.bank_factory(config)
  policies: dict[str, EnginePolicy] = {}
  info = {"split": e.split, "questions": sum(len(c.qa) for c in conversations)}

  def policy_for(path: str) -> EnginePolicy:
    """The engine of checkpoint directory `path` ("": the policy), loaded once."""
    if path not in policies:
      if path:
        model, tokenizer = components.load_policy(config, mesh, path)
      else:
        model, tokenizer, step = components.load_trained_policy(config, mesh, e.checkpoint)
        info["policy_step"] = step
      policies[path] = train.make_engine_policy(model, tokenizer, config, mesh, seed=config.seed)
    return policies[path]

  manager = None if e.manager_path == ADD_ALL else policy_for(e.manager_path)
  answerer = policy_for(e.answer_path)
  extractor = manager if config.memory.extraction == "llm" else None
  if e.judge == "local":
    judge = local_judge(answerer, e.judge_max_tokens)
  info.update(manager=e.manager_path or "policy", answer=e.answer_path or "policy",
              judge=e.judge if judge is not None else "")
  outcome = evaluate_conversations(conversations, manager=manager, answerer=answerer, bank_factory=bank_factory,
                                   rcfg=train.runner_config(config), extractor=extractor, judge=judge)
  report = report_dict(outcome, info)
  if jax.process_index() != 0:
    return report
  out_dir = os.path.join(config.workdir, "eval", e.split)
  os.makedirs(out_dir, exist_ok=True)
  write_outcome(outcome, out_dir, report)
  mix = report["banks"]
  ops = ", ".join(f"{k} {v}" for k, v in mix["counts"].items())
  print(f"# eval {e.split}: {info['questions']} questions; manager {info['manager']}, answer agent "
        f"{info['answer']}; bank operations: {ops}; manager format errors {mix['format_errors']}\n"
        f"{report_lib.render_table(outcome.rows)}# written to {out_dir}", flush=True)
  return {**report, "out_dir": out_dir}
