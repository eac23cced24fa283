"""Tests for the dataset readers, the paper's LoCoMo split and the tensorflow-datasets builders."""

from __future__ import annotations

import collections
import dataclasses
import functools
import http.server
import json
import os
import pathlib
import shutil
import threading
import time

import pytest

from memr1_jax.data import errors
from memr1_jax.data import locomo
from memr1_jax.data import longmemeval
from memr1_jax.data import msc
from memr1_jax.data import schema
from memr1_jax.data import splits

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
LOCOMO_FIXTURE = FIXTURES / "locomo_small.json"
LONGMEMEVAL_FIXTURE = FIXTURES / "longmemeval_small.json"
HYDRABUILD_FIXTURE = FIXTURES / "longmemeval_hydrabuild_small.json"
MSC_FIXTURE = FIXTURES / "msc_self_instruct_small.jsonl"
DATA_DIR = pathlib.Path(os.environ.get(
    "MEMR1_DATA_DIR", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"))
REAL_LOCOMO = DATA_DIR / "locomo" / "locomo10.json"
REAL_HYDRABUILD = DATA_DIR / "longmemeval" / "longmemeval_oracle_sample_hydrabuild.json"

needs_real_locomo = pytest.mark.skipif(
    not REAL_LOCOMO.exists(), reason=f"real LoCoMo file absent: {REAL_LOCOMO} (set MEMR1_DATA_DIR)")
needs_real_hydrabuild = pytest.mark.skipif(
    not REAL_HYDRABUILD.exists(),
    reason=f"real LongMemEval hydrabuild sample absent: {REAL_HYDRABUILD} (set MEMR1_DATA_DIR)")


def _write_json(path: pathlib.Path, value) -> pathlib.Path:
  path.write_text(json.dumps(value), encoding="utf-8")
  return path


def _locomo_raw() -> list[dict]:
  return json.loads(LOCOMO_FIXTURE.read_text(encoding="utf-8"))


def _longmemeval_raw() -> list[dict]:
  return json.loads(LONGMEMEVAL_FIXTURE.read_text(encoding="utf-8"))


def _conversation(sample_id: str, categories: list[int]) -> schema.Conversation:
  qa = tuple(schema.QA(question=f"q{k}", answer="a", category=c) for k, c in enumerate(categories))
  return schema.Conversation(sample_id=sample_id, speaker_a="A", speaker_b="B", sessions=(), qa=qa)


# ----------------------------------------------------------------------------------------- LoCoMo


def test_locomo_fixture_reads_speakers_sessions_and_turns():
  """The LoCoMo fixture gives 2 conversations with their speakers, dated sessions and turns."""
  conversations = locomo.read_locomo(LOCOMO_FIXTURE)
  assert [c.sample_id for c in conversations] == ["conv-26", "conv-30"]
  first = conversations[0]
  assert (first.speaker_a, first.speaker_b) == ("Alice", "Bob")
  assert [(s.index, s.date_time, len(s.turns)) for s in first.sessions] == [
      (1, "1:56 pm on 8 May, 2023", 4), (2, "10:14 am on 20 June, 2023", 4),
      (3, "7:30 pm on 2 September, 2023", 3)]
  assert first.sessions[1].turns[0] == schema.Turn(
      speaker="Bob", text="I ran 30 kilometres yesterday, my longest run so far.", dia_id="D2:1")
  assert len(first.turns) == 11


def test_locomo_date_without_session_is_ignored():
  """A session_N_date_time with no session_N (as in conv-26) adds no session."""
  conversations = locomo.read_locomo(LOCOMO_FIXTURE)
  assert "session_4_date_time" in _locomo_raw()[0]["conversation"]
  assert [s.index for s in conversations[0].sessions] == [1, 2, 3]


def test_locomo_image_turn_appends_blip_caption():
  """A turn with a photo keeps its text and gets " [shares <caption>]" appended."""
  turn = locomo.read_locomo(LOCOMO_FIXTURE)[0].sessions[0].turns[2]
  assert turn.text == ("Here is Miso sleeping on my desk. "
                       "[shares a photo of an orange cat sleeping on a desk]")
  assert turn.dia_id == "D1:3"


def test_locomo_sessions_are_ordered_numerically(tmp_path):
  """session_10 comes after session_2 whatever the key order in the file."""
  raw = _locomo_raw()[:1]
  conv = raw[0]["conversation"]
  conv["session_10"] = conv.pop("session_3")
  conv["session_10_date_time"] = conv.pop("session_3_date_time")
  raw[0]["conversation"] = dict(reversed(list(conv.items())))
  sessions = locomo.read_locomo(_write_json(tmp_path / "l.json", raw))[0].sessions
  assert [s.index for s in sessions] == [1, 2, 10]
  assert sessions[2].date_time == "7:30 pm on 2 September, 2023"


def test_locomo_numeric_answer_becomes_string():
  """An integer answer in the file (2023) is read as the string "2023"."""
  qa = locomo.read_locomo(LOCOMO_FIXTURE)[0].qa
  assert qa[2].answer == "2023"
  assert locomo.read_locomo(LOCOMO_FIXTURE)[1].qa[2].answer == "2"


def test_locomo_adversarial_question_fields():
  """Category 5 keeps adversarial_answer; without an answer its gold is ADVERSARIAL_ANSWER."""
  qa = locomo.read_locomo(LOCOMO_FIXTURE)[0].qa
  assert (qa[5].category, qa[5].answer, qa[5].adversarial_answer) == (
      5, locomo.ADVERSARIAL_ANSWER, "Miso")
  assert (qa[6].answer, qa[6].adversarial_answer) == ("No", "Yes")
  assert qa[0].adversarial_answer is None


def test_locomo_qa_evidence_and_ids():
  """QA keep their evidence dia_ids in order and get qid "<sample_id>:<index>"."""
  qa = locomo.read_locomo(LOCOMO_FIXTURE)[0].qa
  assert qa[3].evidence == ("D2:2", "D2:4")
  assert [q.qid for q in qa[:2]] == ["conv-26:0", "conv-26:1"]


def test_locomo_fixture_covers_all_categories():
  """The shared fixture has questions of all five categories."""
  categories = {q.category for c in locomo.read_locomo(LOCOMO_FIXTURE) for q in c.qa}
  assert categories == set(schema.CATEGORY_NAMES)


@needs_real_locomo
def test_real_locomo_counts():
  """locomo10.json: 10 conversations, 1986 QA (1: 282, 2: 321, 3: 96, 4: 841, 5: 446)."""
  conversations = locomo.read_locomo(REAL_LOCOMO)
  assert len(conversations) == 10
  categories = collections.Counter(q.category for c in conversations for q in c.qa)
  assert sum(categories.values()) == 1986
  assert dict(categories) == {1: 282, 2: 321, 3: 96, 4: 841, 5: 446}
  assert sum(n for c, n in categories.items() if c != 5) == 1540


@needs_real_locomo
def test_real_locomo_paper_split_sizes():
  """The paper's split of locomo10.json has 152 / 81 / 1307 questions and no category 5."""
  conversations = locomo.read_locomo(REAL_LOCOMO)
  sizes = {}
  for split in splits.SPLITS:
    chosen = splits.locomo_split(conversations, split)
    assert all(q.category != 5 for c in chosen for q in c.qa)
    sizes[split] = sum(len(c.qa) for c in chosen)
  assert sizes == {"train": 152, "validation": 81, "test": 1307}
  test_ids = [c.sample_id for c in splits.locomo_split(conversations, "test")]
  assert len(test_ids) == 8 and not {"conv-26", "conv-30"} & set(test_ids)


# ----------------------------------------------------------------------------------------- splits


def test_locomo_split_assigns_conversations():
  """conv-26 is train, conv-30 validation, every other conversation test (input order kept)."""
  conversations = [_conversation(i, [1]) for i in ("conv-41", "conv-30", "conv-26", "conv-50")]
  ids = {s: [c.sample_id for c in splits.locomo_split(conversations, s)] for s in splits.SPLITS}
  assert ids == {"train": ["conv-26"], "validation": ["conv-30"], "test": ["conv-41", "conv-50"]}


def test_locomo_split_drops_adversarial_unless_asked():
  """Category 5 questions are removed by default and kept with include_adversarial=True."""
  conversations = [_conversation("conv-26", [1, 5, 2, 5, 4])]
  kept = splits.locomo_split(conversations, "train")[0].qa
  assert [q.category for q in kept] == [1, 2, 4]
  everything = splits.locomo_split(conversations, "train", include_adversarial=True)[0].qa
  assert [q.category for q in everything] == [1, 5, 2, 5, 4]


def test_locomo_split_rejects_unknown_split():
  """An unknown split name raises ValueError."""
  with pytest.raises(ValueError, match="dev"):
    splits.locomo_split([], "dev")


# ------------------------------------------------------------------------------------ LongMemEval


def test_longmemeval_official_sessions_and_turns():
  """Each item is a user/assistant Conversation with one dated Session per haystack session."""
  conversation = longmemeval.read_longmemeval(LONGMEMEVAL_FIXTURE)[0]
  assert (conversation.sample_id, conversation.speaker_a, conversation.speaker_b) == (
      "fx_temporal_01", "user", "assistant")
  assert [(s.index, s.date_time, len(s.turns)) for s in conversation.sessions] == [
      (1, "2023/05/27 (Sat) 18:30", 2), (2, "2023/05/15 (Mon) 08:05", 4)]
  assert conversation.sessions[1].turns[1] == schema.Turn(
      speaker="assistant", dia_id="D2:2",
      text="Congratulations on the new bike! Steel frames are comfortable on long rides.")


def test_longmemeval_official_question_fields():
  """The QA carries question_date, question_type, qid and evidence from has_answer turns."""
  qa = longmemeval.read_longmemeval(LONGMEMEVAL_FIXTURE)[0].qa
  assert len(qa) == 1
  assert qa[0] == schema.QA(
      question="How many days passed between buying my road bike and my first group ride?",
      answer="12 days. 13 days (including the last day) is also acceptable.", category=2,
      evidence=("D1:1", "D2:1"), question_type="temporal-reasoning",
      question_date="2023/06/10 (Sat) 09:00", qid="fx_temporal_01")


def test_longmemeval_category_mapping():
  """multi-session -> 1, temporal-reasoning -> 2, knowledge-update and single-session-* -> 4,
  an "_abs" question -> 5; an integer answer becomes a string."""
  qa = [c.qa[0] for c in longmemeval.read_longmemeval(LONGMEMEVAL_FIXTURE)]
  assert [(q.question_type, q.category) for q in qa] == [
      ("temporal-reasoning", 2), ("multi-session", 1), ("single-session-user", 5)]
  assert qa[1].answer == "3"
  hydrabuild_qa = [c.qa[0] for c in longmemeval.read_longmemeval(HYDRABUILD_FIXTURE)]
  assert [(q.question_type, q.category) for q in hydrabuild_qa] == [
      ("knowledge-update", 4), ("single-session-assistant", 4)]


def test_longmemeval_chronological_sorts_sessions_and_renumbers():
  """chronological=True orders sessions by date and renumbers dia_ids and evidence."""
  conversation = longmemeval.read_longmemeval(LONGMEMEVAL_FIXTURE, chronological=True)[0]
  assert [s.date_time for s in conversation.sessions] == [
      "2023/05/15 (Mon) 08:05", "2023/05/27 (Sat) 18:30"]
  assert conversation.sessions[0].turns[0].text == "I bought a road bike today, a used steel frame."
  assert conversation.sessions[0].turns[0].dia_id == "D1:1"
  assert conversation.qa[0].evidence == ("D1:1", "D2:1")


def test_longmemeval_hydrabuild_layout():
  """The hydrabuild layout splits sessions at date changes; qid is "<id>:<question id>"."""
  conversations = longmemeval.read_longmemeval(HYDRABUILD_FIXTURE)
  assert conversations == longmemeval.read_longmemeval(HYDRABUILD_FIXTURE, layout="hydrabuild")
  first = conversations[0]
  assert [(s.date_time, [t.dia_id for t in s.turns]) for s in first.sessions] == [
      ("2023/04/10 (Mon) 07:15", ["D1:1", "D1:2"]), ("2023/03/01 (Wed) 18:40", ["D2:1", "D2:2"])]
  assert first.qa == (schema.QA(
      question="How many kilometres a week do I run now?", answer="35", category=4,
      question_type="knowledge-update", qid="knowledge-up-fx000001:q1"),)
  assert conversations[1].qa[0].question_date is None


def test_longmemeval_hydrabuild_chronological():
  """chronological=True also sorts the date runs of the hydrabuild layout."""
  first = longmemeval.read_longmemeval(HYDRABUILD_FIXTURE, chronological=True)[0]
  assert [s.turns[0].text for s in first.sessions] == [
      "Update: I am up to 35 kilometres a week now.", "I run 20 kilometres a week these days."]


@needs_real_hydrabuild
def test_real_hydrabuild_sample():
  """The real hydrabuild sample: 16 one-question items, types 3/3/3/3/2/2, no abstention."""
  conversations = longmemeval.read_longmemeval(REAL_HYDRABUILD)
  assert len(conversations) == 16 and all(len(c.qa) == 1 for c in conversations)
  types = collections.Counter(c.qa[0].question_type for c in conversations)
  assert dict(types) == {"temporal-reasoning": 3, "multi-session": 3, "knowledge-update": 3,
                         "single-session-preference": 3, "single-session-user": 2,
                         "single-session-assistant": 2}
  categories = collections.Counter(c.qa[0].category for c in conversations)
  assert dict(categories) == {2: 3, 1: 3, 4: 10}
  assert all(s.turns for c in conversations for s in c.sessions)


# ------------------------------------------------------------------------------------------- MSC


def test_msc_sessions_speakers_and_dates():
  """Previous dialogs become sessions dated by time_back (or time_num/time_unit), then the
  current dialog; speakers alternate from Speaker 1 when turns carry no id."""
  conversations = msc.read_msc(MSC_FIXTURE)
  assert [c.sample_id for c in conversations] == ["msc-0", "msc-1"]
  first = conversations[0]
  assert [(s.index, s.date_time, len(s.turns)) for s in first.sessions] == [
      (1, "7 days ago", 3), (2, "2 days ago", 4), (3, msc.CURRENT_SESSION, 2)]
  assert [t.speaker for t in first.sessions[0].turns] == ["Speaker 1", "Speaker 2", "Speaker 1"]
  assert first.sessions[0].turns[1] == schema.Turn(
      speaker="Speaker 2", text="Nice! I just got a golden retriever puppy named Sunny.",
      dia_id="D1:2")
  assert conversations[1].sessions[0].date_time == "3 hours ago"


def test_msc_question_from_self_instruct():
  """self_instruct B is the question and A the answer, category 4."""
  qa = msc.read_msc(MSC_FIXTURE)[0].qa
  assert qa == (schema.QA(question="What was the name of your puppy again?", answer="Sunny",
                          category=4, question_type="msc-self-instruct", qid="msc-0"),)


def test_msc_without_current_dialog():
  """include_current_dialog=False keeps only the previous dialogs."""
  conversation = msc.read_msc(MSC_FIXTURE, include_current_dialog=False)[0]
  assert [s.date_time for s in conversation.sessions] == ["7 days ago", "2 days ago"]


# ---------------------------------------------------------------------------------------- errors


def test_error_names_file_record_and_missing_question(tmp_path):
  """A LoCoMo QA without `question` fails naming the file, the sample and qa[1].question."""
  raw = _locomo_raw()
  del raw[1]["qa"][1]["question"]
  path = _write_json(tmp_path / "bad.json", raw)
  with pytest.raises(errors.DataFormatError) as info:
    locomo.read_locomo(path)
  assert (info.value.path, info.value.field) == (str(path), "qa[1].question")
  assert "conv-30" in info.value.record and "#1" in info.value.record
  assert str(path) in str(info.value) and "missing" in str(info.value)


def test_error_session_without_date(tmp_path):
  """A LoCoMo session without its session_N_date_time fails naming that key."""
  raw = _locomo_raw()
  del raw[0]["conversation"]["session_2_date_time"]
  with pytest.raises(errors.DataFormatError, match="conversation.session_2_date_time"):
    locomo.read_locomo(_write_json(tmp_path / "bad.json", raw))


def test_error_truncated_json(tmp_path):
  """A truncated JSON file fails as DataFormatError naming the file, not a bare JSONDecodeError."""
  path = tmp_path / "truncated.json"
  text = LOCOMO_FIXTURE.read_text(encoding="utf-8")
  path.write_text(text[: len(text) // 2], encoding="utf-8")
  with pytest.raises(errors.DataFormatError, match="invalid JSON") as info:
    locomo.read_locomo(path)
  assert info.value.path == str(path)


def test_error_wrong_type(tmp_path):
  """A category given as a string fails naming the field and the expected type."""
  raw = _locomo_raw()
  raw[0]["qa"][0]["category"] = "4"
  with pytest.raises(errors.DataFormatError, match=r"qa\[0\].category.*expected integer"):
    locomo.read_locomo(_write_json(tmp_path / "bad.json", raw))


def test_error_answer_missing_outside_category_5(tmp_path):
  """Only category 5 questions may lack an answer."""
  raw = _locomo_raw()
  del raw[0]["qa"][0]["answer"]
  with pytest.raises(errors.DataFormatError, match=r"qa\[0\].answer"):
    locomo.read_locomo(_write_json(tmp_path / "bad.json", raw))


def test_error_unknown_speaker(tmp_path):
  """A turn whose speaker is neither speaker_a nor speaker_b fails naming the turn."""
  raw = _locomo_raw()
  raw[0]["conversation"]["session_1"][0]["speaker"] = "Carol"
  with pytest.raises(errors.DataFormatError, match=r"session_1\[0\].speaker"):
    locomo.read_locomo(_write_json(tmp_path / "bad.json", raw))


def test_error_longmemeval_missing_question(tmp_path):
  """A LongMemEval item without `question` fails naming its question_id."""
  raw = _longmemeval_raw()
  del raw[2]["question"]
  with pytest.raises(errors.DataFormatError) as info:
    longmemeval.read_longmemeval(_write_json(tmp_path / "bad.json", raw))
  assert info.value.field == "question" and "fx_user_03_abs" in info.value.record


def test_error_longmemeval_dates_do_not_match_sessions(tmp_path):
  """haystack_dates and haystack_sessions of different lengths fail naming haystack_dates."""
  raw = _longmemeval_raw()
  raw[1]["haystack_dates"].pop()
  with pytest.raises(errors.DataFormatError, match="haystack_dates.*2 dates for 3"):
    longmemeval.read_longmemeval(_write_json(tmp_path / "bad.json", raw))


def test_error_longmemeval_unknown_question_type(tmp_path):
  """An unknown question_type fails naming the field."""
  raw = _longmemeval_raw()
  raw[0]["question_type"] = "trivia"
  with pytest.raises(errors.DataFormatError, match="question_type.*trivia"):
    longmemeval.read_longmemeval(_write_json(tmp_path / "bad.json", raw))


def test_error_msc_truncated_line(tmp_path):
  """A truncated JSONL record fails naming its line number."""
  lines = MSC_FIXTURE.read_text(encoding="utf-8").splitlines()
  path = tmp_path / "bad.jsonl"
  path.write_text(lines[0] + "\n" + lines[2][:100] + "\n", encoding="utf-8")
  with pytest.raises(errors.DataFormatError) as info:
    msc.read_msc(path)
  assert info.value.record == "line 2" and "invalid JSON" in str(info.value)


def test_error_msc_missing_answer(tmp_path):
  """An MSC record without self_instruct.A fails naming that field and the line."""
  records = [json.loads(line) for line in MSC_FIXTURE.read_text(encoding="utf-8").splitlines()
             if line.strip()]
  del records[1]["self_instruct"]["A"]
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
  with pytest.raises(errors.DataFormatError) as info:
    msc.read_msc(path)
  assert info.value.field == "self_instruct.A" and info.value.record.startswith("line 2")


# ------------------------------------------------------------------------ tensorflow-datasets


@pytest.fixture(name="tfds_builders", scope="module")
def _tfds_builders():
  from memr1_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  return tfds_builders


def _manual_dir(tmp_path: pathlib.Path, source: pathlib.Path, filename: str) -> pathlib.Path:
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  shutil.copy(source, manual_dir / filename)
  return manual_dir


def test_conversation_json_round_trip(tfds_builders):
  """conversation_from_json(conversation_to_json(c)) == c for every fixture conversation."""
  conversations = (locomo.read_locomo(LOCOMO_FIXTURE) + msc.read_msc(MSC_FIXTURE)
                   + longmemeval.read_longmemeval(LONGMEMEVAL_FIXTURE))
  for conversation in conversations:
    text = tfds_builders.conversation_to_json(conversation)
    assert tfds_builders.conversation_from_json(text) == conversation


def test_tfds_locomo_round_trip(tfds_builders, tmp_path):
  """The locomo builder (manual dir, array_record) gives back the direct reader's records."""
  manual_dir = _manual_dir(tmp_path, LOCOMO_FIXTURE, "locomo10.json")
  loaded = tfds_builders.load_conversations("locomo", tmp_path / "tfds", manual_dir)
  assert loaded == locomo.read_locomo(LOCOMO_FIXTURE)


def test_tfds_data_source_reads_prepared_dataset(tfds_builders, tmp_path):
  """After preparation, tfds.data_source reads the dataset by name, in file order."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  manual_dir = _manual_dir(tmp_path, LOCOMO_FIXTURE, "locomo10.json")
  tfds_builders.load_conversations("locomo", tmp_path / "tfds", manual_dir)
  source = tfds.data_source("locomo", data_dir=tmp_path / "tfds", split="full")
  assert [source[k]["sample_id"] for k in range(len(source))] == [b"conv-26", b"conv-30"]


def test_tfds_longmemeval_round_trip(tfds_builders, tmp_path):
  """The longmemeval "oracle" config equals read_longmemeval(chronological=True)."""
  manual_dir = _manual_dir(tmp_path, LONGMEMEVAL_FIXTURE, "longmemeval_oracle.json")
  loaded = tfds_builders.load_conversations("longmemeval", tmp_path / "tfds", manual_dir,
                                            config="oracle")
  assert loaded == longmemeval.read_longmemeval(LONGMEMEVAL_FIXTURE, chronological=True)


def test_tfds_msc_round_trip(tfds_builders, tmp_path):
  """The msc builder gives back the direct reader's records."""
  manual_dir = _manual_dir(tmp_path, MSC_FIXTURE, "msc_self_instruct.jsonl")
  loaded = tfds_builders.load_conversations("msc", tmp_path / "tfds", manual_dir)
  assert loaded == msc.read_msc(MSC_FIXTURE)


@pytest.fixture(name="local_server")
def _local_server(monkeypatch):
  """Serves tests/fixtures over HTTP on 127.0.0.1; yields the base URL."""
  for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    monkeypatch.delenv(name, raising=False)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FIXTURES))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}/"
  server.shutdown()
  server.server_close()


def test_tfds_downloads_when_manual_file_absent(tfds_builders, tmp_path, local_server):
  """Without a manual file the builder downloads its URL (here a local server) and reads it."""
  config = dataclasses.replace(tfds_builders.Locomo.BUILDER_CONFIGS[0], name="local",
                               url=local_server + LOCOMO_FIXTURE.name)
  loaded = tfds_builders.load_conversations("locomo", tmp_path / "tfds", config=config)
  assert loaded == locomo.read_locomo(LOCOMO_FIXTURE)


def test_tfds_failed_download_names_manual_file(tfds_builders, tmp_path, local_server):
  """With no manual file and a failing download, the error says which file to provide."""
  config = dataclasses.replace(tfds_builders.Msc.BUILDER_CONFIGS[0], name="local",
                               url=local_server + "no_such_file.jsonl")
  with pytest.raises(FileNotFoundError, match="msc_self_instruct.jsonl"):
    tfds_builders.load_conversations("msc", tmp_path / "tfds", tmp_path, config=config)


def test_tfds_unreachable_host_fails_fast(tfds_builders, tmp_path):
  """With no manual file and a host that refuses connections, the builder fails at once."""
  config = dataclasses.replace(tfds_builders.Msc.BUILDER_CONFIGS[0], name="unreachable",
                               url="http://127.0.0.1:1/msc_self_instruct.jsonl")
  start = time.monotonic()
  with pytest.raises(FileNotFoundError, match="unreachable"):
    tfds_builders.load_conversations("msc", tmp_path / "tfds", config=config)
  assert time.monotonic() - start < 10


@needs_real_locomo
def test_tfds_real_locomo_round_trip(tfds_builders, tmp_path):
  """The locomo builder on the real locomo10.json gives back all 10 conversations in order."""
  loaded = tfds_builders.load_conversations("locomo", tmp_path / "tfds", REAL_LOCOMO.parent)
  assert loaded == locomo.read_locomo(REAL_LOCOMO)


def test_tfds_malformed_manual_file_raises_data_format_error(tfds_builders, tmp_path):
  """Preparing from a malformed manual file surfaces the reader's DataFormatError."""
  raw = _locomo_raw()
  del raw[0]["qa"][0]["question"]
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  _write_json(manual_dir / "locomo10.json", raw)
  with pytest.raises(errors.DataFormatError, match=r"qa\[0\].question"):
    tfds_builders.load_conversations("locomo", tmp_path / "tfds", manual_dir)
