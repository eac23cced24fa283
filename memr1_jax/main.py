r"""Entry point: `python -m memr1_jax.main --config=configs/<name>.py [--config.field=value ...]`.

Modes (config.mode): train (RL of the manager or answer agent with GRPO / PPO), sft (supervised warm start),
eval (per-category report), export (Hugging Face safetensors directory), prepare (the manager's training tuples,
`memr1_jax.prepare`), distill (a teacher's trajectories for Memory-SFT, `memr1_jax.distill`), and those a task
module adds (config.task, see `memr1_jax.tasks`; the CPU demo's "demo").
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from memr1_jax import console, defaults, errors, tasks, workdir
from memr1_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file.", lock_config=True)
flags.mark_flags_as_required(["config"])
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO records (orbax, absl, jax, transformers) "
                              "and the traceback behind an error.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose saved config differs "
                                         "in agent, algorithm, model, data or seed (see memr1_jax/workdir.py).")

# mode -> module with a `run(config)` function; modules are imported only when their mode is chosen.
MODE_MODULES = {
    "train": "memr1_jax.train",
    "sft": "memr1_jax.sft",
    "eval": "memr1_jax.evaluate",
    "export": "memr1_jax.export",
    "prepare": "memr1_jax.prepare",
    "distill": "memr1_jax.distill",
}


# Fields with a closed set of values (tests/test_reliability.py checks these against the modules that use them).
_DTYPES = ("float32", "bfloat16", "float16")
ENUM_FIELDS = {
    "agent": defaults.AGENTS, "algorithm": defaults.ALGORITHMS,
    "memory.index": ("scann", "brute_force"), "memory.extraction": ("simple", "llm", "task"),
    "memory.prompts": ("paper", "compact"), "train.manager_data": ("tuples", "conversations"),
    "eval.checkpoint": ("latest", "best", "none"),
    "rl.kl_estimator": ("k1", "k2", "k3"), "rl.manager_reward_questions": ("turn", "answerable"),
    "rl.loss_aggregation": ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"),
    "rl.reference_memory": ("device", "host"), "rl.optimizer_memory": ("device", "host"),
    "rl.master_dtype": _DTYPES, "rl.adam_mu_dtype": ("", *_DTYPES), "rl.adam_nu_dtype": ("", *_DTYPES),
    "model.dtype": _DTYPES, "model.param_dtype": _DTYPES, "model.attention_impl": ("", "xla", "cudnn"),
}
_INF = float("inf")
# Numeric fields and their allowed closed range, with what the bound means (checked before anything is built).
RANGES = {
    "rollout.batch_size": (1, _INF, "at least 1 prompt per step"),
    "rollout.group_size": (1, _INF, "at least 1 response per prompt"),
    "rollout.max_prompt_len": (1, _INF, "at least 1 token"),
    "rollout.max_new_tokens": (1, _INF, "at least 1 new token per response"),
    "rollout.temperature": (0.0, _INF, "0 (greedy) or more"),
    "rollout.top_p": (1e-9, 1.0, "in (0, 1]"),
    "rollout.top_k": (0, _INF, "0 (off) or more"),
    "rollout.max_batch": (1, _INF, "at least 1 row per engine call"),
    "rl.actor_lr": (0.0, _INF, "0 or more"), "rl.critic_lr": (0.0, _INF, "0 or more"),
    "rl.epochs": (1, _INF, "at least 1 pass over each batch"),
    "rl.micro_batch_size": (1, _INF, "at least 1 row"), "rl.num_minibatches": (1, _INF, "at least 1"),
    "rl.max_grad_norm": (0.0, _INF, "0 (off) or more"), "rl.clip_eps_low": (0.0, _INF, "0 or more"),
    "rl.clip_eps_high": (0.0, _INF, "0 or more"), "rl.kl_coef": (0.0, _INF, "0 or more"),
    "rl.gamma": (0.0, 1.0, "in [0, 1]"), "rl.lam": (0.0, 1.0, "in [0, 1]"),
    "rl.f1_reward_weight": (0.0, 1.0, "in [0, 1]"),
    "sft.lr": (0.0, _INF, "0 or more"), "sft.epochs": (1, _INF, "at least 1"),
    "sft.batch_size": (1, _INF, "at least 1 example per step"), "sft.micro_batch_size": (1, _INF, "at least 1"),
    "sft.num_steps": (0, _INF, "0 (from sft.epochs) or more"),
    "sft.checkpoint_every": (0, _INF, "0 (only the last step) or more"),
    "train.num_steps": (1, _INF, "at least 1 step"), "train.log_every": (1, _INF, "at least 1"),
    "train.eval_every": (0, _INF, "0 (off) or more"),
    "train.checkpoint_every": (1, _INF, "at least 1 (the last step is always saved)"),
    "train.keep_checkpoints": (1, _INF, "at least 1"), "train.max_nonfinite_steps": (1, _INF, "at least 1"),
    "memory.related_k": (0, _INF, "0 or more"), "memory.answer_k_per_speaker": (1, _INF, "at least 1"),
    "memory.extractor_concurrency": (1, _INF, "at least 1 request in flight"),
    "memory.extractor_timeout_s": (1e-9, _INF, "more than 0 seconds"),
    "memory.extractor_retries": (0, _INF, "0 (no retry) or more"),
    "memory.extractor_backoff_s": (0.0, _INF, "0 or more seconds"),
    "memory.extractor_max_tokens": (1, _INF, "at least 1 token"),
    "prepare.window": (0, _INF, "0 (empty banks) or more turns"),
    "eval.judge_max_tokens": (1, _INF, "at least 1 token"), "eval.judge_retries": (0, _INF, "0 (no retry) or more"),
    "eval.judge_backoff_s": (0.0, _INF, "0 or more seconds"), "eval.judge_timeout_s": (1e-9, _INF, "more than 0 s"),
    "eval.judge_concurrency": (1, _INF, "at least 1 request in flight"),
    "distill.max_tokens": (1, _INF, "at least 1 token"), "distill.concurrency": (1, _INF, "at least 1 request"),
    "distill.timeout_s": (1e-9, _INF, "more than 0 seconds"), "distill.retries": (0, _INF, "0 (no retry) or more"),
    "distill.backoff_s": (0.0, _INF, "0 or more seconds"),
}
_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")



def _field_values(config, prefix: str = "") -> dict[str, object]:
  """{"model.dtype": value, ...}: every leaf field of a ConfigDict by dotted path."""
  out = {}
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_field_values(value, f"{prefix}{name}."))
    else:
      out[f"{prefix}{name}"] = value
  return out


def _check_no_secret(fields: dict[str, object], source: str) -> None:
  """The API keys (the judge's, the fact extractor's endpoint's) travel only through the environment: no field may
  hold one (its value is never echoed)."""
  for env_field in defaults.API_KEY_ENV_FIELDS:
    key_env = fields.get(env_field, "")
    if key_env and not (isinstance(key_env, str) and _ENV_NAME_RE.fullmatch(key_env)):
      raise ConfigError(f"{source}: config.{env_field} must be the NAME of an environment variable "
                        "(like OPENAI_API_KEY), not the key itself (value not shown)")
    key = os.environ.get(key_env, "") if key_env else ""
    for name, value in fields.items():
      if key and isinstance(value, str) and key in value:
        raise ConfigError(f"{source}: config.{name} holds the value of ${key_env}; pass the API key only through "
                          "the environment (value not shown)")


def _task_section(config, source: str):
  """(the task module of config.task or None, the default fields of its config section by dotted path)."""
  module = tasks.task_module(config)
  section = getattr(module, "SECTION", None)
  if section is None:
    return module, {}
  if section not in config:
    raise ConfigError(f"{source}: config.task={config.task!r} needs its section config.{section} (start from "
                      f"{config.task}.section_config())")
  return module, _field_values(module.section_config(), f"{section}.")


def modes(module) -> dict[str, str]:
  """Mode name -> module path with `run(config)`: the library's modes and those of the task module `module`."""
  return {**MODE_MODULES, **getattr(module, "MODES", {})}


def validate_config(config, source: str = "config") -> None:
  """Checks field names and enumerated values before any expensive work; raises ConfigError naming file and field.

  Unknown fields (not in defaults.default_config() or the task's section), values outside ENUM_FIELDS, and an API
  key pasted into the config are errors; the task module checks its own section (`validate`).
  """
  fields = _field_values(config)
  _check_no_secret(fields, source)
  module, section = _task_section(config, source)
  known = set(_field_values(defaults.default_config())) | set(section)
  for name in fields:
    if name not in known:
      close = difflib.get_close_matches(name, known, n=1)
      raise ConfigError(f"{source}: config.{name} is not a known field" +
                        (f" (did you mean config.{close[0]}?)" if close else ""))
  enums = {**ENUM_FIELDS, "mode": tuple(modes(module))}
  if module is None:
    enums["data.name"] = tuple(tasks.DATASETS)
  for name, allowed in enums.items():
    if fields[name] not in allowed:
      raise ConfigError(f"{source}: config.{name}={fields[name]!r} is not one of {allowed}")
  if config.memory.extraction == "task" and module is None:
    raise ConfigError(f"{source}: config.memory.extraction='task' reads with the extractor of a task module, and "
                      "config.task is empty; use 'simple' or 'llm'")
  if config.memory.extraction == "llm" and config.mode not in ("sft", "export"):  # The modes that extract facts.
    from memr1_jax import components  # pylint: disable=g-import-not-at-top  # Loads JAX: only for this check.
    try:
      components.check_extractor(config)
    except ConfigError as e:
      raise ConfigError(f"{source}: {e}") from None
  if not config.model.path and not config.model.preset:
    raise ConfigError(f"{source}: set config.model.path (a Hugging Face checkpoint directory) or config.model.preset")
  for name, (low, high, meaning) in RANGES.items():
    value = fields[name]
    if not low <= value <= high:
      raise ConfigError(f"{source}: config.{name}={value!r} is out of range: {meaning}")
  trains = config.mode == "train" or config.mode not in MODE_MODULES  # A task's modes train (the demo does).
  if config.algorithm == "grpo" and trains and config.rollout.group_size < 2:
    raise ConfigError(f"{source}: config.rollout.group_size={config.rollout.group_size} with algorithm=grpo: a group "
                      "needs at least 2 responses (one response has advantage 0: nothing would train)")
  if config.rl.adam_nu_dtype == "bfloat16" and config.rl.adam_b2 > 0.995:
    raise ConfigError(f"{source}: config.rl.adam_nu_dtype='bfloat16' with config.rl.adam_b2={config.rl.adam_b2}: a "
                      "bfloat16 second moment never decays at b2 > 0.995 (set rl.adam_b2 <= 0.995)")
  if config.rl.reference_memory == "host" and config.model.lora_rank:
    raise ConfigError(f"{source}: config.rl.reference_memory='host' with config.model.lora_rank="
                      f"{config.model.lora_rank}: under LoRA the reference is the policy's own base weights (nothing "
                      "to move); use 'device'")
  if config.rl.clip_eps_low >= 1:
    raise ConfigError(f"{source}: config.rl.clip_eps_low={config.rl.clip_eps_low} must be below 1")
  if hasattr(module, "validate"):
    module.validate(config, source)


def _shipped_configs() -> list[str]:
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  return [name for name in os.listdir(here) if name.endswith(".py")] if os.path.isdir(here) else []


def _config_file_arg(argv: list[str]) -> str | None:
  """The value of --config in `argv` (None when absent)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def unknown_override(argv: list[str]) -> str | None:
  """For the first `--config.<path>` override whose field the config file lacks: a message naming file and field."""
  source = _config_file_arg(argv)
  if source is None:
    return None
  path, _, arg = source.partition(":")
  spec = importlib.util.spec_from_file_location("_memr1_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for override in argv:
    if not override.startswith("--config."):
      continue
    field = override[len("--config."):].split("=", 1)[0]
    node, parts = config, field.split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        parent = ".".join(["config", *parts[:depth]])
        choices = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, choices, n=1)
        return (f"{source}: --config.{field}: {parent} has no field {part!r}" +
                (f" (did you mean {parent}.{close[0]}?)" if close else "") +
                (f"; its fields: {', '.join(choices)}" if choices else ""))
      node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a missing config file, or an override of a field the config file lacks, exits with one
  line naming the file (and the field)."""
  source = _config_file_arg(argv)
  if source is not None and not os.path.isfile(source.partition(":")[0]):
    sys.exit(f"error: --config={source}: no such file (configs/ holds the shipped ones: "
             f"{', '.join(sorted(_shipped_configs()))})")
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):  # ml_collections' own error names neither the file nor the full field.
    message = unknown_override(argv)
    if message is None:
      raise
    sys.exit(f"error: {message}")


def run(config, source: str, allow_config_change: bool = False) -> None:
  """Validates `config`, claims its workdir (training modes), then runs its mode."""
  validate_config(config, source)
  lock = workdir.claim(config, source, allow_config_change)
  try:
    saved = f", resolved config in {os.path.join(config.workdir, workdir.CONFIG_FILE)}" if lock else ""
    print(f"{config.mode}: {source}{saved}", flush=True)
    module = importlib.import_module(modes(tasks.task_module(config))[config.mode])
    # Imported after the checks, which so take seconds: components loads JAX and the models.
    from memr1_jax import components  # pylint: disable=g-import-not-at-top
    components.configure_jax(config)
    module.run(config)
  finally:
    if lock:
      lock.release()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup(_VERBOSE.value)
  try:
    run(_CONFIG.value, flags.FLAGS["config"].config_filename, _ALLOW_CONFIG_CHANGE.value)
  except errors.Preempted as e:
    print(f"{e}; rerun the same command to resume (exit code {errors.PREEMPTED_EXIT_CODE})", file=sys.stderr)
    sys.exit(errors.PREEMPTED_EXIT_CODE)
  except errors.Error as e:
    if _VERBOSE.value:
      raise
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
