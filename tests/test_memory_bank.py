"""Tests of the memory store: bank semantics, ScaNN against exact search, save / load, embedder."""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest

from memr1_jax.memory import (NOOP, ExactIndex, HashingEmbedder, MemoryBank, MemoryOp, OpKind,
                              ScannConfig, ScannIndex, apply_to_banks, search_banks)
from memr1_jax.memory.embedders import hashed_features
from memr1_jax.memory.index import top_k_by_score

DIM = 256
INDEX_KINDS = ["scann", "brute_force"]
FACTS = [
    ("Alice", "Alice adopted a grey cat named Miso"),
    ("Alice", "Alice works as a nurse at the city hospital"),
    ("Bob", "Bob is training for the Berlin marathon"),
    ("Bob", "Bob moved to Lisbon last spring"),
    ("Alice", "Alice is learning to play the cello"),
]


class CountingEmbedder:
  """A HashingEmbedder that counts its calls and the texts it embedded."""

  def __init__(self, dim: int = DIM):
    self.inner = HashingEmbedder(dim)
    self.calls = 0
    self.texts = 0

  def __call__(self, texts):
    self.calls += 1
    self.texts += len(texts)
    return self.inner(texts)


def _bank(index: str, embed=None, **kwargs) -> MemoryBank:
  bank = MemoryBank(embed or HashingEmbedder(DIM), DIM, index=index, **kwargs)
  for speaker, text in FACTS:
    bank.add(text, speaker=speaker, timestamp="1 May 2023", source_turn_ids=["D1:1"])
  return bank


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _top_ids(bank: MemoryBank, query: str, k: int, speaker=None) -> list[int]:
  return [entry.memory_id for entry, _ in bank.search(query, k, speaker=speaker)[0]]


def _reference_top_k(ids_n: np.ndarray, vecs_nd: np.ndarray, queries_qd: np.ndarray,
                     k: int) -> list[list[int]]:
  """Exact top-k ids by inner product, ties by smaller id, by a full sort."""
  out = []
  for q in queries_qd:
    scores = vecs_nd @ q
    out.append([int(ids_n[i]) for i in np.lexsort((ids_n, -scores))[:k]])
  return out


