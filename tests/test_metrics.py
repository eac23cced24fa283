"""Tests of memr1_jax.eval: metrics against hand computations and nltk, the judge, the report."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import secrets
import socket

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from memr1_jax.eval import judge as judge_lib
from memr1_jax.eval import metrics
from memr1_jax.eval import report as report_lib
from memr1_jax.testing.chat_server import ChatServer, last_user_message


def _f1_from_counts(common: int, n_pred: int, n_gold: int) -> float:
  """F1 from the overlap size and the two token counts (the textbook formula)."""
  precision, recall = common / n_pred, common / n_gold
  return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- exact match


@pytest.mark.parametrize("text, expected", [
    ("The Cat!", "cat"),
    ("  an  apple, a pear ", "apple pear"),
    ("Theater", "theater"),  # "the" inside a word stays.
    ("8 May, 2023.", "8 may 2023"),
])
def test_normalize_answer_squad_style(text, expected):
  """normalize_answer lower-cases, drops punctuation and articles, and collapses spaces."""
  assert metrics.normalize_answer(text) == expected


def test_exact_match_ignores_case_punctuation_and_articles():
  """Answers that differ only in case, punctuation and articles match exactly."""
  assert metrics.exact_match("The LGBTQ support group.", "lgbtq support group")


def test_exact_match_rejects_different_words():
  """A different word form is not an exact match."""
  assert not metrics.exact_match("cats", "cat")


# ----------------------------------------------------------------------------- token F1


def test_token_f1_hand_worked():
  """'The cat sat.' vs 'the cat': sets {the,cat,sat} / {the,cat}: P=2/3, R=1, F1=0.8."""
  assert metrics.token_f1("The cat sat.", "the cat") == pytest.approx(0.8)


@pytest.mark.parametrize("pred, gold, common, n_pred, n_gold", [
    ("Paris, France!", "paris", 1, 2, 1),
    ("She went on 7 May 2023?", "7 May, 2023", 3, 6, 3),
    ("a b c d", "c d e", 2, 4, 3),
])
def test_token_f1_matches_counts(pred, gold, common, n_pred, n_gold):
  """token_f1 equals the F1 of hand-counted token sets."""
  assert metrics.token_f1(pred, gold) == pytest.approx(_f1_from_counts(common, n_pred, n_gold))


def test_token_f1_uses_token_sets():
  """Repeated tokens count once: 'yes yes no' vs 'yes no' is 1.0."""
  assert metrics.token_f1("yes yes no", "yes no") == 1.0


def test_token_f1_only_replaces_four_punctuation_marks():
  """Only . , ! ? become spaces: 'cat;' stays a different token from 'cat'."""
  assert metrics.token_f1("cat;", "cat") == 0.0
  assert metrics.token_f1("cat?", "cat") == 1.0


def test_token_f1_empty_is_zero():
  """An empty prediction or gold scores 0."""
  assert metrics.token_f1("", "cat") == 0.0
  assert metrics.token_f1("cat", "  ") == 0.0


# ----------------------------------------------------------------------------- BLEU-1


def _nltk_bleu1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
  return sentence_bleu([gold_tokens], pred_tokens, weights=(1, 0, 0, 0),
                       smoothing_function=SmoothingFunction().method1)


def test_bleu1_hand_worked_equal_length():
  """6 tokens each, 5 clipped unigram matches, no brevity penalty: 5/6."""
  assert metrics.bleu1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)


def test_bleu1_hand_worked_brevity_penalty():
  """2 of 2 tokens match a 6-token reference: precision 1 times exp(1 - 6/2)."""
  assert metrics.bleu1("The cat", "the cat is on the mat") == pytest.approx(math.exp(-2))


def test_bleu1_clips_repeated_tokens():
  """'the the the' vs 'the cat the': 'the' is clipped to 2 matches, precision 2/3, no penalty."""
  assert metrics.bleu1("the the the", "the cat the") == pytest.approx(2 / 3)


def test_bleu1_no_overlap_and_empty_are_zero():
  """No shared unigram, or an empty side, gives 0."""
  assert metrics.bleu1("dog", "cat") == 0.0
  assert metrics.bleu1("", "cat") == 0.0
  assert metrics.bleu1("cat", "") == 0.0


@pytest.mark.parametrize("pred, pred_tokens, gold, gold_tokens", [
    ("It's 8 May, 2023!", ["it", "'s", "8", "may", ",", "2023", "!"],
     "8 May 2023", ["8", "may", "2023"]),
    ("She doesn't like (spicy) food.",
     ["she", "does", "n't", "like", "(", "spicy", ")", "food", "."],
     "spicy food", ["spicy", "food"]),
    ("Pottery and painting", ["pottery", "and", "painting"],
     "painting, pottery, and camping", ["painting", ",", "pottery", ",", "and", "camping"]),
])
def test_bleu1_equals_nltk_on_hand_tokenised_text(pred, pred_tokens, gold, gold_tokens):
  """bleu1 equals nltk's sentence_bleu on the Treebank tokens written out by hand."""
  assert metrics.bleu_tokenize(pred) == pred_tokens
  assert metrics.bleu_tokenize(gold) == gold_tokens
  assert metrics.bleu1(pred, gold) == pytest.approx(_nltk_bleu1(pred_tokens, gold_tokens))


