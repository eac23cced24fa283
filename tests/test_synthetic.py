"""Tests for the synthetic memory task (generator, oracle operations, LoCoMo JSON) and the demo tokenizer."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import re

import pytest
from tokenizers import Tokenizer

from memr1_jax.demo import tokenizer as demo_tokenizer
from memr1_jax.data import locomo
from memr1_jax.demo import synthetic
from memr1_jax.demo import task as demo_task
from memr1_jax.memory import HashingEmbedder, MemoryBank, OpKind

SEED = 3
NUM = 12


@pytest.fixture(scope="module")
def conversations():
  return synthetic.generate_conversations(NUM, SEED)


@dataclasses.dataclass(frozen=True)
class Expected:
  """A question the test derives on its own: gold answer, category, evidence and its subject."""

  answer: str
  category: int
  evidence: tuple[str, ...]
  speaker: str
  slot: str
  kind: str  # latest | yes | no | before | when
  value: str  # the value the question names (or asks for, for `latest`)


def _replay(conversation) -> dict[str, Expected]:
  """Independent replay of the statements in the text: the questions the final state implies."""
  chains: dict[tuple[str, str], list[tuple[str, str, str]]] = {}  # (value, dia_id, date)
  retracted: dict[tuple[str, str], list[tuple[str, str, str]]] = {}  # (value, set dia, retract dia)
  for session, turn in conversation.turns:
    parsed = synthetic.parse_statement(turn.text)
    if parsed is None:
      continue
    slot, new, old, is_retraction = parsed
    key = (turn.speaker, slot)
    chain = chains.get(key, [])
    date = re.sub(r"^.* on (\d+) (\w+), (\d+)$", r"\1 \2 \3", session.date_time)
    if is_retraction:
      assert chain and chain[-1][0] == old, (turn, chain)
      retracted.setdefault(key, []).append((old, chain[-1][1], turn.dia_id))
      chains[key] = []
    elif chain and chain[-1][0] == new:
      continue
    else:
      assert old is None or (chain and chain[-1][0] == old), (turn, chain)
      chains[key] = chain + [(new, turn.dia_id, date)]
  expected = {}
  for (speaker, slot_name), values in retracted.items():
    slot = synthetic.SLOTS[slot_name]
    for value, set_dia, retract_dia in values:
      expected[slot.yes_no_question.format(name=speaker, value=value)] = Expected(
          "no", 4, (set_dia, retract_dia), speaker, slot_name, "no", value)
  for (speaker, slot_name), chain in chains.items():
    if not chain:
      continue
    slot = synthetic.SLOTS[slot_name]
    value, dia_id, date = chain[-1]
    expected[slot.latest_question.format(name=speaker)] = Expected(
        value, 4, (dia_id,), speaker, slot_name, "latest", value)
    if slot.yes_no_question:
      expected[slot.yes_no_question.format(name=speaker, value=value)] = Expected(
          "yes", 4, (dia_id,), speaker, slot_name, "yes", value)
    for (old, old_dia, _), (new, new_dia, _) in zip(chain, chain[1:]):
      expected[slot.before_question.format(name=speaker, value=new)] = Expected(
          old, 1, (old_dia, new_dia), speaker, slot_name, "before", new)
    expected[slot.when_question.format(name=speaker, value=value)] = Expected(
        date, 2, (dia_id,), speaker, slot_name, "when", value)
  return expected


def _oracle_bank(conversation) -> dict[int, tuple[str, str, str]]:
  """Replays `oracle_bank_ops` on a dict: id -> (speaker, slot, text); ids count ADDs from 0."""
  bank: dict[int, tuple[str, str, str]] = {}
  next_id = 0
  ops = synthetic.oracle_bank_ops(conversation)
  for _, turn in conversation.turns:
    (op,) = ops[turn.dia_id]
    parsed = synthetic.parse_statement(turn.text)
    if op.kind == OpKind.ADD:
      bank[next_id] = (op.speaker, parsed[0], op.text)
      next_id += 1
    elif op.kind == OpKind.UPDATE:
      assert bank[op.memory_id][:2] == (op.speaker, parsed[0])
      bank[op.memory_id] = (op.speaker, parsed[0], op.text)
    elif op.kind == OpKind.DELETE:
      assert bank[op.memory_id][:2] == (op.speaker, parsed[0])
      del bank[op.memory_id]
  return bank


def _values_newest_first(slot: str, text: str) -> list[str]:
  """The slot values a memory text names, current first, then each 'before that' value."""
  parts = text.rstrip(".").split("; before that ")
  return [next(v for v in synthetic.SLOTS[slot].values if re.search(rf"\b{v}\b", part))
          for part in parts]


# ------------------------------------------------------------------------------------- generator


def test_same_seed_gives_same_conversations(conversations):
  """Generating again with the same seed and knobs gives equal conversations; another seed differs."""
  assert synthetic.generate_conversations(NUM, SEED) == conversations
  other = synthetic.generate_conversations(NUM, SEED + 1)
  assert all(a.sessions != b.sessions for a, b in zip(conversations, other))


def test_longer_list_starts_with_shorter(conversations):
  """Conversation i depends only on (seed, i): the first 5 of 12 are the list of 5."""
  assert synthetic.generate_conversations(5, SEED) == conversations[:5]


def test_train_and_heldout_share_no_conversation():
  """The split is deterministic, has the asked sizes, and no id or content appears in both halves."""
  train, heldout = synthetic.train_heldout_split(15, 10, seed=0)
  assert (train, heldout) == synthetic.train_heldout_split(15, 10, seed=0)
  assert (len(train), len(heldout)) == (15, 10)
  assert not {c.sample_id for c in train} & {c.sample_id for c in heldout}
  train_content = {(c.speaker_a, c.speaker_b, c.sessions) for c in train}
  assert not any((c.speaker_a, c.speaker_b, c.sessions) in train_content for c in heldout)


def test_sessions_are_dated_in_increasing_order_and_turns_alternate(conversations):
  """Session dates parse as LoCoMo date-times and increase; speakers alternate; dia_ids are D<s>:<t>."""
  for conversation in conversations:
    dates = [datetime.datetime.strptime(s.date_time, "%I:%M %p on %d %B, %Y")
             for s in conversation.sessions]
    assert all(a.date() < b.date() for a, b in zip(dates, dates[1:]))
    for session in conversation.sessions:
      assert [t.dia_id for t in session.turns] == [
          f"D{session.index}:{k}" for k in range(1, len(session.turns) + 1)]
      speakers = [t.speaker for t in session.turns]
      assert all(a != b for a, b in zip(speakers, speakers[1:]))


def test_knobs_control_sessions_slots_and_operations():
  """num_sessions, facts_per_speaker, update/retract probabilities and filler_ratio act as stated."""
  plain = synthetic.generate_conversations(6, 0, num_sessions=3, facts_per_speaker=2,
                                           update_prob=0.0, retract_prob=0.0, filler_ratio=0.0)
  for conversation in plain:
    assert len(conversation.sessions) == 3
    events = synthetic.fact_events(conversation)
    assert len({(e.speaker, e.slot) for e in events}) == 4
    assert {e.op for e in events} <= {OpKind.ADD, OpKind.NOOP}
    fillers = {text for pair in synthetic.FILLER_EXCHANGES for text in pair}
    assert not any(t.text in fillers for _, t in conversation.turns)
  busy = synthetic.generate_conversations(6, 0, num_sessions=6, update_prob=0.6, retract_prob=0.3,
                                          restate_prob=0.1)
  ops = {e.op for c in busy for e in synthetic.fact_events(c)}
  assert ops == {OpKind.ADD, OpKind.UPDATE, OpKind.DELETE, OpKind.NOOP}


def test_changes_name_old_makes_every_change_name_the_value_it_replaces():
  """With changes_name_old every UPDATE turn names the replaced value; by default some changes do not."""
  def update_turn_olds(**knobs):
    convs = synthetic.generate_conversations(8, 0, num_sessions=4, update_prob=0.8, retract_prob=0.0, **knobs)
    text = {(c.sample_id, t.dia_id): t.text for c in convs for _, t in c.turns}
    return [synthetic.parse_statement(text[(c.sample_id, e.dia_id)])[2] for c in convs
            for e in synthetic.fact_events(c) if e.op == OpKind.UPDATE]
  named = update_turn_olds(changes_name_old=True)
  assert named and all(old is not None for old in named)
  assert None in update_turn_olds()


def test_bad_knob_raises_naming_it():
  """An out-of-range knob is a ValueError naming it; an unknown knob is a TypeError."""
  with pytest.raises(ValueError, match="update_prob"):
    synthetic.generate_conversations(1, 0, update_prob=1.5)
  with pytest.raises(ValueError, match="facts_per_speaker"):
    synthetic.generate_conversations(1, 0, facts_per_speaker=0)
  with pytest.raises(TypeError, match="no_such_knob"):
    synthetic.generate_conversations(1, 0, no_such_knob=1)


def test_vocabularies_are_disjoint_and_only_statements_parse():
  """Slot values, speaker and pet names never overlap, and no filler, reply or echo reads as a fact."""
  words = [v for slot in synthetic.SLOTS.values() for v in slot.values]
  words += list(synthetic.SPEAKER_NAMES) + list(synthetic.PET_NAMES)
  assert len(words) == len(set(words))
  other = synthetic.REPLIES + synthetic.RETRACT_REPLIES + synthetic.BRIDGES
  other += tuple(t for pair in synthetic.FILLER_EXCHANGES + synthetic.CLOSINGS for t in pair)
  other += tuple(g.format(other="Anna") for g in synthetic.GREETINGS + synthetic.GREETING_REPLIES)
  for slot in synthetic.SLOTS.values():
    assert slot.retractable == (slot.yes_no_question is not None)
    for value in slot.values:
      other += tuple(e.format(new=value) for e in slot.echo_templates)
  assert [t for t in other if synthetic.parse_statement(t) is not None] == []


def test_every_answer_follows_from_replaying_the_statements(conversations):
  """An independent replay of the statements yields exactly the generated questions and answers."""
  for conversation in conversations:
    expected = _replay(conversation)
    got = {q.question: (q.answer, q.category, q.evidence) for q in conversation.qa}
    assert len(got) == len(conversation.qa), "questions repeat"
    assert got == {q: (e.answer, e.category, e.evidence) for q, e in expected.items()}
    assert [q.qid for q in conversation.qa] == [
        f"{conversation.sample_id}:{j}" for j in range(len(conversation.qa))]


def test_all_three_categories_and_both_yes_no_answers_occur(conversations):
  """The questions cover categories 1, 2 and 4, and yes/no questions have both answers."""
  qa = [q for c in conversations for q in c.qa]
  assert {q.category for q in qa} == {1, 2, 4}
  assert {"yes", "no"} <= {q.answer for q in qa}


# ---------------------------------------------------------------------------------- oracle ops


def test_oracle_ops_leave_one_memory_per_fact_that_answers_every_question(conversations):
  """Replaying the oracle ops leaves one memory per live slot whose text answers every question."""
  for conversation in conversations:
    bank = _oracle_bank(conversation)
    by_subject = {}
    for speaker, slot, text in bank.values():
      assert (speaker, slot) not in by_subject, "two live memories for one slot"
      by_subject[(speaker, slot)] = _values_newest_first(slot, text), text
    for question, e in _replay(conversation).items():
      values, text = by_subject.get((e.speaker, e.slot), ([], ""))
      if e.kind == "latest":
        assert values[0] == e.answer, question
      elif e.kind == "yes":
        assert values[0] == e.value, question
      elif e.kind == "no":
        assert e.value not in values, question
      elif e.kind == "before":
        assert values[values.index(e.value) + 1] == e.answer, question
      else:
        assert values[0] == e.value and f"since {e.answer}" in text, question


def test_oracle_ops_apply_to_a_memory_bank_with_the_same_ids(conversations):
  """Applied turn by turn to a fresh MemoryBank, every oracle op succeeds and ADD ids are fact ids."""
  conversation = conversations[0]
  bank = MemoryBank(HashingEmbedder(64), 64, index="brute_force")
  events = {e.dia_id: e for e in synthetic.fact_events(conversation)}
  for session, turn in conversation.turns:
    ops = synthetic.oracle_bank_ops(conversation)[turn.dia_id]
    (result,) = bank.apply(ops, timestamp=session.date_time, source_turn_ids=[turn.dia_id])
    assert result.applied, result.error
    if turn.dia_id in events and events[turn.dia_id].op != OpKind.NOOP:
      assert result.memory_id == events[turn.dia_id].fact_id
  assert {e.speaker for e in bank.entries()} <= {conversation.speaker_a, conversation.speaker_b}


def test_add_only_replay_keeps_stale_values_for_changed_facts(conversations):
  """Adding every statement keeps replaced / retracted values beside live ones, for most questions."""
  affected = total = 0
  for conversation in conversations:
    asserted: dict[tuple[str, str], set[str]] = {}  # values an ADD-only bank holds as stated facts
    for _, turn in conversation.turns:
      parsed = synthetic.parse_statement(turn.text)
      if parsed is not None and not parsed[3]:
        asserted.setdefault((turn.speaker, parsed[0]), set()).add(parsed[1])
    events = synthetic.fact_events(conversation)
    for e in events:
      if e.op == OpKind.UPDATE:
        assert {e.previous, e.value} <= asserted[(e.speaker, e.slot)]
      elif e.op == OpKind.DELETE:
        assert e.value in asserted[(e.speaker, e.slot)]
    changed = {(e.speaker, e.slot) for e in events if e.op in (OpKind.UPDATE, OpKind.DELETE)}
    for question, e in _replay(conversation).items():
      total += 1
      if (e.speaker, e.slot) in changed:
        affected += 1
        stale = e.value in asserted[(e.speaker, e.slot)] if e.kind == "no" else (
            len(asserted[(e.speaker, e.slot)]) >= 2)
        assert stale, question
  assert affected / total > 0.5


def test_ops_where_needed_scores_each_turn_against_its_implied_operation(conversations):
  """A manager replying with each turn's implied operation scores 1 for every operation; an ADD-only one scores 1
  for ADD and 0 for UPDATE / DELETE; a turn missing from turn_ops counts as a NOOP; UPDATE|DELETE counts either
  operation at the change and retraction turns and UPDATE|DELETE_elsewhere at the others."""
  events = {(c.sample_id, e.dia_id): e.op.value for c in conversations for e in synthetic.fact_events(c)}
  ideal = demo_task.ops_where_needed(conversations, {k: (op,) for k, op in events.items()})
  assert ideal == {"ADD": 1.0, "UPDATE": 1.0, "DELETE": 1.0, "NOOP": 1.0, "UPDATE|DELETE": 1.0,
                   "UPDATE|DELETE_elsewhere": 0.0}
  add_only = demo_task.ops_where_needed(conversations, {k: ("ADD",) for k in events})
  assert add_only == {"ADD": 1.0, "UPDATE": 0.0, "DELETE": 0.0, "NOOP": 0.0, "UPDATE|DELETE": 0.0,
                      "UPDATE|DELETE_elsewhere": 0.0}
  silent = demo_task.ops_where_needed(conversations, {})
  assert silent["NOOP"] == 1.0 and silent["ADD"] == 0.0
  updates_only = demo_task.ops_where_needed(conversations, {k: ("UPDATE",) for k in events})
  assert updates_only["UPDATE|DELETE"] == updates_only["UPDATE|DELETE_elsewhere"] == 1.0
  assert updates_only["DELETE"] == 0.0


# --------------------------------------------------------------------------------- LoCoMo JSON


def test_locomo_json_round_trip(conversations, tmp_path):
  """Writing LoCoMo JSON and reading it back with `read_locomo` gives equal records."""
  path = tmp_path / "synthetic.json"
  synthetic.write_locomo_json(conversations, path)
  assert locomo.read_locomo(path) == conversations


def test_locomo_json_has_the_locomo_layout(conversations, tmp_path):
  """The file is a list of samples with LoCoMo's keys: sessions, dates, dia_ids, qa fields."""
  path = tmp_path / "synthetic.json"
  synthetic.write_locomo_json(conversations[:1], path)
  (sample,) = json.loads(path.read_text(encoding="utf-8"))
  assert set(sample) == {"sample_id", "conversation", "qa"}
  body = sample["conversation"]
  assert body["session_1_date_time"] == conversations[0].sessions[0].date_time
  assert set(body["session_1"][0]) == {"speaker", "dia_id", "text"}
  assert body["session_1"][0]["dia_id"] == "D1:1"
  assert set(sample["qa"][0]) == {"question", "answer", "evidence", "category"}