def _recall(got: np.ndarray, want: list[list[int]]) -> float:
  return float(np.mean([len(set(g.tolist()) & set(w)) / len(w) for g, w in zip(got, want)]))


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_add_then_search_finds_it(index):
  """A memory just added is the top hit for a query sharing its words, with the given fields."""
  bank = _bank(index)
  memory_id = bank.add("Carol keeps bees on her rooftop", speaker="Carol", timestamp="2 May",
                       source_turn_ids=["D2:4"])
  entry, score = bank.search("who keeps bees on a rooftop", 3)[0][0]
  assert entry.memory_id == memory_id
  assert (entry.text, entry.speaker, entry.timestamp, entry.source_turn_ids) == (
      "Carol keeps bees on her rooftop", "Carol", "2 May", ("D2:4",))
  assert score > 0.3
  assert bank.get(memory_id) == entry and len(bank) == len(FACTS) + 1


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_update_keeps_id_and_replaces_text_and_embedding(index):
  """UPDATE keeps the id, replaces text and embedding; the old text no longer finds it first."""
  embed = HashingEmbedder(DIM)
  bank = _bank(index, embed)
  old_text = "Alice adopted a grey cat named Miso"
  target = _top_ids(bank, old_text, 1)[0]
  assert bank.get(target).text == old_text
  new_text = "The pet now lives with her sister Jane"
  results = bank.apply([MemoryOp(OpKind.UPDATE, target, new_text)], timestamp="3 May",
                       source_turn_ids=["D3:2"])
  assert results[0].applied and results[0].memory_id == target and results[0].error is None
  entry = bank.get(target)
  assert (entry.text, entry.speaker, entry.timestamp, entry.source_turn_ids) == (
      new_text, "Alice", "3 May", ("D1:1", "D3:2"))
  np.testing.assert_allclose(bank.embedding(target), embed([new_text])[0], atol=1e-6)
  assert _top_ids(bank, "who lives with her sister Jane", 1) == [target]
  assert _top_ids(bank, old_text, 1) != [target]
  assert len(bank) == len(FACTS)


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_delete_removes_from_all_and_per_speaker_search(index):
  """DELETE removes the memory from the all-speaker and its speaker's search, and from the bank."""
  bank = _bank(index)
  target = _top_ids(bank, "Berlin marathon", 1, speaker="Bob")[0]
  results = bank.apply([MemoryOp(OpKind.DELETE, target)])
  assert results[0].applied and results[0].memory_id == target
  assert target not in bank and bank.get(target) is None
  assert target not in _top_ids(bank, "Berlin marathon", 10)
  assert target not in _top_ids(bank, "Berlin marathon", 10, speaker="Bob")
  assert len(bank) == len(FACTS) - 1


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_noop_changes_nothing(index):
  """NOOP is applied and leaves entries, embeddings and search results exactly as they were."""
  bank = _bank(index)
  def snapshot():
    embeddings = np.stack([bank.embedding(e.memory_id) for e in bank.entries()])
    return bank.entries(), embeddings, bank.search(["cat", "Lisbon"], 5)

  entries, embeddings, hits = snapshot()
  results = bank.apply([NOOP, MemoryOp(OpKind.NOOP)], timestamp="9 May")
  assert [(r.applied, r.memory_id, r.error) for r in results] == [(True, None, None)] * 2
  entries_after, embeddings_after, hits_after = snapshot()
  assert entries == entries_after and hits == hits_after
  np.testing.assert_array_equal(embeddings, embeddings_after)


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_bad_ops_are_recorded_not_raised(index):
  """Malformed operations come back not applied with an error, and leave the bank unchanged."""
  bank = _bank(index)
  before = bank.entries()
  bad = [
      MemoryOp(OpKind.UPDATE, 999, "unknown id"),
      MemoryOp(OpKind.DELETE, 999),
      MemoryOp(OpKind.UPDATE, None, "no id"),
      MemoryOp(OpKind.DELETE, "1"),
      MemoryOp(OpKind.UPDATE, True, "bool id"),
      MemoryOp(OpKind.ADD, text=""),
      MemoryOp(OpKind.ADD, text="   \n"),
      MemoryOp(OpKind.ADD, text=None),
      MemoryOp(OpKind.ADD, text=42),
      MemoryOp(OpKind.UPDATE, 0, None),
      MemoryOp(OpKind.ADD, text="fine text", speaker=7),
      MemoryOp("MERGE", text="unknown kind"),
      None,
      "ADD something",
      {"kind": "ADD", "text": "a dict"},
  ]
  results = bank.apply(bad)
  assert len(results) == len(bad)
  for op, result in zip(bad, results):
    assert result.op is op and not result.applied and result.memory_id is None
    assert isinstance(result.error, str) and result.error
  assert bank.entries() == before


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_ops_on_an_id_deleted_earlier_in_the_call_are_rejected(index):
  """Within one call, UPDATE / DELETE after a DELETE of the same id are rejected, in order."""
  bank = _bank(index)
  results = bank.apply([MemoryOp(OpKind.DELETE, 2), MemoryOp(OpKind.UPDATE, 2, "back again"),
                        MemoryOp(OpKind.DELETE, 2), MemoryOp(OpKind.ADD, text="a new fact")])
  assert [r.applied for r in results] == [True, False, False, True]
  assert 2 not in bank and results[3].memory_id == len(FACTS)


def test_ops_beyond_the_cap_are_rejected():
  """Only the first max_ops_per_call operations are carried out; the rest are recorded rejected."""
  embed = CountingEmbedder()
  bank = MemoryBank(embed, DIM, index="brute_force", max_ops_per_call=3)
  results = bank.apply([MemoryOp(OpKind.ADD, text=f"fact number {i}") for i in range(5)])
  assert [r.applied for r in results] == [True, True, True, False, False]
  assert all("cap" in r.error for r in results[3:])
  assert len(bank) == 3 and embed.texts == 3


