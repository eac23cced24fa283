"""The memory service's throughput: adds/s and answers/s at 1 and 32 concurrent users, batched (one engine call for
the users waiting) against one call at a time, side by side in one run, through the real HTTP app (uvicorn in this
process, clients on threads).

Each user replays the fact turns of one synthetic demo conversation (one add per turn, the demo task's extractor, so
every add is one manager call), then asks its questions. The agents are the demo's trained checkpoints.

  python benchmarks/service.py --run=runs/demo [--adds=6] [--questions=4]

(`runs/demo` is the workdir of `python -m memr1_jax.main --config=configs/demo.py`: <run>/manager_grpo/hf and
<run>/answer_grpo/hf.) About 2 minutes on 2 CPU cores, most of it the one-at-a-time runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import uvicorn  # noqa: E402  pylint: disable=g-import-not-at-top

from configs import demo as demo_config  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.demo import synthetic  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.demo.task import extract_statements  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.service.api import Memory  # noqa: E402  pylint: disable=g-import-not-at-top
from memr1_jax.service.server import make_app  # noqa: E402  pylint: disable=g-import-not-at-top


def workloads(n_users: int, adds: int, questions: int, seed: int) -> list[tuple[list[dict], list[str]]]:
  """Per user: `adds` add bodies (one fact turn each, with its session date) and `questions` questions."""
  out = []
  for conv in synthetic.generate_conversations(n_users, seed):
    facts = [(s, t) for (s, t), ext in zip(conv.turns, extract_statements(conv.turns)) if ext.facts][:adds]
    bodies = [{"messages": [{"role": t.speaker, "content": t.text}], "timestamp": s.date_time} for s, t in facts]
    out.append((bodies, [qa.question for qa in conv.qa[:questions]]))
  return out


def post(port: int, path: str, body: dict) -> dict:
  req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                               headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=600) as r:
    return json.loads(r.read())


def run_users(port: int, prefix: str, loads) -> tuple[float, float, int, int]:
  """Every user's adds, then (after all adds) every user's questions, one thread per user; returns (add seconds,
  answer seconds, adds, answers)."""
  barrier = threading.Barrier(len(loads) + 1)
  times = {}

  def user(i, bodies, questions):
    for body in bodies:
      post(port, f"/v1/users/{prefix}{i}/memories", body)
    barrier.wait()
    barrier.wait()
    for q in questions:
      post(port, f"/v1/users/{prefix}{i}/answer", {"question": q})

  threads = [threading.Thread(target=user, args=(i, b, q)) for i, (b, q) in enumerate(loads)]
  start = time.perf_counter()
  for t in threads:
    t.start()
  barrier.wait()
  times["add"] = time.perf_counter() - start
  start = time.perf_counter()
  barrier.wait()
  for t in threads:
    t.join()
  times["answer"] = time.perf_counter() - start
  return times["add"], times["answer"], sum(len(b) for b, _ in loads), sum(len(q) for _, q in loads)


def serve_in_thread(app, port: int) -> uvicorn.Server:
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  threading.Thread(target=server.run, daemon=True).start()
  while not server.started:
    time.sleep(0.05)
  return server


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--run", default="runs/demo", help="The demo's workdir (its manager_grpo/hf and answer_grpo/hf).")
  p.add_argument("--adds", type=int, default=6, help="Adds per user.")
  p.add_argument("--questions", type=int, default=4, help="Questions per user.")
  p.add_argument("--window_ms", type=float, default=5.0, help="The batching window.")
  args = p.parse_args()
  config = demo_config.get_config()
  memory = Memory.load(manager=os.path.join(args.run, "manager_grpo", "hf"),
                       answer=os.path.join(args.run, "answer_grpo", "hf"), store=tempfile.mkdtemp(prefix="svc_bench"),
                       extractor="task", config=config)
  rows = []
  for mode, max_batch in (("batched", 64), ("one at a time", 1)):
    port = 18000 + max_batch
    server = serve_in_thread(make_app(memory, window_s=args.window_ms / 1000, max_batch=max_batch), port)
    for users in (32, 1):
      loads = workloads(users, args.adds, args.questions, seed=users)
      run_users(port, f"warm{mode[0]}{users}_", loads)  # Compiles the engine's batch shapes of this load.
      add_s, answer_s, adds, answers = run_users(port, f"bench{mode[0]}{users}_", loads)
      rows.append((users, mode, adds / add_s, answers / answer_s, adds, answers))
      print(f"{users:2d} users, {mode:13s}: {adds / add_s:7.1f} adds/s ({adds} adds), "
            f"{answers / answer_s:7.1f} answers/s ({answers} answers)", flush=True)
    server.should_exit = True
    time.sleep(0.5)
  print("\n| users | engine calls | adds/s | answers/s |\n|---|---|---|---|")
  for users, mode, add_rate, answer_rate, _, _ in sorted(rows, key=lambda r: (r[0], r[1])):
    print(f"| {users} | {mode} | {add_rate:.1f} | {answer_rate:.1f} |")
  print(f"\nmanager calls per add (facts per turn): {memory.stats()['manager_calls'] / memory.stats()['adds']:.2f}; "
        f"stats: {memory.stats()}")


if __name__ == "__main__":
  main()