# ------------------------------------------------------------------------------ demo tokenizer


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer.from_file(str(pathlib.Path(demo_tokenizer.DEMO_TOKENIZER_DIR) / "tokenizer.json"))


def test_shipped_tokenizer_equals_a_rebuild(tmp_path):
  """The shipped files equal a rebuild (if stale: python -m memr1_jax.demo.tokenizer)."""
  demo_tokenizer.build_demo_tokenizer(tmp_path, seed=0)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shipped = pathlib.Path(demo_tokenizer.DEMO_TOKENIZER_DIR, name).read_bytes()
    assert (tmp_path / name).read_bytes() == shipped, f"{name} is stale: rebuild it"


def test_tokenizer_round_trips_unseen_synthetic_text(tokenizer):
  """Turns, questions, answers and memories of conversations not trained on decode back exactly."""
  texts = []
  for conversation in synthetic.generate_conversations(5, 12345):
    texts += [f"[{s.date_time}] {t.speaker}: {t.text}" for s, t in conversation.turns]
    texts += [f"{q.question}\n**Answer:** {q.answer}" for q in conversation.qa]
    texts += [op.text for ops in synthetic.oracle_bank_ops(conversation).values() for op in ops
              if op.text]
  vocab_size = tokenizer.get_vocab_size()
  assert 1000 <= vocab_size <= demo_tokenizer.VOCAB_SIZE
  for text in texts:
    ids = tokenizer.encode(text).ids
    assert all(0 <= i < vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


def test_tokenizer_is_compact_on_task_vocabulary(tokenizer):
  """Operations, JSON punctuation, numbers, dates and the answer marker take one or few tokens each."""
  def count(text):
    return len(tokenizer.encode(text).ids)

  for text in ("ADD", " UPDATE", " DELETE", " NOOP", '{"', '":', ' "', '",', "{", "}", "[", "]",
               ":", ",", " 2023", " May"):
    assert count(text) == 1, text
  assert all(count(str(i)) == 1 and count(f" {i}") == 1 for i in range(demo_tokenizer.MAX_MEMORY_ID + 1))
  assert count("**Answer:**") <= 3
  assert count('{"operations": [{"op": "DELETE", "id": 7}]}') <= 14
  sentences = [t.text for c in synthetic.generate_conversations(3, 777) for _, t in c.turns]
  words = sum(len(s.split()) for s in sentences)
  assert sum(count(s) for s in sentences) / words < 1.4


def test_chat_template_renders_chatml_through_transformers():
  """AutoTokenizer loads the directory offline; apply_chat_template writes ChatML; specials are single ids."""
  transformers = pytest.importorskip("transformers")
  tok = transformers.AutoTokenizer.from_pretrained(demo_tokenizer.DEMO_TOKENIZER_DIR,
                                                   local_files_only=True)
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
  text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
                  "<|im_start|>assistant\n")
  assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
  ids = tok(text, add_special_tokens=False)["input_ids"]
  assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
  assert ids.count(tok.eos_token_id) == 2
  assert tok.decode(ids) == text


def test_contradicting_statement_raises_naming_sample_and_turn():
  """Reading facts from a turn that retracts a value never held fails with the sample and dia_id."""
  turn = synthetic.schema.Turn(speaker="Anna", text="I sold my bike.", dia_id="D1:1")
  session = synthetic.schema.Session(index=1, date_time="1:56 pm on 8 May, 2023", turns=(turn,))
  conversation = synthetic.schema.Conversation("bad-1", "Anna", "Ben", (session,), ())
  with pytest.raises(ValueError, match=r"bad-1 turn D1:1 .*bike"):
    synthetic.fact_events(conversation)


def test_answer_date_of_converts_locomo_date_times():
  """'1:56 pm on 8 May, 2023' becomes '8 May 2023'; another format is a ValueError quoting it."""
  assert synthetic.answer_date_of("1:56 pm on 8 May, 2023") == "8 May 2023"
  with pytest.raises(ValueError, match="2023-05-08"):
    synthetic.answer_date_of("2023-05-08")