def test_long_text_is_cut_to_the_cap():
  """A text over max_text_chars is stored cut to that length and the result says so."""
  bank = MemoryBank(HashingEmbedder(DIM), DIM, index="brute_force", max_text_chars=10)
  result = bank.apply([MemoryOp(OpKind.ADD, text="abcdefghijklmnop")])[0]
  assert result.applied and result.truncated
  assert bank.get(result.memory_id).text == "abcdefghij"
  assert len(bank.get(bank.add("x" * 50)).text) == 10


def test_ids_are_never_reused():
  """After a DELETE, a new ADD gets a fresh id, never the deleted one."""
  bank = _bank("brute_force")
  bank.delete(len(FACTS) - 1)
  assert bank.add("another fact") == len(FACTS)


def test_update_can_move_a_memory_to_another_speaker():
  """UPDATE naming a different speaker moves the memory to that speaker's index, keeping the id."""
  bank = _bank("scann")
  results = bank.apply([MemoryOp(OpKind.UPDATE, 0, "Bob adopted the grey cat Miso", speaker="Bob")])
  assert results[0].applied and bank.get(0).speaker == "Bob"
  assert 0 in _top_ids(bank, "grey cat Miso", 5, speaker="Bob")
  assert 0 not in _top_ids(bank, "grey cat Miso", 5, speaker="Alice")


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_search_matches_exact_reference_with_ties_by_id(index):
  """Search equals a full sort (score desc, id asc), per speaker and over all, with duplicates."""
  embed = HashingEmbedder(DIM)
  bank = MemoryBank(embed, DIM, index=index)
  rng = np.random.default_rng(0)
  words = ["tea", "cat", "run", "book", "rain", "city", "song", "bike"]
  for i in range(60):
    text = " ".join(rng.choice(words, size=3)) if i % 7 else "tea cat"  # Repeated text: exact ties.
    bank.add(text, speaker=["A", "B"][i % 2])
  queries = ["tea cat", "rain song bike", "city"]
  q_qd = embed(queries)
  for speaker in [None, "A", "B"]:
    entries = bank.entries(speaker)
    ids_n = np.array([e.memory_id for e in entries])
    vecs_nd = np.stack([bank.embedding(i) for i in ids_n])
    want = _reference_top_k(ids_n, vecs_nd, q_qd, 12)
    got = bank.search(queries, 12, speaker=speaker)
    assert [[e.memory_id for e, _ in row] for row in got] == want
    for row, q in zip(got, q_qd):
      want_scores = [bank.embedding(e.memory_id) @ q for e, _ in row]
      np.testing.assert_allclose([s for _, s in row], want_scores, atol=1e-5)


def test_search_edge_cases():
  """k above the bank size returns all; k=0, unknown speakers and empty banks give empty lists."""
  embed = CountingEmbedder()
  empty = MemoryBank(embed, DIM)
  assert empty.search(["a", "b"], 5) == [[], []] and embed.calls == 0
  bank = _bank("scann", embed)
  assert len(bank.search("cat", 100)[0]) == len(FACTS)
  assert bank.search("cat", 0) == [[]]
  assert bank.search("cat", 5, speaker="Nobody") == [[]]
  assert len(bank.search_by_vector(embed(["cat"])[0], 2)[0]) == 2
  with pytest.raises(ValueError):
    bank.search("cat", -1)


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_save_load_round_trip_gives_identical_results(index, tmp_path):
  """A loaded bank has the same entries, embeddings, search results and next id as the saved one."""
  bank = _bank(index)
  bank.apply([MemoryOp(OpKind.DELETE, 1), MemoryOp(OpKind.UPDATE, 3, "Bob moved to Porto in June")])
  path = str(tmp_path / "bank")
  bank.save(path)
  bank.add("written after saving")  # Must not leak into the saved copy.
  bank.save(path)  # Replaces the directory.
  loaded = MemoryBank.load(path, HashingEmbedder(DIM))
  queries = ["cat", "Porto", "cello hospital", "marathon"]
  assert loaded.entries() == bank.entries()
  assert loaded.search(queries, 4) == bank.search(queries, 4)
  assert loaded.search(queries, 4, speaker="Bob") == bank.search(queries, 4, speaker="Bob")
  assert loaded.add("next") == bank.add("next")
  assert sorted(os.listdir(tmp_path)) == ["bank"]


