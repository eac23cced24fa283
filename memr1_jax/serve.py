r"""The memory service over HTTP: `python -m memr1_jax.serve --manager=DIR --answer=DIR --store=DIR [...]`.

  # The CPU demo's trained agents (after `python -m memr1_jax.main --config=configs/demo.py`):
  python -m memr1_jax.serve --config=configs/demo.py --extractor=task --store=mem_store \
      --manager=runs/demo/manager_grpo/hf --answer=runs/demo/answer_grpo/hf --port=8000

`--config` is the config file the agents were trained with (its memory, rollout and model sections are read; default:
the library defaults). The API key, when `--api_key_env` names an environment variable, is read from it once at
start and never logged. Routes: `memr1_jax/service/server.py`. SIGINT / SIGTERM finish the queued calls and snapshot
the banks; a kill -9 loses no acknowledged change (the write-ahead log, docs/service.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys


def parser() -> argparse.ArgumentParser:
  """The command line of `python -m memr1_jax.serve` (also used by memr1_jax.testing.service)."""
  p = argparse.ArgumentParser(prog="python -m memr1_jax.serve", description=__doc__.split("\n")[0])
  p.add_argument("--manager", required=True, help="Hugging Face checkpoint directory of the memory manager.")
  p.add_argument("--answer", required=True, help="Hugging Face checkpoint directory of the answer agent.")
  p.add_argument("--store", required=True, help="Directory of the users' banks (created when missing).")
  p.add_argument("--extractor", default="simple", help="simple | task | a checkpoint directory | an OpenAI-compatible "
                 "base URL (the frozen fact extractor).")
  p.add_argument("--config", default="", help="configs/*.py file the agents were trained with (default: defaults).")
  p.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
  p.add_argument("--port", type=int, default=8000, help="Port to listen on.")
  p.add_argument("--api_key_env", default="", help="Environment variable holding the API key ('' : no key).")
  p.add_argument("--max_body_bytes", type=int, default=1 << 20, help="Larger request bodies get 413.")
  p.add_argument("--batch_window_ms", type=float, default=5.0, help="How long a batch waits for more calls.")
  p.add_argument("--max_batch", type=int, default=64, help="Calls per batch at most (1: one at a time).")
  p.add_argument("--snapshot_every", type=int, default=32, help="Log records between snapshots of a user's bank.")
  return p


def load_config(path: str):
  """`get_config()` of the config file `path` ("" : `defaults.default_config()`)."""
  from memr1_jax import defaults  # pylint: disable=g-import-not-at-top
  if not path:
    return defaults.default_config()
  spec = importlib.util.spec_from_file_location("service_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def api_key(args) -> str | None:
  """The API key from the environment variable `args.api_key_env` (None when not set); exits when it is unset."""
  if not args.api_key_env:
    return None
  key = os.environ.get(args.api_key_env)
  if not key:
    sys.exit(f"error: --api_key_env={args.api_key_env}: that environment variable is not set")
  return key


def serve(memory, args) -> None:
  """Runs the app over `memory` with uvicorn on args.host / args.port until SIGINT / SIGTERM."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  from memr1_jax.service.server import make_app  # pylint: disable=g-import-not-at-top
  app = make_app(memory, api_key=api_key(args), max_body_bytes=args.max_body_bytes,
                 window_s=args.batch_window_ms / 1000, max_batch=args.max_batch)
  uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def main(argv=None) -> None:
  args = parser().parse_args(argv)
  for name in ("manager", "answer"):
    if not os.path.isdir(getattr(args, name)):
      sys.exit(f"error: --{name}={getattr(args, name)!r}: not a directory (a Hugging Face checkpoint)")
  api_key(args)  # Fails before the models load.
  from memr1_jax.service.api import Memory  # pylint: disable=g-import-not-at-top
  memory = Memory.load(manager=args.manager, answer=args.answer, store=args.store, extractor=args.extractor,
                       config=load_config(args.config), snapshot_every=args.snapshot_every)
  serve(memory, args)


if __name__ == "__main__":
  main()
