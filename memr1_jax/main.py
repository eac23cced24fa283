r"""Entry point: `python -m memr1_jax.main --config=configs/<name>.py [--config.field=value ...]`.

Modes (config.mode): train (RL of the manager or answer agent with GRPO / PPO), sft (supervised warm start),
eval (per-category LoCoMo report), export (Hugging Face safetensors directory).
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from memr1_jax import defaults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file.", lock_config=True)
flags.mark_flags_as_required(["config"])

# mode -> module with a `run(config)` function; modules are imported only when their mode is chosen.
MODE_MODULES = {
    "train": "memr1_jax.train",
    "sft": "memr1_jax.sft",
    "eval": "memr1_jax.evaluate",
    "export": "memr1_jax.export",
}


class ConfigError(ValueError):
  """A config field holds a value the program does not accept."""


def validate_config(config, source: str = "config") -> None:
  """Checks enumerated fields before any expensive work; raises ConfigError naming the file and field."""
  for field, allowed in (("mode", defaults.MODES), ("agent", defaults.AGENTS), ("algorithm", defaults.ALGORITHMS)):
    if config[field] not in allowed:
      raise ConfigError(f"{source}: config.{field}={config[field]!r} is not one of {allowed}")
  if not config.model.path and not config.model.preset:
    raise ConfigError(f"{source}: set config.model.path (a Hugging Face checkpoint directory) or config.model.preset")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  source = flags.FLAGS["config"].config_filename
  validate_config(config, source)
  logging.info("Resolved config from %s:\n%s", source, config)
  print(f"# config: {source}\n{config}", flush=True)
  try:
    module = importlib.import_module(MODE_MODULES[config.mode])
  except ModuleNotFoundError as e:
    if e.name != MODE_MODULES[config.mode]:
      raise
    sys.exit(f"mode {config.mode!r} is not implemented yet in this version; modes: {', '.join(MODE_MODULES)}")
  module.run(config)


if __name__ == "__main__":
  app.run(main)