def test_save_load_round_trip_of_a_tree_index(tmp_path):
  """A tree-AH bank (mutated after training) loads with identical results and stays mutable."""
  rng = np.random.default_rng(1)
  config = ScannConfig(tree_min_size=256, leaves_fraction=0.3)
  bank = MemoryBank(HashingEmbedder(32), 32, scann_config=config)
  vocab = [f"w{i}" for i in range(200)]
  bank.apply([MemoryOp(OpKind.ADD, text=" ".join(rng.choice(vocab, 4))) for _ in range(64)])
  for _ in range(5):
    bank.apply([MemoryOp(OpKind.ADD, text=" ".join(rng.choice(vocab, 4))) for _ in range(64)])
  bank.apply([MemoryOp(OpKind.DELETE, i) for i in range(0, 40, 3)] +
             [MemoryOp(OpKind.UPDATE, 50, "w1 w2 w3")])
  assert bank.index_of("").mode == "tree_ah"
  bank.save(str(tmp_path / "b"))
  loaded = MemoryBank.load(str(tmp_path / "b"), HashingEmbedder(32))
  assert loaded.index_of("").mode == "tree_ah"
  queries = [" ".join(rng.choice(vocab, 3)) for _ in range(20)]
  assert loaded.search(queries, 10) == bank.search(queries, 10)
  assert loaded.add("w7 w8 w9 w10") == bank.add("w7 w8 w9 w10")
  queries.append("w7 w8 w9 w10")
  assert loaded.search(queries, 10) == bank.search(queries, 10)


def test_load_reports_the_malformed_field(tmp_path):
  """Loading a bank with a broken field fails with a ValueError naming the file and the field."""
  path = str(tmp_path / "bank")
  _bank("brute_force").save(path)
  meta_path = os.path.join(path, "bank.json")
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  meta["entries"][2]["text"] = None
  with open(meta_path, "w", encoding="utf-8") as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match=r"bank\.json: entries\[2\]: field 'text'"):
    MemoryBank.load(path, HashingEmbedder(DIM))


def test_apply_and_search_across_banks_embed_once():
  """apply_to_banks / search_banks give the per-bank results with one embed_fn call each."""
  embed = CountingEmbedder()
  banks = [MemoryBank(embed, DIM, index="brute_force") for _ in range(3)]
  ops = [[MemoryOp(OpKind.ADD, text=f"bank {b} fact {i}", speaker="S") for i in range(b + 1)]
         for b in range(3)]
  results = apply_to_banks(banks, ops, timestamps=["t0", "t1", "t2"])
  assert embed.calls == 1 and embed.texts == 6
  assert [[r.memory_id for r in rs] for rs in results] == [[0], [0, 1], [0, 1, 2]]
  assert banks[2].get(1).timestamp == "t2"
  reference = [MemoryBank(HashingEmbedder(DIM), DIM, index="brute_force") for _ in range(3)]
  for bank, bank_ops, stamp in zip(reference, ops, ["t0", "t1", "t2"]):
    bank.apply(bank_ops, timestamp=stamp)
  embed.calls = 0
  got = search_banks(banks, [["fact 0"], ["bank 1", "fact 1"], []], 2, speaker=["S", None, "S"])
  assert embed.calls == 1
  want = [reference[0].search(["fact 0"], 2, speaker="S"),
          reference[1].search(["bank 1", "fact 1"], 2), []]
  assert got == want


