"""The Memory-R1 paper's LoCoMo split.

Category 5 (adversarial) questions are left out; conversation conv-26 is the training set
(152 questions), conv-30 the validation set (81) and the other eight conversations the test set
(1307), 1540 questions in all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from memr1_jax.data import schema

LOCOMO_TRAIN_IDS = ("conv-26",)
LOCOMO_VALIDATION_IDS = ("conv-30",)
ADVERSARIAL_CATEGORY = 5
SPLITS = ("train", "validation", "test")


def locomo_split(conversations: Sequence[schema.Conversation], split: str,
                 include_adversarial: bool = False) -> list[schema.Conversation]:
  """Returns the conversations of `split` ("train" | "validation" | "test"), in input order.

  Each returned conversation keeps all its sessions; its questions lose category 5 unless
  `include_adversarial`. The test split is every conversation that is neither train nor
  validation.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown LoCoMo split {split!r}; expected one of {SPLITS}")
  held_out = LOCOMO_TRAIN_IDS + LOCOMO_VALIDATION_IDS
  if split == "train":
    chosen = [c for c in conversations if c.sample_id in LOCOMO_TRAIN_IDS]
  elif split == "validation":
    chosen = [c for c in conversations if c.sample_id in LOCOMO_VALIDATION_IDS]
  else:
    chosen = [c for c in conversations if c.sample_id not in held_out]
  if include_adversarial:
    return chosen
  return [without_adversarial(c) for c in chosen]


def without_adversarial(conversation: schema.Conversation) -> schema.Conversation:
  """Returns `conversation` with its category 5 (adversarial) questions removed."""
  qa = tuple(q for q in conversation.qa if q.category != ADVERSARIAL_CATEGORY)
  return dataclasses.replace(conversation, qa=qa)
