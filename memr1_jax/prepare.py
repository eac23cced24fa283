r"""mode=prepare: build the manager's training tuples (turn, temporal memory bank, linked QA) of the train split.

  python -m memr1_jax.main --config=configs/grpo_qwen7b.py --config.mode=prepare --config.agent=manager

For each turn of the task's train split that is the last evidence turn of some question, the memory bank over the
config.prepare.window turns before it is built (config.prepare.snapshot_manager: "" ADDs every fact of
config.memory.extraction's extractor; a checkpoint directory is a frozen manager run greedily) and saved with the
turn and its questions (`memr1_jax.episodes.tuples`) to config.prepare.path (<workdir>/manager_tuples.jsonl), written
atomically. The file's first line records the settings it was built under: a rerun with the same settings reuses it,
one with other settings rebuilds it. One line of counts is printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax

from memr1_jax import components, defaults, tasks
from memr1_jax.episodes import tuples as tuples_lib
from memr1_jax.errors import ConfigError

# The file's name under the workdir when config.prepare.path is empty.
DEFAULT_FILE = "manager_tuples.jsonl"
# Fields of config.memory that change how the fact extractor is reached, not what it replies: not tuple settings (as
# evaluate.EXTRACTOR_RUNTIME_FIELDS; the modes import components, not each other).
EXTRACTOR_RUNTIME_FIELDS = ("extractor_api_key_env", "extractor_cache", "extractor_concurrency", "extractor_timeout_s",
                            "extractor_retries", "extractor_backoff_s")


def tuples_path(config) -> str:
  """Where the tuples are written: config.prepare.path, or <workdir>/manager_tuples.jsonl."""
  return os.path.expanduser(config.prepare.path) or os.path.join(config.workdir, DEFAULT_FILE)


def settings(config, conversations) -> dict:
  """What the tuples depend on (JSON-normalised): the train split's content, the window, the snapshot manager and,
  when it is a model, the settings of its prompts and replies, and config.memory (the extractor, the bank)."""
  saved = defaults.redacted(config)
  split = hashlib.sha256()
  for conv in conversations:
    split.update(json.dumps(dataclasses.asdict(conv), sort_keys=True, default=str).encode("utf-8"))
  out = {"split": ["train", split.hexdigest()], "window": config.prepare.window,
         "snapshot_manager": config.prepare.snapshot_manager,
         "memory": {k: v for k, v in saved["memory"].items() if k not in EXTRACTOR_RUNTIME_FIELDS}}
  if config.prepare.snapshot_manager:
    out.update(model=saved["model"], seed=config.seed,
               rollout={k: saved["rollout"][k] for k in ("max_prompt_len", "max_new_tokens")})
  return json.loads(json.dumps(out))


def _check_config(config) -> None:
  p = config.prepare
  if p.window < 0:
    raise ConfigError(f"config.prepare.window={p.window}: must be 0 or more turns")
  if p.snapshot_manager and not os.path.isdir(p.snapshot_manager):
    raise ConfigError(f"config.prepare.snapshot_manager={p.snapshot_manager!r}: not a directory (a Hugging Face "
                      "checkpoint); '' ADDs every extracted fact")


def _line(verb: str, path: str, c: dict) -> str:
  return (f"# prepare: {verb} {path}: {c['tuples']} tuples over {c['turns']} turns of {c['conversations']} "
          f"conversations; {c['linked_questions']} linked questions, {c['skipped_questions']} skipped (evidence "
          f"names a missing turn or none); mean snapshot {c['mean_snapshot']:.1f} memories")


def run(config) -> dict:
  """Entry point of mode=prepare; returns {"path", "counts", "reused"} and prints one line of counts."""
  _check_config(config)
  conversations = tasks.load(config).splits()["train"]  # Fails fast on bad data before any model loads.
  path = tuples_path(config)
  wanted = settings(config, conversations)
  header = tuples_lib.read_header(path)
  if header is not None and header.get("settings") == wanted:
    print(_line("reused", path, header["counts"]), flush=True)
    return {"path": path, "counts": header["counts"], "reused": True}
  rcfg = components.runner_config(config)  # Checks the fact extractor's fields; loads no model, sends no request.
  bank_factory = components.bank_factory(config)
  manager = None
  if config.prepare.snapshot_manager:
    mesh = components.setup_mesh(config)
    model, tokenizer = components.load_policy(config, mesh, config.prepare.snapshot_manager)
    manager = components.make_engine_policy(model, tokenizer, config, mesh, seed=config.seed)
  built = tuples_lib.build_tuples(conversations, bank_factory, rcfg, window=config.prepare.window,
                                  snapshot_manager=manager)
  counts = tuples_lib.counts(built, conversations)
  if jax.process_index() == 0:  # Every process builds (generation is collective across hosts); one writes.
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tuples_lib.write_tuples(path, built, wanted, counts)
    print(_line("wrote", path, counts), flush=True)
  return {"path": path, "counts": counts, "reused": False}