def test_bleu_tokenize_keeps_inner_sentence_periods():
  """Without punkt, a period ending an inner sentence stays on its word (documented difference)."""
  assert metrics.bleu_tokenize("I went home. Then slept.") == [
      "i", "went", "home.", "then", "slept", "."]


# ----------------------------------------------------------------------------- LoCoMo F1


def test_locomo_normalize_drops_commas_and_and():
  """LoCoMo normalisation also drops commas and the word 'and'."""
  assert metrics.locomo_normalize("Salt, and the Pepper!") == "salt pepper"


def test_locomo_f1_stems_tokens():
  """'running in the park' vs 'ran in park': stems {run,in,park} / {ran,in,park}: F1 = 2/3."""
  assert metrics.locomo_f1("running in the park", "ran in park", 4) == pytest.approx(2 / 3)


def test_locomo_f1_counts_multisets():
  """Repeated tokens count: 'dog dog cat' vs 'dog cat': overlap 2, P=2/3, R=1, F1=0.8."""
  assert metrics.locomo_f1("dog dog cat", "dog cat", 2) == pytest.approx(0.8)


def test_locomo_f1_multi_hop_mean_of_best():
  """Category 1: gold parts London (best 1.0) and Berlin (best 0.0): mean 0.5."""
  assert metrics.locomo_f1("Paris, London", "London, Berlin", 1) == pytest.approx(0.5)


def test_locomo_f1_multi_hop_partial_parts():
  """Category 1: gold 'red car, blue bike' vs pred 'red car': parts score 1.0 and 0.0."""
  expected = (1.0 + 0.0) / 2
  assert metrics.locomo_f1("red car", "red car, blue bike", 1) == pytest.approx(expected)


def test_locomo_f1_open_domain_uses_first_semicolon_part():
  """Category 3: gold 'Likely yes; since ...' is cut to 'Likely yes' (stems like, yes): F1 = 2/3."""
  assert metrics.locomo_f1("yes", "Likely yes; since she loves it", 3) == pytest.approx(2 / 3)


def test_locomo_f1_adversarial_checks_abstention():
  """Category 5 scores 1 for 'not mentioned' / 'no information available', else 0."""
  assert metrics.locomo_f1("It is Not mentioned in the conversation", "x", 5) == 1.0
  assert metrics.locomo_f1("No information available.", "x", 5) == 1.0
  assert metrics.locomo_f1("She went to Paris", "x", 5) == 0.0


def test_locomo_f1_rejects_unknown_category():
  """A category outside 1-5 is a ValueError naming it."""
  with pytest.raises(ValueError, match="got 6"):
    metrics.locomo_f1("a", "b", 6)


# ----------------------------------------------------------------------------- judge parser


@pytest.mark.parametrize("reply, correct, has_error, unparsed, reason", [
    ('{"reason": "same city", "label": "CORRECT"}', True, False, False, "same city"),
    ('The answers agree.\n```json\n{"reason": "same", "label": "correct"}\n```', True, False, False, "same"),
    ('{"label": "WRONG"}', False, False, False, ""),
    ("Same date in another format, so CORRECT", True, True, False, ""),
    ("Not the same person. WRONG", False, True, False, ""),
    ("I cannot tell.", False, True, True, ""),
    ("", False, True, True, ""),
    ('{"reason": "unsure", "label": "MAYBE"}', False, True, True, ""),
])
def test_parse_judge_output(reply, correct, has_error, unparsed, reason):
  """The JSON label (and reason) wins; a bare label is used with an error; else WRONG, an error and unparsed."""
  verdict = judge_lib.parse_judge_output(reply)
  assert verdict.correct is correct and verdict.unparsed is unparsed
  assert (verdict.format_error is not None) is has_error
  assert verdict.reason == (reason if not unparsed else "")


