"""Experiences -> one fixed-shape `RolloutBatch` for the jitted update step.

Shapes are bucketed so a run compiles a bounded number of update programs: rows to a power-of-two number of
whole groups (padding groups have an all-zero response mask and contribute nothing), prompt and response lengths
to powers of two (with minimums).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from memr1_jax.episodes.runner import Experience
from memr1_jax.sampling.generation import bucket_size, length_bucket


def select_groups(experiences: Sequence[Experience], max_groups: int, rng: np.random.Generator
                  ) -> tuple[list[Experience], int]:
  """At most `max_groups` whole GRPO groups of `experiences` for one update, keeping the update's shape fixed.

  Groups whose rewards differ come first, in random order; groups with equal rewards (zero advantage: no policy
  gradient) fill the rest. So the update's rows stay near max_groups x group_size whatever the mix, and compute goes
  to the groups that carry a gradient.

  Returns:
    (the kept experiences in their original order, the number of groups whose rewards differ; those beyond
    `max_groups` are left out).
  """
  rewards = collections.defaultdict(set)
  for e in experiences:
    rewards[e.group].add(e.reward)
  informative = [g for g, r in rewards.items() if len(r) > 1]
  flat = [g for g, r in rewards.items() if len(r) == 1]
  rng.shuffle(informative)
  rng.shuffle(flat)
  kept = set((informative + flat)[:max_groups])
  return [e for e in experiences if e.group in kept], len(informative)


def pack_experiences(experiences: Sequence[Experience], *, pad_id: int, group_size: int, rows_multiple: int,
                     min_prompt_bucket: int = 64, prompt_bucket_multiple: int = 0, min_response_bucket: int = 16
                     ) -> dict[str, np.ndarray]:
  """Packs experiences into the numpy fields of `rl.update.RolloutBatch`.

  Rows are ordered group by group (prompt-major, as GRPO expects); each group must hold exactly `group_size`
  experiences of one prompt. The row count is rounded up to `rows_multiple` * a power of two with whole padding
  groups; prompt lengths to `generation.length_bucket(., min_prompt_bucket, prompt_bucket_multiple)`.

  Returns:
    dict with prompt_ids_bp, prompt_mask_bp, response_ids_bt, response_mask_bt, scores_b, old_logprobs_bt, and
    real_rows (int: rows before padding).
  """
  groups = collections.defaultdict(list)
  for e in experiences:
    if not e.sample.response_ids:
      raise ValueError(f"experience of group {e.group} has no response tokens (a scripted policy cannot be trained)")
    groups[e.group].append(e)
  for g, members in groups.items():
    if len(members) != group_size:
      raise ValueError(f"group {g} has {len(members)} experiences, expected group_size={group_size}")
    if any(e.sample.prompt_ids != members[0].sample.prompt_ids for e in members[1:]):
      raise ValueError(f"group {g}'s experiences answer different prompts: a GRPO group samples one prompt (the "
                       "update runs it once per group, rl.shared_prefix)")
  rows = [e for g in sorted(groups) for e in groups[g]]
  unit = int(np.lcm(rows_multiple, group_size))
  b = unit * bucket_size(-(-max(len(rows), 1) // unit), 1)
  p = length_bucket(max((len(e.sample.prompt_ids) for e in rows), default=1), min_prompt_bucket,
                    prompt_bucket_multiple)
  t = bucket_size(max((len(e.sample.response_ids) for e in rows), default=1), min_response_bucket)
  prompt_ids = np.full((b, p), pad_id, np.int32)
  prompt_mask = np.zeros((b, p), bool)
  response_ids = np.full((b, t), pad_id, np.int32)
  response_mask = np.zeros((b, t), bool)
  old_logprobs = np.zeros((b, t), np.float32)
  scores = np.zeros((b,), np.float32)
  prompt_mask[len(rows):, -1] = True  # Padding rows: one "token" so no attention row is empty.
  for i, e in enumerate(rows):
    s = e.sample
    prompt_ids[i, p - len(s.prompt_ids):] = s.prompt_ids
    prompt_mask[i, p - len(s.prompt_ids):] = True
    response_ids[i, :len(s.response_ids)] = s.response_ids
    response_mask[i, :len(s.response_ids)] = True
    old_logprobs[i, :len(s.logprobs)] = s.logprobs
    scores[i] = e.reward
  return dict(prompt_ids_bp=prompt_ids, prompt_mask_bp=prompt_mask, response_ids_bt=response_ids,
              response_mask_bt=response_mask, scores_b=scores, old_logprobs_bt=old_logprobs, real_rows=len(rows))


def batch_for_step(items: list, step: int, size: int, seed: int) -> list:
  """The `size` items of `step`: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
  out, pos = [], step * size
  while len(out) < size:
    epoch, offset = divmod(pos, len(items))
    order = np.random.default_rng([seed, epoch]).permutation(len(items))
    take = min(size - len(out), len(items) - offset)
    out.extend(items[i] for i in order[offset:offset + take])
    pos += take
  return out
