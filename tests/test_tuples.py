"""Tests for the manager's training tuples: which tuples a conversation yields, the rewards of a tuple step, the
JSONL file and mode=prepare."""

from __future__ import annotations

import json
import os

import pytest

from memr1_jax import errors
from memr1_jax import main as main_lib
from memr1_jax.agents.extraction import Extraction, simple_fact
from memr1_jax.data.schema import QA, Conversation, Session, Turn
from memr1_jax.episodes import runner
from memr1_jax.episodes import tuples as tuples_lib
from memr1_jax.episodes.policy import Sample, ScriptedPolicy
from memr1_jax.memory.bank import MemoryBank, MemoryEntry, fill_banks
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.testing.smoke import smoke_config

DIM = 64
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "locomo_small.json")


EMBED = HashingEmbedder(DIM)


def _bank() -> MemoryBank:
  return MemoryBank(EMBED, DIM, index="brute_force")


def _six_turns() -> Conversation:
  """6 turns over 2 sessions; questions completed at turns 1, 3 (two) and 5; two that cannot be linked."""
  s1 = Session(1, "1 May 2023", (Turn("Alice", "t0", "D1:1"), Turn("Bob", "t1", "D1:2"), Turn("Alice", "t2", "D1:3")))
  s2 = Session(2, "2 May 2023", (Turn("Bob", "t3", "D2:1"), Turn("Alice", "t4", "D2:2"), Turn("Bob", "t5", "D2:3")))
  qa = (QA("q1", "a", 1, evidence=("D1:2",), qid="q1"),
        QA("q2", "a", 1, evidence=("D1:1", "D2:1"), qid="q2"),
        QA("q3", "a", 1, evidence=("D2:3",), qid="q3"),
        QA("q4", "a", 1, evidence=("D2:1; D1:3",), qid="q4"),
        QA("q5", "a", 1, evidence=("D1:1", "D9:9"), qid="q5"),
        QA("q6", "a", 1, evidence=(), qid="q6"))
  return Conversation("c6", "Alice", "Bob", (s1, s2), qa)


def test_build_tuples_window_two_hand_counted():
  """Window 2: tuples at turns 1, 3, 5 with the simple facts of the two turns before each; q5 and q6 skipped."""
  conv = _six_turns()
  built = tuples_lib.build_tuples([conv], _bank, runner.RunnerConfig(), window=2)
  assert [(t.turn_index, t.dia_id) for t in built] == [(1, "D1:2"), (3, "D2:1"), (5, "D2:3")]
  assert [[e.text for e in t.snapshot] for t in built] == [
      ["Alice: t0"], ["Bob: t1", "Alice: t2"], ["Bob: t3", "Alice: t4"]]
  assert [[qa.qid for qa in t.qa] for t in built] == [["q1"], ["q2", "q4"], ["q3"]]
  assert [e.memory_id for e in built[1].snapshot] == [0, 1]
  assert built[2].snapshot[0].timestamp == "2 May 2023" and built[2].snapshot[0].source_turn_ids == ("D2:1",)
  assert built[1].turn == Turn("Bob", "t3", "D2:1") and built[1].session.index == 2
  assert [qa.qid for qa in tuples_lib.linked_questions(conv)[1]] == ["q5", "q6"]
  assert tuples_lib.counts(built, [conv]) == {"conversations": 1, "turns": 6, "tuples": 3, "linked_questions": 4,
                                              "skipped_questions": 2, "mean_snapshot": 5 / 3}


def test_build_tuples_default_window_covers_every_earlier_turn():
  """With the default window of 50 the last tuple's snapshot holds all 5 earlier turns."""
  built = tuples_lib.build_tuples([_six_turns()], _bank, runner.RunnerConfig())
  assert [len(t.snapshot) for t in built] == [1, 3, 5]


def test_build_tuples_with_a_snapshot_manager_keeps_its_bank():
  """A frozen manager that ADDs each fact upper-cased builds each window's bank: the snapshot holds its texts."""
  def upper(prompt):
    return json.dumps({"operations": [{"op": "ADD", "text": f.text.upper()} for f in prompt.view.facts]})

  built = tuples_lib.build_tuples([_six_turns()], _bank, runner.RunnerConfig(), window=2,
                                  snapshot_manager=ScriptedPolicy(upper))
  assert [[e.text for e in t.snapshot] for t in built] == [
      ["ALICE: T0"], ["BOB: T1", "ALICE: T2"], ["BOB: T3", "ALICE: T4"]]


