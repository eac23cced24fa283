"""Datasets as `Conversation` records: LoCoMo, LongMemEval and MSC readers, the paper's split, and
tensorflow-datasets builders (`load_conversations`, imported on first use since it pulls in tfds).
"""

from __future__ import annotations

from typing import Any

from memr1_jax.data.errors import DataFormatError
from memr1_jax.data.locomo import ADVERSARIAL_ANSWER
from memr1_jax.data.locomo import read_locomo
from memr1_jax.data.longmemeval import QUESTION_TYPE_CATEGORY
from memr1_jax.data.longmemeval import read_longmemeval
from memr1_jax.data.msc import read_msc
from memr1_jax.data.schema import CATEGORY_NAMES
from memr1_jax.data.schema import Conversation
from memr1_jax.data.schema import QA
from memr1_jax.data.schema import Session
from memr1_jax.data.schema import Turn
from memr1_jax.data.splits import locomo_split
from memr1_jax.data.splits import without_adversarial

_LAZY_TFDS_NAMES = ("load_conversations", "conversation_to_json", "conversation_from_json")


def __getattr__(name: str) -> Any:
  """Imports the tensorflow-datasets builders only when one of their names is used."""
  if name in _LAZY_TFDS_NAMES:
    from memr1_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
    return getattr(tfds_builders, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
