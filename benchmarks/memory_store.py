"""Memory store benchmark: ScaNN mutation API against rebuilding, and query latency / recall.

For each bank size it measures, side by side in one process:
  1. the cost of one ADD / UPDATE / DELETE through the index (`ScannIndex.upsert` / `delete`,
     i.e. ScaNN's mutation API) against rebuilding the whole index, for ScaNN brute force, ScaNN
     tree-AH and the exact numpy index;
  2. the latency of a batch of queries (default 64, k=30) for ScaNN tree-AH (several fractions of
     leaves searched), ScaNN brute force and exact numpy, with recall@10 against exact search;
  3. bank-level costs: a search over all speakers (per-speaker indexes merged) against one
     speaker, and the memory held by many small banks alive at once.

Run (about 2 minutes on 2 CPU cores with the defaults; one BLAS thread keeps numpy comparable
with ScaNN's single-threaded search and steadier on a shared machine):
  OPENBLAS_NUM_THREADS=1 python benchmarks/memory_store.py
  OPENBLAS_NUM_THREADS=1 python benchmarks/memory_store.py --sizes=300,3000 \
      --embeddings=turns.npy --query_embeddings=questions.npy

Vectors are uniform random unit vectors by default: the worst case for a partitioning index (no
cluster structure). `--embeddings` takes real sentence embeddings instead ([N, dim] float32 unit
rows); the queries are the first `--num_queries` rows of `--query_embeddings`, or else the last
rows of `--embeddings`; sizes above the rows available are skipped.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from memr1_jax.memory import ExactIndex, MemoryBank, MemoryOp, OpKind, ScannConfig, ScannIndex

_SIZES = flags.DEFINE_list("sizes", ["300", "3000", "30000"], "Bank sizes (points in one index).")
_DIM = flags.DEFINE_integer("dim", 384, "Embedding size of random vectors (all-MiniLM-L6-v2: 384).")
_NUM_QUERIES = flags.DEFINE_integer("num_queries", 64, "Queries per batched search.")
_K = flags.DEFINE_integer("k", 30, "Neighbours per query (Memory-R1 retrieves 30 per speaker).")
_RECALL_K = flags.DEFINE_integer("recall_k", 10, "Recall@this against exact search.")
_LEAVES = flags.DEFINE_list("leaves_fractions", ["0.25", "0.5", "1.0"],
                            "Tree-AH fractions of leaves searched.")
_MUTATIONS = flags.DEFINE_integer("mutations", 50, "Operations timed per kind (mean reported).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Repeats per latency measurement.")
_NUM_BANKS = flags.DEFINE_integer("num_banks", 256, "Banks alive at once (memory measurement).")
_BANK_SIZE = flags.DEFINE_integer("bank_size", 300, "Entries per bank (memory measurement).")
_EMBEDDINGS = flags.DEFINE_string("embeddings", "", "Optional .npy of unit embeddings [N, dim].")
_QUERY_EMBEDDINGS = flags.DEFINE_string("query_embeddings", "",
                                        "Optional .npy of query embeddings [M, dim].")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")

_BRUTE = ScannConfig(tree_min_size=10**12)  # Never becomes a tree.
_EXACT, _SCANN_BRUTE, _SCANN_TREE = "numpy exact", "scann brute force", "scann tree-AH"


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _timed_ms(fn, repeats: int) -> tuple[float, float]:
  """(best, median) wall time in ms of `repeats` calls of `fn` after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * min(times), 1e3 * float(np.median(times))


def _build(kind: str, vecs_nd: np.ndarray, leaves_fraction: float = 0.5):
  """An index of `kind` over `vecs_nd` [n, dim] with ids 0..n-1."""
  ids_n, dim = np.arange(len(vecs_nd)), vecs_nd.shape[1]
  if kind == _EXACT:
    return ExactIndex.from_vectors(dim, ids_n, vecs_nd)
  config = _BRUTE if kind == _SCANN_BRUTE else ScannConfig(tree_min_size=256,
                                                           leaves_fraction=leaves_fraction)
  return ScannIndex.from_vectors(dim, ids_n, vecs_nd, config)


