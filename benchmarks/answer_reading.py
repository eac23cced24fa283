"""Does a demo model pick the memory an answer is in, and read the answer out of it? docs/demo.md's reading probe.

On the answer prompts of held-out synthetic conversations (statements only, as the demo's answer agent sees them;
`demo.base.statement_answer_prompts`), two teacher-forced measurements per question kind (latest / before / when /
yes_no), each as the mean probability and the share above 0.5 (where greedy decoding surely writes it):
- reading: the heuristic answerer's reply is fed up to "**Answer:**", so the right memory is already named; the
  model's probability of the answer's first token;
- selecting: the reply is fed up to the first memory id ("Useful memories:\n["); the model's probability of the id
  the heuristic answerer names, and of the id of any memory that states the asked attribute of the person asked
  (a question whose heuristic answer names no memory is left out).
About 30 s on 2 CPU cores:
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


def _probabilities(model, tokenizer, items) -> list[float]:
  """p(reply token at `at` | prompt, reply before it) of each (prompt ids, reply ids, at) of `items`."""
  score = jax.jit(lambda rows: logprobs.response_logprobs(
      model, rows["prompt_ids_bp"], rows["prompt_mask_bp"], rows["response_ids_bt"], rows["response_mask_bt"])[0])
  out = []
  for start in range(0, len(items), _ROWS):
    chunk = items[start:start + _ROWS]
    rows = sft.pack_examples([(p, r) for p, r, _ in chunk], rows=_ROWS, pad_id=tokenizer.pad_token_id,
                             min_prompt_bucket=256, min_response_bucket=32)
    logp_bt = np.asarray(score(rows))
    out += [float(np.exp(logp_bt[row, at])) for row, (_, _, at) in enumerate(chunk)]
  return out


def answer_probabilities(model, tokenizer, prompts) -> dict[str, list[float]]:
  """{question kind: [p(first answer token | prompt, heuristic reply up to "**Answer:**")]} over `prompts`."""
  eos = list(tokenizer.eos_token_ids[:1])
  kinds, items = [], []
  for prompt in prompts:
    read = policies.read_question(policies.answer_view(prompt)[1])
    if read is None:
      continue
    reply = policies.heuristic_answer_reply(prompt)
    head = reply.split("**Answer:**")[0] + "**Answer:**"
    kinds.append(read[0])
    items.append((tokenizer.encode_chat(prompt.messages), tokenizer.encode(reply) + eos, len(tokenizer.encode(head))))
  out = collections.defaultdict(list)
  for kind, p in zip(kinds, _probabilities(model, tokenizer, items)):
    out[kind].append(p)
  return dict(out)


def selection_probabilities(model, tokenizer, prompts) -> dict[str, list[tuple[float, float, float]]]:
  """{question kind: [(p(the heuristic's memory id), p(the id of any memory stating the asked attribute of the
  person asked)) as the first token after "Useful memories:\n[", and the second's chance: the share of the memories
  shown that state that attribute]} over the `prompts` where the heuristic answerer names a memory: does the model
  pick the memory the answer is in, or at least one about the right thing?"""
  head = "Useful memories:\n["
  at = len(tokenizer.encode(head))
  kinds, groups, items = [], [], []
  for prompt in prompts:
    read = policies.read_question(policies.answer_view(prompt)[1])
    _, used = policies.heuristic_answer(prompt)
    if read is None or not used:
      continue
    blocks, _ = policies.answer_view(prompt)
    picked = int(used[0].strip("[]"))
    same = [memory_id for memory_id, *_ in policies.attribute_statements(blocks.get(read[2], []), read[1])]
    ids = [picked] + [i for i in same if i != picked]
    prompt_ids = tokenizer.encode_chat(prompt.messages)
    for memory_id in ids:
      reply = tokenizer.encode(f"{head}{memory_id}]")
      if tokenizer.encode(f"{head}{memory_id}")[at:] != reply[at:at + 1]:
        raise ValueError(f"memory id {memory_id} is not one token after {head!r} in this tokenizer")
      items.append((prompt_ids, reply, at))
    kinds.append(read[0])
    groups.append((len(ids), len(ids) / sum(len(memories) for memories in blocks.values())))
  probs = iter(_probabilities(model, tokenizer, items))
  out = collections.defaultdict(list)
  for kind, (n, chance) in zip(kinds, groups):
    p = [next(probs) for _ in range(n)]
    out[kind].append((p[0], sum(p), chance))
  return dict(out)


def main(argv):
  del argv
  model, _ = load_pretrained(_MODEL.value)
  tokenizer = Tokenizer.from_pretrained(_MODEL.value)
  prompts = base.statement_answer_prompts(_CONVERSATIONS.value, _SEED.value,
                                          runner.RunnerConfig(related_k=2, answer_k_per_speaker=3))
  print(f"{_MODEL.value}: {_CONVERSATIONS.value} conversations of seed {_SEED.value}")
  print("\nReading: p(answer token | the right memory named)\n| question kind | questions | mean p | p > 0.5 |\n"
        "|---|---|---|---|")
  for kind, probs in sorted(answer_probabilities(model, tokenizer, prompts).items()):
    print(f"| {kind} | {len(probs)} | {np.mean(probs):.2f} | {np.mean(np.asarray(probs) > 0.5):.0%} |")
  print("\nSelecting: p(first memory id named) of the heuristic's memory, and of any memory of the asked attribute\n"
        "(chance: the share of the memories shown that state the asked attribute)\n"
        "| question kind | questions | heuristic's: mean p | p > 0.5 | asked attribute: mean p | p > 0.5 | chance |\n"
        "|---|---|---|---|---|---|---|")
  for kind, pairs in sorted(selection_probabilities(model, tokenizer, prompts).items()):
    picked, same, chance = np.asarray(pairs).T
    print(f"| {kind} | {len(pairs)} | {picked.mean():.2f} | {np.mean(picked > 0.5):.0%} | {same.mean():.2f} | "
          f"{np.mean(same > 0.5):.0%} | {chance.mean():.2f} |")


if __name__ == "__main__":
  app.run(main)
