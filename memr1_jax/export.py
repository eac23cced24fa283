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
from memr1_jax.models.loading import export_pretrained


def run(config) -> str:
  """Entry point of mode=export; returns the directory written (config.export.path)."""
  path = config.export.path
  if not path:
    raise components.ConfigError("config.export.path: empty; set the directory to write the Hugging Face model to")
  no_checkpoint = components.ConfigError(f"config.workdir={config.workdir!r}: no checkpoint under its checkpoints/ "
                                         "directory to export (train first, or point config.workdir at a run)")
  if not os.path.isdir(os.path.join(config.workdir, "checkpoints")):  # Before any model loads.
    raise no_checkpoint
  mesh = components.setup_mesh(config)
  model, _, step = components.load_trained_policy(config, mesh, "latest")
  if step is None:
    raise no_checkpoint
  export_pretrained(model, path, tokenizer_dir=components.tokenizer_dir(config))
  print(f"exported step {step} of {config.workdir} to {path}", flush=True)
  return path
