"""Fault injection for reliability tests: `MEMR1_FAULT="<kind>@<step>,..."` makes a training run misbehave on purpose.

Kinds (steps count from 0, as the training loop's `step`; a checkpoint is named by the next step):
  nan_reward@S   the rewards of step S's batch are NaN, so its loss and gradients are NaN (the update is skipped).
  inf_reward@S   the same with +inf rewards.
  sigterm@S      the run sends itself SIGTERM at the end of step S (as a preemption arriving during the step would).
  slow_commit@S  the commit of checkpoint S waits `SLOW_COMMIT_S` seconds after all its files are written and
                 before orbax renames its temporary directory into place: a window in which to kill the run.

Unset or empty: no faults (the training loop then does nothing extra). Used by tests/test_reliability.py and
tests/test_sft.py; see docs/reliability.md.
"""

from __future__ import annotations

import logging
import os
import signal

import numpy as np

ENV_VAR = "MEMR1_FAULT"
KINDS = ("nan_reward", "inf_reward", "sigterm", "slow_commit")
SLOW_COMMIT_S = 120.0

logger = logging.getLogger(__name__)


def parse(spec: str) -> dict[str, frozenset[int]]:
  """`"nan_reward@1,nan_reward@2"` -> {"nan_reward": {1, 2}}; ValueError naming ENV_VAR for anything else."""
  plan: dict[str, set[int]] = {}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    kind, _, step = item.partition("@")
    if kind not in KINDS or not step.isdigit():
      raise ValueError(f"{ENV_VAR}={spec!r}: item {item!r} is not <kind>@<step> with kind in {KINDS}")
    plan.setdefault(kind, set()).add(int(step))
  return {kind: frozenset(steps) for kind, steps in plan.items()}


def from_env() -> dict[str, frozenset[int]]:
  """The fault plan of the environment ({} when MEMR1_FAULT is unset); installs the slow_commit hook if asked."""
  plan = parse(os.environ.get(ENV_VAR, ""))
  if plan:
    logger.warning("%s: injecting faults %s", ENV_VAR, {k: sorted(v) for k, v in plan.items()})
  if "slow_commit" in plan:
    _install_slow_commit(plan["slow_commit"])
  return plan


def corrupt_rewards(plan: dict[str, frozenset[int]], step: int, packed: dict) -> None:
  """Overwrites packed["scores_b"] with NaN / inf when the plan says so for `step` (in place)."""
  for kind, value in (("nan_reward", np.nan), ("inf_reward", np.inf)):
    if step in plan.get(kind, ()):
      logger.warning("%s: %s at step %d", ENV_VAR, kind, step)
      packed["scores_b"] = np.full_like(np.asarray(packed["scores_b"], np.float32), value)


def send_signal(plan: dict[str, frozenset[int]], step: int) -> None:
  """Sends this process SIGTERM when the plan says so for `step` (its handler runs before this returns)."""
  if step in plan.get("sigterm", ()):
    logger.warning("%s: sigterm at step %d", ENV_VAR, step)
    signal.raise_signal(signal.SIGTERM)


def _install_slow_commit(steps: frozenset[int]) -> None:
  """Wraps orbax's atomic-rename commit so that the commit of a checkpoint in `steps` sleeps first."""
  import asyncio  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  commit = atomicity.AtomicRenameTemporaryPath.finalize

  async def slow_finalize(self):
    final = self.get_final()
    if final.name.isdigit() and int(final.name) in steps:
      logger.warning("%s: checkpoint %s written to %s; sleeping %.0f s before the commit", ENV_VAR, final.name,
                     self.get(), SLOW_COMMIT_S)
      await asyncio.sleep(SLOW_COMMIT_S)
    return await commit(self)

  atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