def test_parse_judge_output_non_string():
  """A non-string reply is WRONG with an error, not an exception."""
  verdict = judge_lib.parse_judge_output(None)
  assert verdict == judge_lib.JudgeVerdict(False, "reply is NoneType, not str", unparsed=True)


def test_judge_prompt_carries_question_gold_and_prediction():
  """The judge prompt holds the three inputs and asks for the JSON label."""
  user = judge_lib.judge_messages("When?", "7 May 2023", "May 7th")[-1]["content"]
  assert "Question: When?" in user and "Gold answer: 7 May 2023" in user
  assert "Generated answer: May 7th" in user and '"label": "CORRECT"}' in user and '"reason"' in user


def test_judge_with_generate_fn_backend():
  """The generate_fn backend gets one rendered prompt per triple; replies map to booleans."""
  seen = []

  def generate_fn(prompts):
    seen.extend(prompts)
    return ['{"label": "CORRECT"}' if "Generated answer: Paris" in p else "WRONG" for p in prompts]

  judge = judge_lib.Judge(judge_lib.generate_fn_backend(generate_fn))
  labels = judge.judge(["Where?", "Where?"], ["Paris", "Paris"], ["Paris", "Rome"])
  assert labels == [True, False]
  assert len(seen) == 2 and seen[0].rstrip().endswith("Assistant:")


def test_judge_reply_count_mismatch_is_wrong_with_error():
  """A backend that returns the wrong number of replies gives WRONG plus an error per item."""
  judge = judge_lib.Judge(lambda conversations: ['{"label": "CORRECT"}'])
  verdicts = judge.verdicts(["q1", "q2"], ["a", "b"], ["a", "b"])
  assert [v.correct for v in verdicts] == [False, False]
  assert all("returned 1 replies for 2" in v.format_error for v in verdicts)


def test_judge_rejects_unequal_inputs():
  """Questions, golds and preds of different lengths are a ValueError."""
  with pytest.raises(ValueError, match="must be equal"):
    judge_lib.Judge(lambda c: []).judge(["q"], ["a", "b"], ["a"])


# ----------------------------------------------------------------------------- judge over HTTP


def _chat_server(fail_first: int = 0, fail_status: int = 500, ok_first: int | None = None) -> ChatServer:
  """A stub judge answering CORRECT when the prediction says Paris; fails the first `fail_first` requests with
  `fail_status` and, with `ok_first`, every request after that many."""
  def reply(body, attempt):
    count = len(server.requests)
    if count <= fail_first or (ok_first is not None and count > ok_first):
      return fail_status
    label = "CORRECT" if "Generated answer: Paris" in last_user_message(body) else "WRONG"
    return json.dumps({"reason": "r", "label": label})

  server = ChatServer(reply)
  return server


@pytest.fixture
def api_key(monkeypatch):
  key = "sk-test-" + secrets.token_hex(12)
  monkeypatch.setenv("MEMR1_TEST_JUDGE_KEY", key)
  return key


def test_http_judge_sends_key_and_grades(api_key, caplog, capsys):
  """The HTTP judge sends the key as a Bearer header, grades right, and never logs or shows it."""
  caplog.set_level(logging.DEBUG)
  with _chat_server(fail_first=1) as server:
    config = judge_lib.HttpJudgeConfig(base_url=server.url, model="judge-model",
                                       api_key_env="MEMR1_TEST_JUDGE_KEY", backoff_s=0.0,
                                       max_concurrency=2)
    judge = judge_lib.Judge(judge_lib.HttpChatBackend(config))
    labels = judge.judge(["Where?", "Where?", "Where?"], ["Paris"] * 3, ["Paris", "Rome", "Paris"])
  assert labels == [True, False, True]
  assert len(server.requests) == 4  # One 500 retried.
  for headers, body in server.requests:
    assert headers["Authorization"] == f"Bearer {api_key}"
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
  shown = [caplog.text, repr(judge), repr(config), json.dumps(vars(config)), str(config)]
  captured = capsys.readouterr()
  assert "attempt 1 of 4" in caplog.text
  assert all(api_key not in text for text in shown + [captured.out, captured.err])


