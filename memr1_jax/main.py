r"""Entry point: `python -m memr1_jax.main --config=configs/<name>.py [--config.field=value ...]`.

Modes (config.mode): train (RL of the manager or answer agent with GRPO / PPO), sft (supervised warm start),
eval (per-category LoCoMo report), export (Hugging Face safetensors directory).
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

from memr1_jax import console, defaults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file.", lock_config=True)
flags.mark_flags_as_required(["config"])
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO records (orbax, absl, jax, transformers).")

# mode -> module with a `run(config)` function; modules are imported only when their mode is chosen.
MODE_MODULES = {
    "train": "memr1_jax.train",
    "sft": "memr1_jax.sft",
    "eval": "memr1_jax.evaluate",
    "export": "memr1_jax.export",
    "demo": "memr1_jax.demo",
}


# Fields with a closed set of values (tests/test_reliability.py checks these against the modules that use them).
_DTYPES = ("float32", "bfloat16", "float16")
ENUM_FIELDS = {
    "mode": defaults.MODES, "agent": defaults.AGENTS, "algorithm": defaults.ALGORITHMS,
    "data.name": ("locomo", "longmemeval", "msc", "synthetic"),
    "memory.index": ("scann", "brute_force"), "memory.extraction": ("simple", "statements", "llm"),
    "demo.explore_with": ("informed", "blind"),
    "eval.checkpoint": ("latest", "best", "none"),
    "rl.kl_estimator": ("k1", "k2", "k3"), "rl.manager_reward_questions": ("turn", "answerable"),
    "rl.loss_aggregation": ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"),
    "model.dtype": _DTYPES, "model.param_dtype": _DTYPES, "model.attention_impl": ("", "xla", "cudnn"),
}
_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")


class ConfigError(ValueError):
  """A config field holds a value the program does not accept."""


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
  """The judge API key travels only through the environment: no field may hold it (its value is never echoed)."""
  key_env = fields.get("eval.judge_api_key_env", "")
  if key_env and not _ENV_NAME_RE.fullmatch(key_env):
    raise ConfigError(f"{source}: config.eval.judge_api_key_env must be the NAME of an environment variable "
                      "(like OPENAI_API_KEY), not the key itself (value not shown)")
  key = os.environ.get(key_env, "") if key_env else ""
  for name, value in fields.items():
    if key and isinstance(value, str) and key in value:
      raise ConfigError(f"{source}: config.{name} holds the value of ${key_env}; pass the API key only through "
                        "the environment (value not shown)")


def validate_config(config, source: str = "config") -> None:
  """Checks field names and enumerated values before any expensive work; raises ConfigError naming file and field.

  Unknown fields (not in defaults.default_config()), values outside ENUM_FIELDS, and an API key
  pasted into the config are errors.
  """
  fields = _field_values(config)
  _check_no_secret(fields, source)
  known = set(_field_values(defaults.default_config()))
  for name in fields:
    if name not in known:
      close = difflib.get_close_matches(name, known, n=1)
      raise ConfigError(f"{source}: config.{name} is not a known field" +
                        (f" (did you mean config.{close[0]}?)" if close else ""))
  for name, allowed in ENUM_FIELDS.items():
    if fields[name] not in allowed:
      raise ConfigError(f"{source}: config.{name}={fields[name]!r} is not one of {allowed}")
  if config.memory.extraction == "statements" and config.data.name != "synthetic":
    raise ConfigError(f"{source}: config.memory.extraction='statements' reads the synthetic task's statements; "
                      f"config.data.name={config.data.name!r} needs 'simple' or 'llm'")
  if not config.model.path and not config.model.preset:
    raise ConfigError(f"{source}: set config.model.path (a Hugging Face checkpoint directory) or config.model.preset")


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
  """absl's flag parsing; an override of a field the config file lacks exits naming the file and the field."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):  # ml_collections' own error names neither the file nor the full field.
    message = unknown_override(argv)
    if message is None:
      raise
    sys.exit(f"error: {message}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  source = flags.FLAGS["config"].config_filename
  try:
    validate_config(config, source)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  console.setup(_VERBOSE.value)
  saved = defaults.save(config, os.path.join(config.workdir, "config.json"))
  print(f"{config.mode}: {source}, resolved config in {saved}", flush=True)
  try:
    module = importlib.import_module(MODE_MODULES[config.mode])
  except ModuleNotFoundError as e:
    if e.name != MODE_MODULES[config.mode]:
      raise
    sys.exit(f"mode {config.mode!r} is not implemented yet in this version; modes: {', '.join(MODE_MODULES)}")
  from memr1_jax import components  # pylint: disable=g-import-not-at-top
  components.configure_jax(config)
  module.run(config)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
