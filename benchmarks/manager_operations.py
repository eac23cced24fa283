"""What each memory operation is worth on the demo task, and how a trained manager's replies differ from the right ones
(the measurements behind configs/demo.py's restate_prob and README's "Still weak").

Without --model: held-out EM of the scripted informed manager (`demo.policies.informed_manager_reply`) with one
operation swapped for another (UPDATE instead of DELETE, ADD instead of NOOP, ...), answered by the heuristic
answerer over configs/demo.py's held-out conversations; seconds on 2 CPU cores.
With --model=<HF dir> (e.g. runs/demo/sft/hf, the demo's SFT start): that model's greedy manager replies on the same
turns, counted by the operation the turn needs and how the reply differs from the informed manager's, with examples;
about a minute on 2 CPU cores.
  python benchmarks/manager_operations.py [--restate_prob=0.1] [--seed=0] [--model=runs/demo/sft/hf]
"""

from __future__ import annotations

import collections
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs import demo as demo_config  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax import components, tasks, train  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.agents import parsers  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.demo import pipeline, policies  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.episodes import runner  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.episodes.policy import ScriptedPolicy  # noqa: E402  pylint: disable=g-import-not-at-top

_RESTATE = flags.DEFINE_float("restate_prob", None, "demo.task.restate_prob (default: configs/demo.py's).")
_SEED = flags.DEFINE_integer("seed", 0, "config.seed: the task draw.")
_MODEL = flags.DEFINE_string("model", "", "An HF model directory whose greedy manager replies to categorise.")

# (name, {operation the informed manager writes: the one written instead}).
SWAPS = (("as is", {}), ("UPDATE instead of DELETE", {"DELETE": "UPDATE"}),
         ("UPDATE instead of NOOP", {"NOOP": "UPDATE"}), ("ADD instead of NOOP", {"NOOP": "ADD"}),
         ("ADD instead of DELETE", {"DELETE": "ADD"}), ("ADD instead of UPDATE", {"UPDATE": "ADD"}),
         ("ADD only", {"DELETE": "ADD", "UPDATE": "ADD", "NOOP": "ADD"}))


def swapped_reply(swap: dict):
  """The informed manager's reply with its operations' kinds replaced by `swap`, on the first fact and the first
  memory shown."""
  def reply(prompt):
    facts, related = policies.manager_view(prompt)
    made = {"ADD": lambda: {"op": "ADD", "text": facts[0]},
            "UPDATE": lambda: {"op": "UPDATE", "id": related[0][0], "text": facts[0]},
            "DELETE": lambda: {"op": "DELETE", "id": related[0][0]},
            "NOOP": lambda: {"op": "NOOP"}}
    ops = json.loads(policies.informed_manager_reply(prompt))["operations"]
    return policies.ops_reply([made[swap[op["op"]]]() if op["op"] in swap else op for op in ops])
  return reply


def reply_kind(reply: str, right: list, shown_ids) -> str:
  """How a manager reply, as the runner reads it (`parsers.parse_manager_output`: the first JSON object; text after it
  is ignored), differs from the right operations `right`; `shown_ids`: the positions the prompt showed."""
  parsed = parsers.parse_manager_output(reply, shown_ids)
  if parsed.format_error is not None and parsed.ops == [parsers.NOOP]:
    return "malformed"
  ops = [{"op": op.kind.value, **({"id": op.memory_id} if op.memory_id is not None else {}),
          **({"text": op.text} if op.text else {})} for op in parsed.ops]
  if ops == right:
    return "exact"
  if [op.get("op") for op in ops] == [op["op"] for op in right]:
    return "same operation, other id / text"
  return "wrote " + "+".join(str(op.get("op")) for op in ops)


def main(argv):
  del argv
  config = demo_config.get_config()
  config.seed = _SEED.value
  if _RESTATE.value is not None:
    config.demo.task.restate_prob = _RESTATE.value
  components.configure_jax(config)
  convs = tasks.load(config).splits()[config.data.eval_split]
  factory = components.bank_factory(config)
  rcfg = components.runner_config(config)
  if not _MODEL.value:
    answerer = ScriptedPolicy(policies.heuristic_answer_reply)
    for name, swap in SWAPS:
      banks, stats = runner.greedy_banks(convs, ScriptedPolicy(swapped_reply(swap)), factory, rcfg)
      em = runner.heldout_eval(convs, answerer, banks, rcfg)["eval/em"]
      print(f"{name:26s} held-out EM {em:.3f}  operations {dict(sorted(stats.ops.items()))}")
    return
  trainer = train.Trainer(pipeline.rl_config(config, "manager", _MODEL.value, os.path.join("runs", "manager_operations")))
  replies = []
  generate = trainer.rollout.generate

  def recording(prompts, **kwargs):
    out = generate(prompts, **kwargs)
    replies.extend((prompt, samples[0].text) for prompt, samples in zip(prompts, out))
    return out

  trainer.rollout.generate = recording
  scores = trainer.evaluate(config.data.eval_split)
  print(f"held-out EM {scores['eval/em']:.3f} over {len(replies)} manager turns")
  counts, examples = collections.Counter(), collections.defaultdict(list)
  for prompt, reply in replies:
    right = json.loads(policies.informed_manager_reply(prompt))["operations"]
    view = policies.manager_view(prompt)
    key = (right[0]["op"], reply_kind(reply, right, range(len(view[1]))))
    counts[key] += 1
    if key[1] != "exact" and len(examples[key]) < 2:
      examples[key].append((view, reply))
  for (needed, kind), n in sorted(counts.items()):
    print(f"turn needs {needed:6s} reply {kind:34s} {n}")
  for key, cases in examples.items():
    for (facts, related), reply in cases:
      print(f"  {key}: facts {facts} shown {related} -> {reply[:150]}")


if __name__ == "__main__":
  app.run(main)