def test_http_judge_error_does_not_leak_key(api_key, caplog):
  """A non-retryable HTTP error raises JudgeHTTPError whose message and logs hold no key."""
  caplog.set_level(logging.DEBUG)
  with _chat_server(fail_first=10, fail_status=401) as server:
    config = judge_lib.HttpJudgeConfig(base_url=server.url, model="m",
                                       api_key_env="MEMR1_TEST_JUDGE_KEY", backoff_s=0.0)
    with pytest.raises(judge_lib.JudgeHTTPError, match="HTTP 401") as error:
      judge_lib.Judge(judge_lib.HttpChatBackend(config)).judge(["q"], ["a"], ["a"])
  assert len(server.requests) == 1
  assert api_key not in str(error.value) and api_key not in caplog.text


def test_http_judge_requires_named_key_variable(monkeypatch):
  """A configured key variable that is unset fails at construction, naming the variable."""
  monkeypatch.delenv("MEMR1_TEST_UNSET_KEY", raising=False)
  config = judge_lib.HttpJudgeConfig(base_url="http://127.0.0.1:9/v1", model="m",
                                     api_key_env="MEMR1_TEST_UNSET_KEY")
  with pytest.raises(ValueError, match="MEMR1_TEST_UNSET_KEY"):
    judge_lib.HttpChatBackend(config)


def test_http_judge_config_rejects_non_http_url():
  """Only http(s) base URLs are accepted (no file:// or other urllib schemes)."""
  with pytest.raises(ValueError, match="base_url"):
    judge_lib.HttpJudgeConfig(base_url="file:///etc/passwd", model="m")


def test_http_judge_check_names_endpoint_model_and_reason():
  """check() against a port nothing listens on raises a one-line JudgeError naming URL, model and reason."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
  config = judge_lib.HttpJudgeConfig(base_url=url, model="judge-model", api_key_env="", max_retries=0)
  with pytest.raises(judge_lib.JudgeError) as error:
    judge_lib.HttpChatBackend(config).check()
  message = str(error.value)
  assert f"{url}/chat/completions" in message and "'judge-model'" in message and "refused" in message.lower()


def test_verdict_cache_reloads_and_skips_a_torn_line(tmp_path):
  """Verdicts are on disk as soon as put; a torn last line is skipped and the next verdict is not lost to it."""
  path = str(tmp_path / "verdicts.jsonl")
  cache = judge_lib.VerdictCache(path)
  cache.put("a", judge_lib.JudgeVerdict(True))
  with open(path, "a") as f:
    f.write('{"key": "b", "corr')  # A writer killed in the middle of a line.
  cache.put("c", judge_lib.JudgeVerdict(False, "no label found"))
  again = judge_lib.VerdictCache(path)
  assert len(again) == 2 and "b" not in again
  assert again.get("a") == judge_lib.JudgeVerdict(True)
  assert again.get("c") == judge_lib.JudgeVerdict(False, "no label found")


def test_cached_verdicts_ask_each_missing_triple_once(tmp_path):
  """Cached triples are not asked again, a repeated triple is asked once, the judge's name is part of the key."""
  asked = []

  def backend(conversations):
    asked.extend(c[-1]["content"] for c in conversations)
    return ['{"label": "CORRECT"}' if "Generated answer: Paris" in c[-1]["content"] else '{"label": "WRONG"}'
            for c in conversations]

  cache = judge_lib.VerdictCache(str(tmp_path / "verdicts.jsonl"))
  judge = judge_lib.Judge(backend, name="judge-a")
  cache.put(judge_lib.verdict_key("judge-a", "q1", "Paris", "Rome"), judge_lib.JudgeVerdict(True, "cached"))
  verdicts = judge.cached_verdicts(["q1", "q2", "q2"], ["Paris"] * 3, ["Rome", "Paris", "Paris"], cache)
  assert verdicts == [judge_lib.JudgeVerdict(True, "cached"), judge_lib.JudgeVerdict(True),
                      judge_lib.JudgeVerdict(True)]
  assert len(asked) == 1 and "Question: q2" in asked[0]
  judge_lib.Judge(backend, name="judge-b").cached_verdicts(["q1"], ["Paris"], ["Rome"], cache)
  assert len(asked) == 2 and len(judge_lib.VerdictCache(cache.path)) == 3


