"""Does a demo model read the answer out of the memory it names? The measurement behind docs/demo.md's reading probe.

On the answer prompts of held-out synthetic conversations (statements only, as the demo's answer agent sees them;
`demo.base.statement_answer_prompts`), the heuristic answerer's reply is fed up to "**Answer:**", so the right
memory is already named, and the model's probability of the answer's first token is read. Per question kind
(latest / before / when / yes_no): the mean probability and the share above 0.5 (where greedy decoding surely
writes it). About 30 s on 2 CPU cores:
  python benchmarks/answer_reading.py [--model=runs/demo/sft/hf]
"""

from __future__ import annotations

import collections
import os
import sys

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from memr1_jax import sft  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.demo import base, policies  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.episodes import runner  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.models.loading import load_pretrained  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.models.tokenizer import Tokenizer  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.rl import logprobs  # noqa: E402  pylint: disable=g-import-not-at-top

_MODEL = flags.DEFINE_string("model", base.DEMO_BASE_DIR, "HF directory of the model (default: the shipped base).")
_CONVERSATIONS = flags.DEFINE_integer("conversations", 80, "Held-out synthetic conversations.")
_SEED = flags.DEFINE_integer("seed", 2000, "Their seed (the base's pretraining text uses 1000-1002, the demo 0-4).")
_ROWS = 32


def answer_probabilities(model, tokenizer, prompts) -> dict[str, list[float]]:
  """{question kind: [p(first answer token | prompt, heuristic reply up to "**Answer:**")]} over `prompts`."""
  eos = list(tokenizer.eos_token_ids[:1])
  items = []
  for prompt in prompts:
    read = policies.read_question(policies.answer_view(prompt)[1])
    if read is None:
      continue
    reply = policies.heuristic_answer_reply(prompt)
    head = reply.split("**Answer:**")[0] + "**Answer:**"
    items.append((read[0], tokenizer.encode_chat(prompt.messages), tokenizer.encode(reply) + eos,
                  len(tokenizer.encode(head))))
  score = jax.jit(lambda rows: logprobs.response_logprobs(
      model, rows["prompt_ids_bp"], rows["prompt_mask_bp"], rows["response_ids_bt"], rows["response_mask_bt"])[0])
  out = collections.defaultdict(list)
  for start in range(0, len(items), _ROWS):
    chunk = items[start:start + _ROWS]
    rows = sft.pack_examples([(p, r) for _, p, r, _ in chunk], rows=_ROWS, pad_id=tokenizer.pad_token_id,
                             min_prompt_bucket=256, min_response_bucket=32)
    logp_bt = np.asarray(score(rows))
    for row, (kind, _, _, answer_at) in enumerate(chunk):
      out[kind].append(float(np.exp(logp_bt[row, answer_at])))
  return dict(out)


def main(argv):
  del argv
  model, _ = load_pretrained(_MODEL.value)
  tokenizer = Tokenizer.from_pretrained(_MODEL.value)
  prompts = base.statement_answer_prompts(_CONVERSATIONS.value, _SEED.value,
                                          runner.RunnerConfig(related_k=2, answer_k_per_speaker=3))
  print(f"{_MODEL.value}: p(answer token | the right memory named), {_CONVERSATIONS.value} conversations of seed "
        f"{_SEED.value}")
  print("| question kind | questions | mean p | p > 0.5 |\n|---|---|---|---|")
  for kind, probs in sorted(answer_probabilities(model, tokenizer, prompts).items()):
    print(f"| {kind} | {len(probs)} | {np.mean(probs):.2f} | {np.mean(np.asarray(probs) > 0.5):.0%} |")


if __name__ == "__main__":
  app.run(main)
