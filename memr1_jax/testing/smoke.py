"""Shipped config files as configs for tests: configs/smoke.py (the smallest end-to-end run) and others, with a
workdir and field overrides."""

from __future__ import annotations

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shipped_config(name: str, workdir, variant: str | None = None, **overrides):
  """configs/<name>.py's get_config(variant) (no argument when None) with `workdir` and dotted-key overrides
  ({"train.num_steps": 1}); returns it."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config() if variant is None else module.get_config(variant)
  c.workdir = str(workdir)
  c.update_from_flattened_dict(overrides)
  return c


def smoke_config(workdir, variant: str = "", **overrides):
  """configs/smoke.py's config (of `variant`: "" the synthetic task, "locomo" config.data) with `workdir` and
  dotted-key overrides; returns it."""
  return shipped_config("smoke", workdir, variant, **overrides)


# The LoCoMo fixture of the tests (two short conversations; conv-30 has 6 turns and 4 scored questions).
LOCOMO_FIXTURE = os.path.join(REPO, "tests", "fixtures", "locomo_small.json")


def locomo_fixture_config(workdir, **overrides):
  """The smoke model evaluating the LoCoMo fixture's validation conversation (conv-30) with ADD-all banks and replies
  of 3 tokens, with dotted-key `overrides`."""
  return smoke_config(workdir, "locomo", **{"data.path": LOCOMO_FIXTURE, "eval.split": "validation",
                                            "eval.manager_path": "add_all", "rollout.max_new_tokens": 3,
                                            "memory.answer_k_per_speaker": 2, **overrides})