def test_cached_verdicts_keep_what_came_before_the_endpoint_failed(tmp_path):
  """An endpoint that fails after 2 replies: JudgeHTTPError, and those 2 verdicts are in the cache on disk."""
  with _chat_server(ok_first=2) as server:
    config = judge_lib.HttpJudgeConfig(base_url=server.url, model="m", api_key_env="", max_retries=0,
                                       max_concurrency=1)
    judge = judge_lib.Judge(judge_lib.HttpChatBackend(config), name="m")
    cache = judge_lib.VerdictCache(str(tmp_path / "verdicts.jsonl"))
    with pytest.raises(judge_lib.JudgeHTTPError, match="HTTP 500"):
      judge.cached_verdicts(["q1", "q2", "q3", "q4"], ["Paris"] * 4, ["Paris", "Rome", "Paris", "Rome"], cache)
  saved = judge_lib.VerdictCache(cache.path)
  assert len(saved) == 2
  assert saved.get(judge_lib.verdict_key("m", "q1", "Paris", "Paris")) == judge_lib.JudgeVerdict(True, reason="r")
  assert saved.get(judge_lib.verdict_key("m", "q2", "Paris", "Rome")) == judge_lib.JudgeVerdict(False, reason="r")


# ----------------------------------------------------------------------------- report


_RECORDS = [
    report_lib.EvalRecord(1, "Paris", "paris", True),
    report_lib.EvalRecord(1, "the cat sat", "the cat", False),
    report_lib.EvalRecord(2, "dog", "cat", None),
    report_lib.EvalRecord(4, "7 May 2023", "7 May 2023", True),
]


def test_category_report_hand_worked():
  """Per-category and overall means, J over labelled records only, None where none is labelled."""
  rows = report_lib.category_report(_RECORDS)
  by_name = {row.name: row for row in rows}
  assert [row.name for row in rows] == ["multi-hop", "temporal", "single-hop", "overall"]
  multi = by_name["multi-hop"]
  assert multi.count == 2 and multi.em == 0.5
  assert multi.f1 == pytest.approx((1.0 + 0.8) / 2)
  assert multi.bleu1 == pytest.approx((1.0 + 2 / 3) / 2)
  assert multi.j == 0.5 and multi.j_count == 2
  assert by_name["temporal"].j is None and by_name["temporal"].f1 == 0.0
  overall = by_name["overall"]
  assert overall.count == 4 and overall.em == pytest.approx(2 / 4)
  assert overall.f1 == pytest.approx((1.0 + 0.8 + 0.0 + 1.0) / 4)
  assert overall.j == pytest.approx(2 / 3) and overall.j_count == 3
  assert overall.locomo_f1 is None


def test_category_report_accepts_tuples():
  """(category, pred, gold, judge) tuples give the same report as EvalRecords."""
  tuples = [dataclasses.astuple(r) for r in _RECORDS]
  assert report_lib.category_report(tuples) == report_lib.category_report(_RECORDS)


def test_category_report_locomo_option():
  """With the option, LoCoMo F1 is the mean of metrics.locomo_f1 over the group."""
  rows = report_lib.category_report(_RECORDS, with_locomo_f1=True)
  expected = sum(metrics.locomo_f1(r.pred, r.gold, r.category) for r in _RECORDS) / 4
  assert rows[-1].locomo_f1 == pytest.approx(expected)


def test_category_report_rejects_empty():
  """No records is a ValueError."""
  with pytest.raises(ValueError, match="no records"):
    report_lib.category_report([])


def test_render_table_is_fixed_width_percent():
  """The table has one aligned line per row, scores in percent, '-' for missing J."""
  table = report_lib.render_table(report_lib.category_report(_RECORDS))
  lines = table.rstrip("\n").split("\n")
  assert len({len(line) for line in lines}) == 1
  assert lines[0].split() == ["category", "count", "EM", "F1", "BLEU-1", "J"]
  temporal = next(line for line in lines if line.startswith("temporal"))
  assert temporal.split() == ["temporal", "1", "0.00", "0.00", "0.00", "-"]
  assert lines[-1].split()[:3] == ["overall", "4", "50.00"]


def test_write_report_writes_table_and_json(tmp_path):
  """write_report writes the table and a JSON file that reads back to the same rows."""
  rows = report_lib.category_report(_RECORDS)
  text_path, json_path = report_lib.write_report(rows, tmp_path / "eval")
  assert text_path.read_text() == report_lib.render_table(rows)
  data = json.loads(json_path.read_text())
  assert data["scale"] == "fraction"
  assert [report_lib.GroupScores(**group) for group in data["groups"]] == rows
