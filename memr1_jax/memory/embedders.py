"""Model-free text embedders with the `embed_fn` shape that `MemoryBank` takes.

The real sentence encoder lives in `memr1_jax.models.encoder`; these exist so that tests and tiny
demos run without one.
"""

from __future__ import annotations

from collections.abc import Sequence
import re
import zlib

import numpy as np

_WORD_RE = re.compile(r"\w+")


def hashed_features(text: str) -> list[str]:
  """The features `HashingEmbedder` counts: lower-cased word unigrams and adjacent-word bigrams."""
  words = _WORD_RE.findall(text.lower())
  return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class HashingEmbedder:
  """Deterministic bag-of-words embedder by signed feature hashing.

  Each feature (see `hashed_features`) adds +-1 to one of `dim` buckets; the bucket is
  crc32(feature) mod dim and the sign is the top bit of the same crc32. Rows are L2-normalised;
  a text with no word characters embeds to the zero vector (it scores 0 against everything).
  """

  def __init__(self, dim: int = 256):
    if dim < 1:
      raise ValueError(f"HashingEmbedder: dim must be >= 1, got {dim}")
    self.dim = dim

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Embeds `texts` (a sequence of strings, not a bare string) as float32 [N, dim] unit rows."""
    if isinstance(texts, str):
      raise TypeError("HashingEmbedder takes a sequence of strings, got a single str")
    out_nd = np.zeros((len(texts), self.dim), np.float32)
    for row, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"HashingEmbedder: texts[{row}] is {type(text).__name__}, not str")
      for feature in hashed_features(text):
        h = zlib.crc32(feature.encode("utf-8"))
        out_nd[row, h % self.dim] += 1.0 if h >> 31 else -1.0
    norms_n1 = np.linalg.norm(out_nd, axis=1, keepdims=True)
    return np.divide(out_nd, norms_n1, out=np.zeros_like(out_nd), where=norms_n1 > 0)
