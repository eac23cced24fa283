r"""mode=export: the trained policy as a Hugging Face checkpoint directory (config.json, safetensors, tokenizer).

  python -m memr1_jax.main --config=configs/grpo_qwen7b.py --config.mode=export \
      --config.workdir=runs/grpo_qwen7b --config.export.path=exports/memory-r1-qwen7b

Reads the latest checkpoint of <workdir>/checkpoints (only the policy's trained arrays), merges LoRA adapters into
the weights, and writes the model in config.model.param_dtype with the tokenizer files of config.model alongside;
`transformers.AutoModelForCausalLM.from_pretrained(path)` and `load_pretrained` both read it. All processes of a
multi-host run call it; process 0 writes.
"""

from __future__ import annotations

import os

from memr1_jax import components
from memr1_jax.errors import ConfigError
from memr1_jax.models.loading import ExportError, check_export_target, export_pretrained


def _within(path: str, directory: str) -> bool:
  """Whether `path` is `directory` or lies inside it (both already resolved by os.path.realpath)."""
  return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_export_path(config) -> None:
  """Raises ConfigError when config.export.path would overwrite the run or the model it reads (before any load).

  Refused: the workdir, a path inside it or containing it; config.model.path or the tokenizer directory, a path
  inside one of them or containing one; an existing target that export_pretrained would refuse (ExportError).
  """
  path = config.export.path
  if not path:
    raise ConfigError("config.export.path: empty; set the directory to write the Hugging Face model to")
  target = os.path.realpath(path)
  workdir = os.path.realpath(config.workdir)
  if _within(target, workdir):
    raise ConfigError(f"config.export.path={path!r}: is or lies inside config.workdir={config.workdir!r} "
                                 "(its checkpoints and logs); export to a directory outside the run")
  if _within(workdir, target):
    raise ConfigError(f"config.export.path={path!r}: contains config.workdir={config.workdir!r} (the run "
                                 "being exported); export to a directory outside it")
  for field, source in (("config.model.path", config.model.path), ("config.model.tokenizer",
                                                                    components.tokenizer_dir(config))):
    if source and (_within(target, os.path.realpath(source)) or _within(os.path.realpath(source), target)):
      raise ConfigError(f"config.export.path={path!r}: is, lies inside or contains {field}={source!r} "
                                   "(what the export reads); export to a separate directory")
  overwrite = config.export.get("overwrite", False)
  try:
    check_export_target(path, overwrite)
  except ExportError as e:
    raise ConfigError(f"config.export.path={path!r}: {e} (config.export.overwrite={overwrite})") from e


def run(config) -> str:
  """Entry point of mode=export; returns the directory written (config.export.path)."""
  check_export_path(config)
  path = config.export.path
  no_checkpoint = ConfigError(f"config.workdir={config.workdir!r}: no checkpoint under its checkpoints/ "
                                         "directory to export (train first, or point config.workdir at a run)")
  if not os.path.isdir(os.path.join(config.workdir, "checkpoints")):  # Before any model loads.
    raise no_checkpoint
  mesh = components.setup_mesh(config)
  model, _, step = components.load_trained_policy(config, mesh, "latest")
  if step is None:
    raise no_checkpoint
  export_pretrained(model, path, tokenizer_dir=components.tokenizer_dir(config),
                    overwrite=config.export.get("overwrite", False))
  print(f"exported step {step} of {config.workdir} to {path}", flush=True)
  return path