def test_embed_fn_with_a_wrong_shape_is_an_error():
  """An embed_fn returning the wrong shape raises a ValueError that says so."""
  bank = MemoryBank(lambda texts: np.zeros((len(texts), 3), np.float32), DIM)
  with pytest.raises(ValueError, match="embed_fn returned shape"):
    bank.add("hello")


def test_scann_tree_ah_recall_against_brute_force():
  """Tree-AH over 10k random unit vectors (dim 384) has recall@10 >= 0.95 against exact search.

  Uniform random vectors have no cluster structure, so every leaf holds true neighbours and the
  tree must search most leaves; this checks the AH scoring, reordering and id mapping end to end.
  """
  rng = np.random.default_rng(0)
  n, dim = 10_000, 384
  vecs_nd, q_qd = _unit(rng.standard_normal((n, dim))), _unit(rng.standard_normal((64, dim)))
  ids_n = rng.permutation(10 * n)[:n]
  config = ScannConfig(tree_min_size=1000, leaves_fraction=1.0)
  index = ScannIndex.from_vectors(dim, ids_n, vecs_nd, config)
  assert index.mode == "tree_ah"
  got_ids, got_scores = index.search(q_qd, 10)
  want = _reference_top_k(ids_n, vecs_nd, q_qd, 10)
  assert _recall(got_ids, want) >= 0.95
  exact = ExactIndex.from_vectors(dim, ids_n, vecs_nd)
  np.testing.assert_array_equal(exact.search(q_qd, 10)[0], np.array(want))
  row_of = {int(i): r for r, i in enumerate(ids_n)}
  for row_ids, row_scores, q in zip(got_ids, got_scores, q_qd):  # Reordered scores are exact.
    want_scores = [vecs_nd[row_of[int(i)]] @ q for i in row_ids]
    np.testing.assert_allclose(row_scores, want_scores, atol=1e-5)


def test_scann_mutations_agree_with_brute_force():
  """After upserts, in-place updates and deletes, ScaNN (brute force, tree-AH) agrees with exact."""
  rng = np.random.default_rng(2)
  dim = 64
  for config in [ScannConfig(), ScannConfig(tree_min_size=1000, leaves_fraction=1.0)]:
    ids_n = np.arange(2000)
    base = ScannIndex.from_vectors(dim, ids_n, _unit(rng.standard_normal((2000, dim))), config)
    scann, exact = base, ExactIndex.from_vectors(dim, ids_n, base.table.vectors)
    for memory_id in range(2000, 2300):  # ADD.
      vec = _unit(rng.standard_normal(dim))
      scann.upsert(memory_id, vec)
      exact.upsert(memory_id, vec)
    moved = rng.choice(2300, 200, replace=False)
    for memory_id in moved.tolist():  # UPDATE in place.
      vec = _unit(rng.standard_normal(dim))
      scann.upsert(memory_id, vec)
      exact.upsert(memory_id, vec)
    deleted = rng.choice(2300, 300, replace=False)
    for memory_id in deleted.tolist():
      scann.delete(memory_id)
      exact.delete(memory_id)
    assert len(scann) == len(exact) == 2000
    np.testing.assert_array_equal(scann.table.ids, exact.table.ids)
    q_qd = _unit(rng.standard_normal((64, dim)))
    got, _ = scann.search(q_qd, 10)
    want, _ = exact.search(q_qd, 10)
    if scann.mode == "brute_force":
      np.testing.assert_array_equal(got, want)
    else:
      assert _recall(got, want.tolist()) >= 0.95
    assert not set(got.ravel().tolist()) & set(deleted.tolist())
    live_moved = [i for i in moved.tolist() if i not in set(deleted.tolist())]
    top1, _ = scann.search(np.stack([exact.table.vector(i) for i in live_moved]), 1)
    assert top1[:, 0].tolist() == live_moved


