"""Does a demo model pick the memory an answer is in, and read the answer out of it? docs/demo.md's reading probe.

On the answer prompts of held-out synthetic conversations (statements only, as the demo's answer agent sees them;
`demo.base.statement_answer_prompts`), two teacher-forced measurements per question kind (latest / before / when /
yes_no), each as the mean probability and the share above 0.5 (where greedy decoding surely writes it):
- reading: the heuristic answerer's reply is fed up to "**Answer:**", so the right memory is already named; the
  model's probability of the answer's first token;
- selecting: the model's probability that its first useful-memory line names (is written as the reply format
  writes, up to the end of the id) the memory the heuristic answerer names, and any memory that states the asked
  attribute of the person asked, beside that one's chance (a question whose heuristic answer names no memory is left
  out).
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
  """p(reply tokens start..end-1 | prompt, reply before them) of each (prompt ids, reply ids, start, end)."""
  score = jax.jit(lambda rows: logprobs.response_logprobs(
      model, rows["prompt_ids_bp"], rows["prompt_mask_bp"], rows["response_ids_bt"], rows["response_mask_bt"])[0])
  out = []
  for first in range(0, len(items), _ROWS):
    chunk = items[first:first + _ROWS]
    rows = sft.pack_examples([(p, r) for p, r, _, _ in chunk], rows=_ROWS, pad_id=tokenizer.pad_token_id,
                             min_prompt_bucket=256, min_response_bucket=64)
    logp_bt = np.asarray(score(rows))
    out += [float(np.exp(logp_bt[row, start:end].sum())) for row, (_, _, start, end) in enumerate(chunk)]
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
    at = len(tokenizer.encode(reply.split("**Answer:**")[0] + "**Answer:**"))
    kinds.append(read[0])
    items.append((tokenizer.encode_chat(prompt.messages), tokenizer.encode(reply) + eos, at, at + 1))
  out = collections.defaultdict(list)
  for kind, p in zip(kinds, _probabilities(model, tokenizer, items)):
    out[kind].append(p)
  return dict(out)


def selection_probabilities(model, tokenizer, prompts) -> dict[str, list[tuple[float, float, float]]]:
  """{question kind: [(p(the first useful-memory line names the heuristic's memory), p(it names any memory that
  states the asked attribute of the person asked), the second's chance: the share of the memories shown that state
  that attribute)]} over the `prompts` where the heuristic answerer names a memory. A line "names" a memory when it
  is written as the reply format writes that memory (`policies.used_line`) up to the end of its id: does the model
  pick the memory the answer is in, or at least one about the right thing?"""
  head = policies.answer_reply("", ["\0"]).split("\0")[0]
  start = len(tokenizer.encode(head))
  kinds, groups, items = [], [], []
  for prompt in prompts:
    blocks, question = policies.answer_view(prompt)
    read = policies.read_question(question)
    _, used = policies.heuristic_answer(prompt)
    if read is None or not used:
      continue
    same = policies.attribute_statements(blocks.get(read[2], []), read[1])
    same.sort(key=lambda statement: policies.used_line(statement) != used[0])  # The heuristic's first.
    if policies.used_line(same[0]) != used[0]:
      raise ValueError(f"the heuristic's line {used[0]!r} is not one of the asked attribute's statements")
    prompt_ids = tokenizer.encode_chat(prompt.messages)
    for statement in same:
      line = policies.used_line(statement)
      named = line[:line.index(f"[{statement[0]}") + len(f"[{statement[0]}")]
      reply, end = tokenizer.encode(head + line), len(tokenizer.encode(head + named))
      if reply[:end] != tokenizer.encode(head + named):
        raise ValueError(f"{named!r} does not end on a token boundary of {line!r} in this tokenizer")
      items.append((prompt_ids, reply, start, end))
    kinds.append(read[0])
    groups.append((len(same), len(same) / sum(len(memories) for memories in blocks.values())))
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
  print("\nSelecting: p(the first useful-memory line names the heuristic's memory / any memory of the asked "
        "attribute)\n"
        "(chance: the share of the memories shown that state the asked attribute, what a uniform pick of a line\n"
        "would give; where a line's text comes before its id, p also requires that text copied exactly)\n"
        "| question kind | questions | heuristic's: mean p | p > 0.5 | asked attribute: mean p | p > 0.5 | chance |\n"
        "|---|---|---|---|---|---|---|")
  for kind, pairs in sorted(selection_probabilities(model, tokenizer, prompts).items()):
    picked, same, chance = np.asarray(pairs).T
    print(f"| {kind} | {len(pairs)} | {picked.mean():.2f} | {np.mean(picked > 0.5):.0%} | {same.mean():.2f} | "
          f"{np.mean(same > 0.5):.0%} | {chance.mean():.2f} |")


if __name__ == "__main__":
  app.run(main)
