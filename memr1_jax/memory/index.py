"""Vector indexes over memory embeddings: exact numpy search, and ScaNN kept in step by mutation.

Both indexes map integer memory ids to float32 vectors and answer maximum-inner-product top-k
queries. They share `VectorTable`, a growable matrix whose row order mirrors ScaNN's own datapoint
order (a delete moves the last row into the freed slot, as ScaNN does), so an index rebuilt from
the table holds its points in the same order as the one kept up to date by `upsert` / `delete`.

`ScannIndex` scores by ScaNN brute force while the index is small and switches to a tree-AH
(partitioning + asymmetric hashing + exact reordering) index once it holds `tree_min_size`
points; the tree is retrained (a rebuild) only when the size has drifted by `rebuild_growth`
since it was last trained, every other change goes through ScaNN's `upsert` / `delete`.
SOAR spilling is not offered: with scann 1.4.2, `delete` on a SOAR tree crashes the process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any

import numpy as np

_NO_ID = -1
_TIE_MARGIN = 16  # Extra neighbours fetched from ScaNN so that ties at the k-th place cut by id.
_SCANN_DIR = "scann"
_STATE_FILE = "index_state.json"


@functools.cache
def _scann_ops():
  """The `scann.scann_ops_pybind` module, imported on first use (it loads a large extension)."""
  from scann.scann_ops.py import scann_ops_pybind  # pylint: disable=g-import-not-at-top
  return scann_ops_pybind


@dataclasses.dataclass(frozen=True)
class ScannConfig:
  """How a `ScannIndex` is built and searched.

  The defaults follow benchmarks/memory_store.py (dim 384, 64 queries, k=30, one CPU thread):
  ScaNN brute force is exact and stays around 1 ms per query up to ~30k points, and a one-off
  mutation costs microseconds where retraining a tree costs seconds, so the approximate tree is
  kept for banks far above LoCoMo sizes (hundreds to a few thousand entries). Searching half the
  leaves gave recall@10 ~0.95 on all-MiniLM-L6-v2 embeddings of LoCoMo turns (~0.7 on uniform
  random vectors, which have no clusters).

  Attributes:
    tree_min_size: from this many points on, the index is a tree-AH index (below, brute force).
    leaves_fraction: fraction of the tree's leaves searched per query.
    reorder_num_neighbors: candidates rescored exactly after AH scoring (at least k).
    rebuild_growth: retrain the tree when the size is above `growth * size at training` or below
      `size at training / growth`; also the hysteresis for falling back to brute force (below
      `tree_min_size / growth`).
    dims_per_block: AH dimensions per codebook block.
    anisotropic_threshold: AH anisotropic quantization threshold.
    training_sample_size: at most this many points train the partitioner and the codebooks.
  """

  tree_min_size: int = 50_000
  leaves_fraction: float = 0.5
  reorder_num_neighbors: int = 200
  rebuild_growth: float = 2.0
  dims_per_block: int = 2
  anisotropic_threshold: float = 0.2
  training_sample_size: int = 100_000

  def __post_init__(self):
    if self.tree_min_size < 256:
      raise ValueError(f"ScannConfig.tree_min_size must be >= 256, got {self.tree_min_size}")
    if not 0.0 < self.leaves_fraction <= 1.0:
      raise ValueError(f"ScannConfig.leaves_fraction must be in (0, 1], got {self.leaves_fraction}")
    if self.reorder_num_neighbors < 1:
      raise ValueError("ScannConfig.reorder_num_neighbors must be >= 1, "
                       f"got {self.reorder_num_neighbors}")
    if self.rebuild_growth <= 1.0:
      raise ValueError(f"ScannConfig.rebuild_growth must be > 1, got {self.rebuild_growth}")
    if self.dims_per_block < 1:
      raise ValueError(f"ScannConfig.dims_per_block must be >= 1, got {self.dims_per_block}")
    if self.training_sample_size < 256:
      raise ValueError("ScannConfig.training_sample_size must be >= 256, "
                       f"got {self.training_sample_size}")

  def to_json(self) -> dict[str, Any]:
    """The fields as a JSON-ready dict."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, fields: dict[str, Any], where: str = "ScannConfig") -> ScannConfig:
    """Inverse of `to_json`; unknown or badly typed fields raise ValueError naming `where`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"{where}: unknown ScannConfig fields {unknown}")
    try:
      return cls(**fields)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}: {e}") from e


def num_leaves_for(n: int) -> int:
  """Number of tree leaves for an index of `n` points: about sqrt(n), at least 2."""
  return max(2, int(round(math.sqrt(n))))


def top_k_by_score(ids_qc: np.ndarray, scores_qc: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
  """Per row, the k best candidates: highest score first, ties broken by the smaller id.

  Args:
    ids_qc: int64 [Q, C] candidate ids, `-1` marks an empty slot.
    scores_qc: float32 [Q, C] their scores (ignored where the id is -1).
    k: how many to keep.

  Returns:
    (ids_qk, scores_qk) with K = min(k, C); rows with fewer than K candidates are padded with
    id -1 and score -inf.
  """
  num_q, num_c = ids_qc.shape
  width = min(k, num_c)
  ids_qc = np.asarray(ids_qc, np.int64)
  scores_qc = np.where(ids_qc == _NO_ID, -np.inf, scores_qc).astype(np.float32)
  if width == 0:
    return np.zeros((num_q, 0), np.int64), np.zeros((num_q, 0), np.float32)
  if width < num_c:
    # Keep every candidate scoring at least the width-th best score of its row, so that ties at
    # the boundary are decided by id (below), not by argpartition's arbitrary order.
    kth_q1 = -np.partition(-scores_qc, width - 1, axis=1)[:, width - 1:width]
    keep_qc = scores_qc >= kth_q1
    exact_q = keep_qc.sum(axis=1) == width
    straddled = np.flatnonzero(~exact_q)
    keep_qc[straddled] = False
    keep_qc[straddled, :width] = True  # Placeholders, overwritten below.
    rows, cols = np.nonzero(keep_qc)
    cand_ids = ids_qc[rows, cols].reshape(num_q, width)
    cand_scores = scores_qc[rows, cols].reshape(num_q, width)
    for row in straddled:  # Ties straddle the boundary: sort this row's survivors.
      row_keep = scores_qc[row] >= kth_q1[row]
      row_ids, row_scores = ids_qc[row][row_keep], scores_qc[row][row_keep]
      order = np.lexsort((row_ids, -row_scores))[:width]
      cand_ids[row], cand_scores[row] = row_ids[order], row_scores[order]
    ids_qc, scores_qc = cand_ids, cand_scores
  order_qk = np.lexsort((ids_qc, -scores_qc), axis=1)
  out_ids = np.take_along_axis(ids_qc, order_qk, axis=1)
  out_scores = np.take_along_axis(scores_qc, order_qk, axis=1)
  empty_qk = np.isneginf(out_scores)
  out_ids[empty_qk] = _NO_ID
  return out_ids, out_scores


class VectorTable:
  """A growable [n, dim] float32 matrix, an id per row; delete moves the last row to the hole."""

  def __init__(self, dim: int):
    self.dim = dim
    self._ids_n = np.zeros((0,), np.int64)
    self._vecs_nd = np.zeros((0, dim), np.float32)
    self._size = 0
    self._row_of: dict[int, int] = {}

  @classmethod
  def from_arrays(cls, dim: int, ids_n: np.ndarray, vecs_nd: np.ndarray) -> VectorTable:
    """A table holding `vecs_nd` [n, dim] under the distinct `ids_n` [n], in that row order."""
    ids_n = np.array(ids_n, np.int64).reshape(-1)
    vecs_nd = np.array(vecs_nd, np.float32)
    if vecs_nd.shape != (len(ids_n), dim):
      raise ValueError(f"vectors must be [{len(ids_n)}, {dim}], got shape {vecs_nd.shape}")
    if not np.all(np.isfinite(vecs_nd)):
      raise ValueError("vectors have non-finite values")
    table = cls(dim)
    table._row_of = {memory_id: row for row, memory_id in enumerate(ids_n.tolist())}
    if len(table._row_of) != len(ids_n):
      raise ValueError("ids must be distinct")
    table._ids_n, table._vecs_nd, table._size = ids_n, vecs_nd, len(ids_n)
    return table

  def __len__(self) -> int:
    return self._size

  @property
  def ids(self) -> np.ndarray:
    """int64 [n] ids in row order (a view: copy before mutating the table)."""
    return self._ids_n[:self._size]

  @property
  def vectors(self) -> np.ndarray:
    """float32 [n, dim] rows (a view: copy before mutating the table)."""
    return self._vecs_nd[:self._size]

  def rows_of(self, ids: np.ndarray) -> np.ndarray:
    """int64 rows of the ids (any shape); id -1 maps to row 0 (KeyError for other unknown ids)."""
    ids = np.asarray(ids, np.int64)
    rows = [0 if i == _NO_ID else self._row_of[i] for i in ids.ravel().tolist()]
    return np.asarray(rows, np.int64).reshape(ids.shape)

  def vector(self, memory_id: int) -> np.ndarray:
    """A copy of the float32 [dim] vector stored for `memory_id` (KeyError if absent)."""
    return self._vecs_nd[self._row_of[memory_id]].copy()

  def upsert(self, memory_id: int, vec_d: np.ndarray) -> None:
    """Stores `vec_d` under `memory_id`, replacing the row in place if the id is present."""
    row = self._row_of.get(memory_id)
    if row is None:
      if self._size == len(self._ids_n):
        capacity = max(8, 2 * self._size)
        self._ids_n = np.resize(self._ids_n, capacity)
        grown = np.zeros((capacity, self.dim), np.float32)
        grown[:self._size] = self._vecs_nd[:self._size]
        self._vecs_nd = grown
      row = self._size
      self._size += 1
      self._row_of[memory_id] = row
      self._ids_n[row] = memory_id
    self._vecs_nd[row] = vec_d

  def delete(self, memory_id: int) -> None:
    """Removes `memory_id` (KeyError if absent); the last row takes its place."""
    row = self._row_of.pop(memory_id)
    last = self._size - 1
    if row != last:
      moved_id = int(self._ids_n[last])
      self._ids_n[row] = moved_id
      self._vecs_nd[row] = self._vecs_nd[last]
      self._row_of[moved_id] = row
    self._size = last


def _check_queries(queries_qd: np.ndarray, dim: int) -> np.ndarray:
  queries_qd = np.ascontiguousarray(queries_qd, dtype=np.float32)
  if queries_qd.ndim != 2 or queries_qd.shape[1] != dim:
    raise ValueError(f"queries must be [Q, {dim}], got shape {queries_qd.shape}")
  return queries_qd


def _check_vector(vec_d: np.ndarray, dim: int) -> np.ndarray:
  vec_d = np.asarray(vec_d, dtype=np.float32)
  if vec_d.shape != (dim,):
    raise ValueError(f"vector must be [{dim}], got shape {vec_d.shape}")
  if not np.all(np.isfinite(vec_d)):
    raise ValueError("vector has non-finite values")
  return vec_d


class ExactIndex:
  """Exact inner-product top-k by a numpy matrix product; for tests and tiny banks."""

  def __init__(self, dim: int):
    self.dim = dim
    self.table = VectorTable(dim)

  def __len__(self) -> int:
    return len(self.table)

  def upsert(self, memory_id: int, vec_d: np.ndarray) -> None:
    """Adds `memory_id` or replaces its vector (float32 [dim])."""
    self.table.upsert(memory_id, _check_vector(vec_d, self.dim))

  def delete(self, memory_id: int) -> None:
    """Removes `memory_id` (KeyError if absent)."""
    self.table.delete(memory_id)

  def search(self, queries_qd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product for float32 [Q, dim] queries.

    Returns:
      (ids_qk int64, scores_qk float32) with K = min(k, len(self)), best first, ties by id.
    """
    queries_qd = _check_queries(queries_qd, self.dim)
    scores_qn = queries_qd @ self.table.vectors.T
    ids_qn = np.broadcast_to(self.table.ids, scores_qn.shape)
    return top_k_by_score(ids_qn, scores_qn, k)

  @classmethod
  def from_vectors(cls, dim: int, ids_n: np.ndarray, vecs_nd: np.ndarray) -> ExactIndex:
    """An index holding `vecs_nd` [n, dim] under the distinct `ids_n` [n], in that row order."""
    index = cls(dim)
    index.table = VectorTable.from_arrays(dim, ids_n, vecs_nd)
    return index

  def save(self, directory: str) -> None:
    """Nothing beyond the rows is needed: `restore` rebuilds from them."""
    del directory

  @classmethod
  def restore(cls, dim: int, ids_n: np.ndarray, vecs_nd: np.ndarray, directory: str) -> ExactIndex:
    """The index that `save` wrote, given its rows `vecs_nd` [n, dim] and ids `ids_n` [n]."""
    del directory
    return cls.from_vectors(dim, ids_n, vecs_nd)