def test_scann_index_switches_between_brute_force_and_tree():
  """The index becomes tree-AH at tree_min_size, retrains after doubling, falls back when shrunk."""
  rng = np.random.default_rng(3)
  index = ScannIndex(16, ScannConfig(tree_min_size=256, rebuild_growth=2.0))
  assert index.mode == ""
  for i in range(600):
    index.upsert(i, _unit(rng.standard_normal(16)))
    assert index.mode == ("tree_ah" if i + 1 >= 256 else "brute_force")
  # Built: at the first insert (brute force), at 256 (tree) and at 513 (> 2 * 256, retrained).
  assert index.num_rebuilds == 3
  for i in range(600 - 127):
    index.delete(i)
  assert len(index) == 127 and index.mode == "brute_force"  # Below 256 / 2.
  exact = ExactIndex.from_vectors(16, index.table.ids, index.table.vectors)
  q_qd = _unit(rng.standard_normal((8, 16)))
  np.testing.assert_array_equal(index.search(q_qd, 5)[0], exact.search(q_qd, 5)[0])


def test_top_k_by_score_matches_a_full_sort():
  """top_k_by_score equals a full sort by (score desc, id asc) with many ties and padded slots."""
  rng = np.random.default_rng(4)
  for _ in range(200):
    num_q, num_c, k = rng.integers(1, 4), rng.integers(0, 30), rng.integers(0, 35)
    ids_qc = np.stack([rng.permutation(100)[:num_c] for _ in range(num_q)]).reshape(num_q, num_c)
    scores_qc = rng.integers(0, 4, (num_q, num_c)).astype(np.float32)
    ids_qc[rng.random((num_q, num_c)) < 0.2] = -1
    got_ids, got_scores = top_k_by_score(ids_qc, scores_qc, k)
    width = min(k, num_c)
    for row in range(num_q):
      valid = ids_qc[row] >= 0
      ids, scores = ids_qc[row][valid], scores_qc[row][valid]
      order = np.lexsort((ids, -scores))[:width]
      pad = width - len(order)
      assert got_ids[row].tolist() == ids[order].tolist() + [-1] * pad
      assert got_scores[row].tolist() == scores[order].tolist() + [-np.inf] * pad


def test_hashing_embedder_matches_a_hand_computation():
  """HashingEmbedder: signed crc32 hashing of unigrams + bigrams, L2-normalised; no words: zeros."""
  dim = 32
  features = hashed_features("The cat, the CAT!")
  assert features == ["the", "cat", "the", "cat", "the cat", "cat the", "the cat"]
  want = np.zeros(dim)
  for feature in features:
    h = zlib.crc32(feature.encode())
    want[h % dim] += 1 if h >= 2**31 else -1
  got = HashingEmbedder(dim)(["The cat, the CAT!", "?!", "the cat"])
  np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-6)
  np.testing.assert_array_equal(got[1], np.zeros(dim))
  assert got.dtype == np.float32 and got.shape == (3, dim)
  with pytest.raises(TypeError):
    HashingEmbedder(dim)("a bare string")


def test_fork_is_an_independent_exact_copy():
  """A fork searches like its source, and changes to either side leave the other untouched."""
  from memr1_jax.memory import MemoryBank, HashingEmbedder  # pylint: disable=g-import-not-at-top
  embed = HashingEmbedder(64)
  bank = MemoryBank(embed, 64, index="scann")
  a = bank.add("Anna lives in Porto", speaker="Anna")
  bank.add("Ben has a dog", speaker="Ben")
  fork = bank.fork()
  assert [e.memory_id for e, _ in fork.search("Porto", 2)[0]] == [e.memory_id for e, _ in bank.search("Porto", 2)[0]]
  fork.update(a, "Anna lives in Lyon")
  new_id = fork.add("Anna sold the bike", speaker="Anna")
  assert bank.get(a).text == "Anna lives in Porto" and new_id not in bank
  assert fork.get(a).text == "Anna lives in Lyon" and len(bank) == 2 and len(fork) == 3
  assert bank.add("Ben moved", speaker="Ben") == new_id  # Ids continue independently on both sides.