def _mutation_row(kind: str, vecs_nd: np.ndarray, fresh_md: np.ndarray, rng) -> list[float]:
  """[ADD, UPDATE, DELETE] mean ms per op, rebuild ms, rebuilds triggered by the ops."""
  n, m = len(vecs_nd), len(fresh_md)
  index = _build(kind, vecs_nd)
  start = time.perf_counter()
  for j in range(m):  # ADD: new ids.
    index.upsert(n + j, fresh_md[j])
  add_ms = 1e3 * (time.perf_counter() - start) / m
  targets = rng.choice(n, m, replace=False).tolist()
  start = time.perf_counter()
  for j, memory_id in enumerate(targets):  # UPDATE: replace in place.
    index.upsert(memory_id, fresh_md[(j + 1) % m])
  update_ms = 1e3 * (time.perf_counter() - start) / m
  start = time.perf_counter()
  for memory_id in targets:
    index.delete(memory_id)
  delete_ms = 1e3 * (time.perf_counter() - start) / m
  rebuilds = getattr(index, "num_rebuilds", 1) - 1  # The first build is not counted.
  rebuild = (lambda: _build(_EXACT, vecs_nd)) if kind == _EXACT else index.rebuild
  rebuild_ms, _ = _timed_ms(rebuild, max(1, min(_REPEATS.value, 3)))
  return [add_ms, update_ms, delete_ms, rebuild_ms, rebuilds]


def _recall(got_qk: np.ndarray, want_qk: np.ndarray) -> float:
  hits = [len(set(g.tolist()) & set(w.tolist())) / len(w) for g, w in zip(got_qk, want_qk)]
  return float(np.mean(hits))


def _query_rows(vecs_nd: np.ndarray, q_qd: np.ndarray) -> list[tuple[str, float, float, float]]:
  """(method, best ms, median ms per batch, recall@recall_k) for each search method."""
  k, rk, repeats = _K.value, _RECALL_K.value, _REPEATS.value
  want = _build(_EXACT, vecs_nd).search(q_qd, rk)[0]
  methods = [(_EXACT, _build(_EXACT, vecs_nd)), (_SCANN_BRUTE, _build(_SCANN_BRUTE, vecs_nd))]
  if len(vecs_nd) >= 256:
    for fraction in [float(f) for f in _LEAVES.value]:
      tree = _build(_SCANN_TREE, vecs_nd, fraction)
      methods.append((f"{_SCANN_TREE}, {tree.num_leaves} leaves, {fraction:.0%} searched", tree))
  rows = []
  for name, index in methods:
    best, median = _timed_ms(lambda index=index: index.search(q_qd, k), repeats)
    rows.append((name, best, median, _recall(index.search(q_qd, rk)[0], want)))
  return rows


