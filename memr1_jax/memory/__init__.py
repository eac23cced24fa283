"""The memory store of Memory-R1: a per-conversation bank of memories over vector indexes.

Public API (from the modules `bank`, `index`, `embedders`, `operations`):
  MemoryBank, MemoryEntry, OpResult, apply_to_banks, search_banks   (bank)
  ExactIndex, ScannIndex, ScannConfig           (index; ScaNN itself is imported on first use)
  HashingEmbedder                                                    (embedders)
  MemoryOp, OpKind, NOOP                                             (operations)
"""

from memr1_jax.memory.bank import MemoryBank, MemoryEntry, OpResult, apply_to_banks, search_banks
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.memory.index import ExactIndex, ScannConfig, ScannIndex
from memr1_jax.memory.operations import NOOP, MemoryOp, OpKind

__all__ = [
    "NOOP", "ExactIndex", "HashingEmbedder", "MemoryBank", "MemoryEntry", "MemoryOp", "OpKind",
    "OpResult", "ScannConfig", "ScannIndex", "apply_to_banks", "search_banks",
]