class ScannIndex:
  """A ScaNN index kept in step with every change through `upsert` / `delete`.

  Below `config.tree_min_size` points it scores by brute force (exact); above, it is a tree-AH
  index with about sqrt(n) leaves, retrained only when the size drifts by `rebuild_growth`.
  The searcher is created on the first insert, so an empty index costs almost nothing.
  """

  def __init__(self, dim: int, config: ScannConfig | None = None):
    self.dim = dim
    self.config = config or ScannConfig()
    self.table = VectorTable(dim)
    self._searcher = None
    self._mode = ""  # "" (no searcher), "brute_force" or "tree_ah".
    self._trained_size = 0
    self._num_leaves = 0
    self._capacity = 0  # Points the searcher has room for without reallocating.
    self.num_rebuilds = 0

  def __len__(self) -> int:
    return len(self.table)

  @property
  def num_leaves(self) -> int:
    """Leaves of the current tree (0 when not a tree)."""
    return self._num_leaves

  @property
  def mode(self) -> str:
    """"brute_force" or "tree_ah" once a searcher exists, "" before the first insert."""
    return self._mode

  def upsert(self, memory_id: int, vec_d: np.ndarray) -> None:
    """Adds `memory_id` or replaces its vector (float32 [dim]), through ScaNN's `upsert`."""
    vec_d = _check_vector(vec_d, self.dim)
    self.table.upsert(memory_id, vec_d)
    if self._searcher is None or self._wanted_mode() != self._mode or self._tree_drifted():
      self._rebuild()
      return
    if len(self.table) > self._capacity:
      # Without spare capacity ScaNN copies its whole dataset on every insert (O(n) per ADD).
      self._capacity = max(64, 2 * self._capacity)
      self._searcher.reserve(self._capacity)
    self._searcher.upsert([str(memory_id)], vec_d[None, :])

  def delete(self, memory_id: int) -> None:
    """Removes `memory_id` (KeyError if absent), through ScaNN's `delete`."""
    self.table.delete(memory_id)
    if self._wanted_mode() != self._mode or self._tree_drifted():
      self._rebuild()
    else:
      self._searcher.delete([str(memory_id)])

  @classmethod
  def from_vectors(cls, dim: int, ids_n: np.ndarray, vecs_nd: np.ndarray,
                   config: ScannConfig | None = None) -> ScannIndex:
    """An index over `vecs_nd` [n, dim] under the distinct `ids_n` [n], built once (no replay)."""
    index = cls(dim, config)
    index.table = VectorTable.from_arrays(dim, ids_n, vecs_nd)
    if len(index.table):
      index._rebuild()
    return index

  def rebuild(self) -> None:
    """Builds the searcher afresh from the stored vectors (retrains the tree in tree mode)."""
    self._rebuild()

  def search(self, queries_qd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product for float32 [Q, dim] queries.

    Returns:
      (ids_qk int64, scores_qk float32) with K = min(k, len(self)), best first, ties by id (a
      tie at the k-th place is cut by id when the tied group lies within k + 16 results); scores
      are recomputed from the stored vectors. A tree search that reaches fewer than K points pads
      with id -1 / score -inf.
    """
    queries_qd = _check_queries(queries_qd, self.dim)
    width = min(k, len(self.table))
    if width == 0:
      return np.zeros((len(queries_qd), 0), np.int64), np.zeros((len(queries_qd), 0), np.float32)
    # Fetch a few more than k so that ties at the k-th place are cut by id here, not by ScaNN's
    # internal scan order (which differs between a mutated and a reloaded tree).
    fetch = min(width + _TIE_MARGIN, len(self.table))
    if self._mode == "tree_ah":
      leaves = max(1, math.ceil(self.config.leaves_fraction * self._num_leaves))
      docids, scores_qf = self._searcher.search_batched(
          queries_qd, final_num_neighbors=fetch, leaves_to_search=leaves,
          pre_reorder_num_neighbors=max(fetch, self.config.reorder_num_neighbors))
    else:
      docids, scores_qf = self._searcher.search_batched(queries_qd, final_num_neighbors=fetch)
    missing_qf = np.isnan(np.asarray(scores_qf, np.float32).reshape(len(queries_qd), fetch))
    ids_qf = np.full((len(queries_qd), fetch), _NO_ID, np.int64)
    for row, row_docids in enumerate(docids):
      ids_qf[row, :len(row_docids)] = [int(d) for d in row_docids]
    ids_qf[missing_qf] = _NO_ID
    # Rescore the candidates from the table: ScaNN's own float sums can differ in the last bit
    # between a mutated and a reloaded searcher, which would reorder near-ties.
    rows_qf = self.table.rows_of(ids_qf)
    scores_qf = np.matmul(self.table.vectors[rows_qf], queries_qd[:, :, None])[:, :, 0]
    return top_k_by_score(ids_qf, scores_qf, width)

  def _wanted_mode(self) -> str:
    n, cfg = len(self.table), self.config
    if self._mode == "tree_ah":
      return "tree_ah" if n >= cfg.tree_min_size / cfg.rebuild_growth else "brute_force"
    return "tree_ah" if n >= cfg.tree_min_size else "brute_force"

  def _tree_drifted(self) -> bool:
    if self._mode != "tree_ah":
      return False
    n, growth = len(self.table), self.config.rebuild_growth
    return n > growth * self._trained_size or n < self._trained_size / growth

  def _rebuild(self) -> None:
    ops = _scann_ops()
    cfg, n = self.config, len(self.table)
    vecs_nd = np.ascontiguousarray(self.table.vectors, dtype=np.float32)
    docids = [str(i) for i in self.table.ids.tolist()]  # ScaNN keeps and mutates this list.
    builder = ops.builder(vecs_nd if n else np.zeros((0, self.dim), np.float32), 10, "dot_product")
    mode = self._wanted_mode()
    if mode == "tree_ah":
      self._num_leaves = num_leaves_for(n)
      sample = min(n, cfg.training_sample_size)
      builder = builder.tree(
          self._num_leaves, max(1, math.ceil(cfg.leaves_fraction * self._num_leaves)),
          training_sample_size=sample).score_ah(
              cfg.dims_per_block, anisotropic_quantization_threshold=cfg.anisotropic_threshold,
              training_sample_size=sample).reorder(cfg.reorder_num_neighbors)
    else:
      self._num_leaves = 0
      builder = builder.score_brute_force()
    self._searcher = builder.build(docids=docids)
    self._mode = mode
    self._trained_size = n
    self._capacity = n
    self.num_rebuilds += 1

  def save(self, directory: str) -> None:
    """Writes the tree-AH searcher's assets (no pickle) so `restore` reproduces it exactly.

    A brute-force searcher is not written: `restore` rebuilds it from the rows, in the same order.
    """
    if self._mode != "tree_ah":
      return
    scann_dir = os.path.join(directory, _SCANN_DIR)
    os.makedirs(scann_dir)
    # The pybind searcher itself: the Python wrapper would also pickle the docids.
    self._searcher.searcher.serialize(scann_dir, True)
    state = {"docids": list(self._searcher.docids), "trained_size": self._trained_size,
             "num_leaves": self._num_leaves}
    with open(os.path.join(directory, _STATE_FILE), "w", encoding="utf-8") as f:
      json.dump(state, f)

  @classmethod
  def restore(cls, dim: int, ids_n: np.ndarray, vecs_nd: np.ndarray, directory: str,
              config: ScannConfig | None = None) -> ScannIndex:
    """The index that `save` wrote to `directory`, holding `vecs_nd` [n, dim] under `ids_n` [n].

    Raises:
      ValueError: the saved tree's docids disagree with `ids_n` (naming the file).
    """
    state_path = os.path.join(directory, _STATE_FILE)
    if not os.path.exists(state_path):
      return cls.from_vectors(dim, ids_n, vecs_nd, config)
    index = cls(dim, config)
    index.table = VectorTable.from_arrays(dim, ids_n, vecs_nd)
    with open(state_path, encoding="utf-8") as f:
      state = json.load(f)
    docids = state.get("docids")
    if docids != [str(i) for i in ids_n.tolist()]:
      raise ValueError(f"{state_path}: field 'docids' does not match the saved rows' ids")
    ops = _scann_ops()
    scann_dir = os.path.join(directory, _SCANN_DIR)
    with open(os.path.join(scann_dir, "scann_assets.pbtxt"), encoding="utf-8") as f:
      assets = f.read()
    searcher = ops.scann_pybind.ScannNumpy(scann_dir, assets)
    index._searcher = ops.ScannSearcher(searcher, docids=list(docids))
    index._mode = "tree_ah"
    index._capacity = len(index.table)
    index._trained_size = int(state["trained_size"])
    index._num_leaves = int(state["num_leaves"])
    return index