def _bank_rows(vecs_nd: np.ndarray, q_qd: np.ndarray) -> list[tuple[str, float, float]]:
  """(search, best ms, median ms per batch) over both speakers (merged) and over one speaker."""
  dim, n = vecs_nd.shape[1], len(vecs_nd)
  lookup = lambda texts: vecs_nd[[int(t) for t in texts]]  # Text "i" embeds to row i.
  bank = MemoryBank(lookup, dim, scann_config=_BRUTE, max_ops_per_call=1024)
  for start in range(0, n, 1024):
    bank.apply([MemoryOp(OpKind.ADD, text=str(i), speaker="AB"[2 * i // n])
                for i in range(start, min(n, start + 1024))])
  k, repeats = _K.value, _REPEATS.value
  both = _timed_ms(lambda: bank.search_by_vector(q_qd, k), repeats)
  one = _timed_ms(lambda: bank.search_by_vector(q_qd, k, speaker="A"), repeats)
  return [("all speakers (2 indexes merged)", *both), ("one speaker", *one)]


def _rss_mib() -> float:
  with open("/proc/self/statm", encoding="ascii") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _many_banks(dim: int, rng) -> tuple[float, float, float]:
  """(ms to fill one bank, MiB per filled bank, MiB per empty bank), `num_banks` banks alive."""
  size, count = _BANK_SIZE.value, _NUM_BANKS.value
  embed = lambda texts: _unit(rng.standard_normal((len(texts), dim)))
  texts = [f"fact {i}" for i in range(size)]
  before = _rss_mib()
  empties = [MemoryBank(embed, dim) for _ in range(count)]
  empty_mib = (_rss_mib() - before) / count
  before = _rss_mib()
  start = time.perf_counter()
  banks = []
  for _ in range(count):
    bank = MemoryBank(embed, dim)
    for t in range(0, size, 16):  # One apply per dialogue turn's worth of facts.
      bank.apply([MemoryOp(OpKind.ADD, text=text, speaker="AB"[i % 2])
                  for i, text in enumerate(texts[t:t + 16])], timestamp="t")
    banks.append(bank)
  fill_ms = 1e3 * (time.perf_counter() - start) / count
  per_bank_mib = (_rss_mib() - before) / count
  del empties, banks
  return fill_ms, per_bank_mib, empty_mib


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
  print(f"\n{title}")
  print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
  print("  ".join("-" * w for w in widths))
  for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def _data(rng) -> tuple[np.ndarray | None, np.ndarray, str]:
  """(pool of database rows or None for random, queries [Q, dim], description)."""
  num_q = _NUM_QUERIES.value
  if not _EMBEDDINGS.value:
    return None, _unit(rng.standard_normal((num_q, _DIM.value))), "uniform random unit vectors"
  data = np.load(_EMBEDDINGS.value, allow_pickle=False).astype(np.float32)
  if _QUERY_EMBEDDINGS.value:
    q_qd = np.load(_QUERY_EMBEDDINGS.value, allow_pickle=False).astype(np.float32)[:num_q]
    return data, q_qd, f"{_EMBEDDINGS.value} ({len(data)} rows), queries {_QUERY_EMBEDDINGS.value}"
  return data[:-num_q], data[-num_q:], f"{_EMBEDDINGS.value} (last {num_q} rows are the queries)"


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  pool_nd, q_qd, source = _data(rng)
  dim, num_q = q_qd.shape[1], len(q_qd)
  blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
  print(f"memory store benchmark: dim {dim}, {num_q} queries, k={_K.value}, data: {source}; "
        f"{os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={blas}")
  mutation_rows, query_rows, bank_rows = [], [], []
  for size in [int(s) for s in _SIZES.value]:
    if pool_nd is not None and size > len(pool_nd):
      print(f"(skipping size {size}: only {len(pool_nd)} rows in --embeddings)")
      continue
    vecs_nd = pool_nd[:size] if pool_nd is not None else _unit(rng.standard_normal((size, dim)))
    fresh_md = _unit(rng.standard_normal((_MUTATIONS.value, dim)))
    for kind in [_SCANN_BRUTE, _EXACT] + ([_SCANN_TREE] if size >= 256 else []):
      add, update, delete, rebuild, rebuilds = _mutation_row(kind, vecs_nd, fresh_md, rng)
      mutation_rows.append([str(size), kind, f"{add:.3f}", f"{update:.3f}", f"{delete:.3f}",
                            f"{rebuild:.1f}", f"{rebuild / max(add, 1e-9):.0f}x", str(rebuilds)])
    for name, best, median, recall in _query_rows(vecs_nd, q_qd):
      query_rows.append([str(size), name, f"{best:.2f}", f"{median:.2f}",
                         f"{best * 1e3 / num_q:.0f}", f"{recall:.3f}"])
    for name, best, median in _bank_rows(vecs_nd, q_qd):
      bank_rows.append([str(size), name, f"{best:.2f}", f"{median:.2f}"])
  _print_table(f"1. One mutation through the index vs a rebuild (ms; mean of {_MUTATIONS.value} "
               "ops right after a build, so ADD includes one capacity doubling)",
               ["size", "index", "ADD", "UPDATE", "DELETE", "rebuild", "rebuild/ADD",
                "rebuilds in ops"], mutation_rows)
  _print_table(f"2. Batched search: {num_q} queries, k={_K.value} (best / median of "
               f"{_REPEATS.value})",
               ["size", "method", "ms/batch best", "median", "us/query",
                f"recall@{_RECALL_K.value}"], query_rows)
  _print_table("3. Bank search, ScaNN brute force, entries split evenly between 2 speakers",
               ["size", "search", "ms/batch best", "median"], bank_rows)
  fill_ms, per_bank_mib, empty_mib = _many_banks(dim, rng)
  _print_table(f"4. {_NUM_BANKS.value} banks alive at once, {_BANK_SIZE.value} entries each "
               "(2 speakers, 16 ADDs per apply, random embeddings)",
               ["ms to fill one bank", "MiB per bank (RSS)", "raw float32 MiB",
                "MiB per empty bank"],
               [[f"{fill_ms:.1f}", f"{per_bank_mib:.2f}",
                 f"{_BANK_SIZE.value * dim * 4 / 2**20:.2f}", f"{empty_mib:.4f}"]])


if __name__ == "__main__":
  app.run(main)