def test_tuples_jsonl_round_trips(tmp_path):
  """write_tuples then read_tuples gives back equal tuples and the header's settings and counts."""
  conv = _six_turns()
  built = tuples_lib.build_tuples([conv], _bank, runner.RunnerConfig(), window=2)
  path = str(tmp_path / "t.jsonl")
  tuples_lib.write_tuples(path, built, {"window": 2}, tuples_lib.counts(built, [conv]))
  back, header = tuples_lib.read_tuples(path)
  assert back == built
  assert header["settings"] == {"window": 2} and header["counts"]["tuples"] == 3


def test_read_tuples_names_the_bad_line(tmp_path):
  """A malformed tuple line raises TupleFileError naming the file and the line number."""
  path = str(tmp_path / "t.jsonl")
  tuples_lib.write_tuples(path, [], {}, {})
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"sample_id": "x"}\n')
  with pytest.raises(tuples_lib.TupleFileError, match="line 2"):
    tuples_lib.read_tuples(path)


def test_fill_banks_matches_adds_with_one_embedding_call():
  """fill_banks gives the entries and embeddings of one add per entry, embedding everything in one call."""
  calls = []
  embed = HashingEmbedder(DIM)

  def counting(texts):
    calls.append(len(texts))
    return embed(texts)

  entries = [MemoryEntry(7, "Alice likes tea", "Alice", "1 May", ("D1:1",)), MemoryEntry(9, "Bob runs", "Bob", "", ())]
  banks = [MemoryBank(counting, DIM), MemoryBank(counting, DIM)]
  fill_banks(banks, [entries, entries[:1]])
  assert calls == [3]
  ref = MemoryBank(embed, DIM)
  for e in entries:
    ref.add(e.text, speaker=e.speaker, timestamp=e.timestamp, source_turn_ids=e.source_turn_ids)
  assert banks[0].entries() == ref.entries() and len(banks[1]) == 1
  assert (banks[0].embedding(1) == ref.embedding(1)).all()


class _Manager:
  """A manager whose i-th sample of every chat is `replies[i]`; records the prompts and counts its calls."""

  def __init__(self, replies):
    self.replies, self.prompts, self.calls = replies, [], 0

  def generate(self, prompts, *, n=1, greedy=False):
    self.calls += 1
    self.prompts += prompts
    return [[Sample(text=self.replies[i % len(self.replies)]) for i in range(n)] for _ in prompts]


class _Answerer(ScriptedPolicy):
  """Answers "What does <name> drink?" from the memories shown ("<name> drinks <drink>"), else "none"."""

  def __init__(self):
    super().__init__(self._answer)
    self.calls = 0

  def generate(self, prompts, *, n=1, greedy=False):
    self.calls += 1
    return super().generate(prompts, n=n, greedy=greedy)

  @staticmethod
  def _answer(prompt) -> str:
    name = "Alice" if "Alice" in prompt.view.question.question else "Bob"
    texts = [m.text for group in prompt.view.memories.values() for m in group]
    drink = next((d for d in ("black tea", "coffee") if f"{name} drinks {d}" in texts), "none")
    return f"**Answer:** {drink}"


def _drinks_tuple(sample_id="c0", text="I drink coffee.") -> tuples_lib.ManagerTuple:
  """Bob's turn over a bank holding Alice's drink; both questions linked to it."""
  session = Session(1, "1 May 2023", (Turn("Alice", "I drink black tea.", "D1:1"), Turn("Bob", text, "D1:2")))
  qa = (QA("What does Bob drink?", "coffee", 1, evidence=("D1:2",)),
        QA("What does Alice drink?", "black tea", 1, evidence=("D1:1",)))
  snapshot = (MemoryEntry(0, "Alice drinks black tea", "Alice", "1 May 2023", ("D1:1",)),)
  return tuples_lib.ManagerTuple(sample_id, "Alice", "Bob", 1, "D1:2", session, snapshot, qa)


