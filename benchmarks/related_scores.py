"""How well an embedding score separates the memories a manager turn may change from the others (the measurement
behind configs/demo.py's memory.related_min_score).

For every fact of the demo's training conversations (configs/demo.py's task knobs and encoder), the best score
(embedding inner product) among the earlier facts of the same conversation, split by whether one of them states the
same speaker's same attribute (the memory the turn may UPDATE / DELETE / repeat), and the share of each side at or
above --threshold. About 20 s on 2 CPU cores:
  python benchmarks/related_scores.py [--threshold=0.6]
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs import demo as demo_config  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax import components, tasks  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.demo import synthetic  # noqa: E402  pylint: disable=g-import-not-at-top

_THRESHOLD = flags.DEFINE_float("threshold", 0.6, "Score a shown memory must reach.")


def best_scores(conversations, embed) -> tuple[list[float], list[float]]:
  """(best earlier score of the facts that have an earlier fact of the same speaker and attribute, that of the
  others)."""
  same, other = [], []
  for conv in conversations:
    facts = [(t.speaker, synthetic.parse_statement(t.text.strip()), f"{t.speaker}: {t.text}")
             for _, t in conv.turns if synthetic.parse_statement(t.text.strip())]
    vectors = np.asarray(embed([text for _, _, text in facts]))
    for j in range(1, len(facts)):
      match = any(facts[i][0] == facts[j][0] and facts[i][1][0] == facts[j][1][0] for i in range(j))
      (same if match else other).append(float((vectors[:j] @ vectors[j]).max()))
  return same, other


def main(argv):
  del argv
  config = demo_config.get_config()
  conversations = tasks.load(config).splits()["train"]
  same, other = best_scores(conversations, components.make_embedder(config.memory.encoder))
  for name, scores in (("same speaker + attribute earlier", same), ("no such earlier fact", other)):
    q = np.percentile(scores, [5, 25, 50, 75, 95])
    share = np.mean(np.asarray(scores) >= _THRESHOLD.value)
    print(f"{name:34s} n={len(scores):4d}  p5/25/50/75/95 = {' / '.join(f'{x:.3f}' for x in q)}  "
          f">= {_THRESHOLD.value}: {share:.0%}")


if __name__ == "__main__":
  app.run(main)
