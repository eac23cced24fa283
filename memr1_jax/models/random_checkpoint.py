r"""A random-init decoder written as a Hugging Face checkpoint directory (rehearsals: real shapes, no download).

  python -m memr1_jax.models.random_checkpoint --preset=tiny --tokenizer=<dir> --out=<dir> [--seed=1]
  python -m memr1_jax.models.random_checkpoint --config=configs/locomo_rehearsal.py   # its memory.extractor

The decoder of `--preset` (its vocabulary widened to the tokenizer's) gets random weights from `--seed` and is written
with the tokenizer's files by `loading.export_pretrained` (atomically). A directory that already holds a checkpoint
(config.json) is kept as it is, so a script may call this before every run; delete it to draw new weights.
"""

from __future__ import annotations

import os


def write_random_checkpoint(out: str, *, preset: str, tokenizer_dir: str, seed: int = 0) -> bool:
  """Writes a random-init `preset` decoder over `tokenizer_dir`'s vocabulary to `out` (a HF checkpoint directory).

  Returns True when written, False when `out` already holds a checkpoint (kept). Raises KeyError for an unknown preset
  and `loading.ExportError` when `out` holds anything but a checkpoint.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from memr1_jax.models import config as model_config  # pylint: disable=g-import-not-at-top
  from memr1_jax.models import loading  # pylint: disable=g-import-not-at-top
  from memr1_jax.models.decoder import Decoder  # pylint: disable=g-import-not-at-top
  from memr1_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

  if os.path.isfile(os.path.join(out, "config.json")):
    return False
  tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
  cfg = model_config.get_preset(preset, dtype="float32", param_dtype="float32")
  cfg = cfg.replace(vocab_size=max(cfg.vocab_size, tokenizer.vocab_size), eos_token_ids=tokenizer.eos_token_ids,
                    pad_token_id=tokenizer.pad_token_id)
  model = nnx.merge(*jax.jit(lambda: nnx.split(Decoder(cfg, rngs=nnx.Rngs(seed))))())
  loading.export_pretrained(model, out, tokenizer_dir=tokenizer_dir)
  return True


def _config_defaults(path: str) -> dict:
  """What a config file implies: its model.preset over its model.tokenizer, written to its memory.extractor (seeded
  apart from the policy: config.seed + 1)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("config_module", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  return {"preset": c.model.preset, "tokenizer": c.model.tokenizer, "out": c.memory.extractor, "seed": c.seed + 1}


def main(argv=None) -> None:
  """The command line above: writes (or keeps) the checkpoint and prints one line saying which."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", help="a config file: the defaults of the other flags come from it")
  parser.add_argument("--preset", help="models.config preset (its shape; weights are random); default tiny")
  parser.add_argument("--tokenizer", help="tokenizer directory (its files are copied along)")
  parser.add_argument("--out", help="checkpoint directory to write")
  parser.add_argument("--seed", type=int, help="seed of the random weights; default 0")
  args = parser.parse_args(argv)
  given = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
  values = {"preset": "tiny", "seed": 0, **(_config_defaults(args.config) if args.config else {}), **given}
  for name in ("tokenizer", "out"):
    if not values.get(name):
      parser.error(f"--{name} is needed (or a --config that sets it)")
  written = write_random_checkpoint(values["out"], preset=values["preset"], tokenizer_dir=values["tokenizer"],
                                    seed=values["seed"])
  print(f"{'wrote' if written else 'kept'} {values['out']}: random {values['preset']} over {values['tokenizer']}",
        flush=True)


if __name__ == "__main__":
  main()
