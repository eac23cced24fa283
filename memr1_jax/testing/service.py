"""A memory service with scripted agents and the hashing embedder, for tests of storage and HTTP (no model, no
encoder): `scripted_memory(store)`, or the server `python -m memr1_jax.testing.service --store=DIR --port=N [...]`
(the flags of `python -m memr1_jax.serve`, without --manager / --answer)."""

from __future__ import annotations

import json
import sys

from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import Prompt, ScriptedPolicy
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.service.api import Memory
from memr1_jax.service.store import BankStore

DIM = 64


def scripted_manager_reply(prompt: Prompt) -> str:
  """UPDATE of the first memory shown when one is (the fact replaces it), else ADD of every fact; "MALFORMED" in a
  fact gives a reply that does not parse."""
  view = prompt.view
  if any("MALFORMED" in f.text for f in view.facts):
    return '{"operations": [{"op": "ADD", "te'
  if view.memories:
    return json.dumps({"operations": [{"op": "UPDATE", "id": 0, "text": view.facts[0].text}]})
  return json.dumps({"operations": [{"op": "ADD", "text": f.text} for f in view.facts]})


def scripted_answer_reply(prompt: Prompt) -> str:
  """Lists every memory shown as useful and answers with the text of the first (or "none")."""
  shown = [m for group in prompt.view.memories.values() for m in group]
  lines = [f"[{m.memory_id}]" for m in shown]
  return "Useful memories:\n" + "\n".join(lines) + f"\n**Answer:** {shown[0].text if shown else 'none'}"


def scripted_memory(store: str, *, related_min_score: float = 0.5, snapshot_every: int = 32) -> Memory:
  """A `Memory` over the banks in `store` with the scripted manager and answerer above and the hashing embedder;
  related memories are shown to the manager from `related_min_score` (above 1: never, so every fact is ADDed)."""
  embed = HashingEmbedder(DIM)
  bank_store = BankStore(store, lambda: MemoryBank(embed, DIM, index="brute_force"), encoder=f"hashing:{DIM}",
                         snapshot_every=snapshot_every)
  cfg = runner.RunnerConfig(related_k=2, related_min_score=related_min_score, answer_k_per_speaker=5)
  return Memory(ScriptedPolicy(scripted_manager_reply), ScriptedPolicy(scripted_answer_reply), bank_store, cfg)


def main(argv) -> None:
  from memr1_jax import serve  # pylint: disable=g-import-not-at-top
  p = serve.parser()
  p.add_argument("--related_min_score", type=float, default=0.5)
  args = p.parse_args(["--manager=scripted", "--answer=scripted"] + list(argv))
  serve.serve(scripted_memory(args.store, related_min_score=args.related_min_score,
                              snapshot_every=args.snapshot_every), args)


if __name__ == "__main__":
  main(sys.argv[1:])