def test_tuple_step_rewards_add_update_and_format_error():
  """ADD answers both questions (1.0); UPDATE overwriting Alice's memory loses hers (0.5); a malformed reply keeps
  the bank, so only Alice's is answered, minus the format penalty (0.5 - 0.25)."""
  manager = _Manager([json.dumps({"operations": [{"op": "ADD", "text": "Bob drinks coffee"}]}),
                      json.dumps({"operations": [{"op": "UPDATE", "id": 0, "text": "Bob drinks coffee"}]}),
                      "not json"])
  answerer = _Answerer()
  cfg = runner.RunnerConfig(related_k=5, answer_k_per_speaker=5, format_penalty=0.25)
  experiences, stats = runner.tuple_episodes(manager, answerer, [_drinks_tuple()], _bank, cfg, n=3, group_offset=4)
  assert [e.reward for e in experiences] == [1.0, 0.5, 0.25]
  assert [e.info["em"] for e in experiences] == [1.0, 0.5, 0.5]
  assert [e.info["format_error"] for e in experiences] == [0.0, 0.0, 1.0]
  assert [(e.info["ADD"], e.info["UPDATE"]) for e in experiences] == [(1, 0), (0, 1), (0, 0)]
  assert {e.group for e in experiences} == {4} and experiences[0].info["turn"] == ("c0", "D1:2")
  assert experiences[0].info["questions"] == 2
  (prompt,) = manager.prompts
  assert [(m.memory_id, m.text) for m in prompt.view.memories] == [(0, "Alice drinks black tea")]
  assert [f.text for f in prompt.view.facts] == ["Bob: I drink coffee."]
  assert stats.format_errors == 1 and stats.manager_calls == 3 and stats.answer_calls == 6


def test_tuple_step_batches_calls_and_skips_a_turn_without_facts():
  """Three tuples, one whose turn has no fact: one manager call, one answerer call, two groups, one tuple counted as
  without facts."""
  def extract(items):
    return [Extraction([] if turn.text == "ok" else [simple_fact(session, turn)]) for session, turn in items]

  manager = _Manager([json.dumps({"operations": [{"op": "ADD", "text": "Bob drinks coffee"}]})])
  answerer = _Answerer()
  cfg = runner.RunnerConfig(related_k=5, answer_k_per_speaker=5, extract=extract)
  batch = [_drinks_tuple("a"), _drinks_tuple("b", text="ok"), _drinks_tuple("c")]
  experiences, stats = runner.tuple_episodes(manager, answerer, batch, _bank, cfg, n=2)
  assert manager.calls == 1 and answerer.calls == 1
  assert [(e.group, e.info["turn"][0]) for e in experiences] == [(0, "a"), (0, "a"), (1, "c"), (1, "c")]
  assert stats.tuples == 3 and stats.no_fact_tuples == 1 and stats.manager_calls == 4


def _prepare(tmp_path, **overrides):
  config = smoke_config(tmp_path / "run", "locomo", **{"data.path": FIXTURE, "mode": "prepare",
                                                       "prepare.window": 2, **overrides})
  main_lib.run(config, "configs/smoke.py:locomo")
  return os.path.join(config.workdir, "manager_tuples.jsonl")


def test_prepare_mode_writes_then_reuses_the_tuples(tmp_path, capsys):
  """mode=prepare on the LoCoMo fixture writes conv-26's 4 tuples (its 5 non-adversarial questions linked); a rerun
  reuses the file; another window rebuilds it."""
  path = _prepare(tmp_path)
  built, header = tuples_lib.read_tuples(path)
  assert [(t.sample_id, t.dia_id, len(t.qa)) for t in built] == [
      ("conv-26", "D1:1", 2), ("conv-26", "D2:1", 1), ("conv-26", "D2:4", 1), ("conv-26", "D3:1", 1)]
  assert [len(t.snapshot) for t in built] == [0, 2, 2, 2]
  assert header["counts"]["linked_questions"] == 5 and header["counts"]["skipped_questions"] == 0
  assert "# prepare: wrote" in capsys.readouterr().out
  mtime = os.stat(path).st_mtime_ns
  _prepare(tmp_path)
  assert "# prepare: reused" in capsys.readouterr().out and os.stat(path).st_mtime_ns == mtime
  _prepare(tmp_path, **{"prepare.window": 1})
  assert "# prepare: wrote" in capsys.readouterr().out
  assert [len(t.snapshot) for t in tuples_lib.read_tuples(path)[0]] == [0, 1, 1, 1]


@pytest.mark.parametrize("override, field", [({"prepare.window": -1}, "config.prepare.window"),
                                             ({"prepare.snapshot_manager": "/no/such/dir"},
                                              "config.prepare.snapshot_manager")])
def test_prepare_mode_bad_settings_fail_naming_the_field(override, field, tmp_path):
  """A negative window or a snapshot manager that is not a directory fails with a ConfigError naming the field."""
  with pytest.raises(errors.ConfigError, match=field):
    _prepare(tmp_path, **override)
  assert not os.path.exists(tmp_path / "run" / "manager_tuples.jsonl")
