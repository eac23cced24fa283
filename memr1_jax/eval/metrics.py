"""Answer metrics: exact match, token F1, BLEU-1 and LoCoMo's stemmed F1.

Three families, each matching a published evaluation so numbers are comparable:

- `exact_match`: SQuAD-style normalisation (lower-case, drop ASCII punctuation and the articles
  a / an / the, collapse whitespace), then string equality. This is the RL reward.
- `token_f1` and `bleu1`: as the memory-agent literature computes them (the A-Mem evaluation
  utilities, reused by Mem0 and Memory-R1). F1 is over token SETS after lower-casing and turning
  `. , ! ?` into spaces; BLEU-1 is nltk's `sentence_bleu` with weights (1, 0, 0, 0) and smoothing
  method1 on lower-cased tokens. Either side empty scores 0, as in that code.
- `locomo_f1`: LoCoMo's own `task_eval/evaluation.py`: normalisation that also drops commas and the
  word "and", Porter stemming, multiset token F1, per-category rules (see the function).

Tokenisation difference for BLEU-1: the reference code calls `nltk.word_tokenize`, which first
splits sentences with the punkt model. punkt's data cannot be downloaded here, so `bleu1` runs
`nltk.tokenize.NLTKWordTokenizer` (the word tokenizer `word_tokenize` uses inside each sentence)
on the whole string. The two agree on single-sentence text; on multi-sentence text a period that
ends an inner sentence stays attached to its word here ("home." instead of "home", ".").
Answers are a few words, so this rarely changes a score.
"""

from __future__ import annotations

import collections
import re
import string

from nltk.stem import PorterStemmer
from nltk.tokenize import NLTKWordTokenizer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

_PUNCTUATION = frozenset(string.punctuation)
_SQUAD_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_LOCOMO_ARTICLES_RE = re.compile(r"\b(a|an|the|and)\b")
_SIMPLE_PUNCT_TABLE = str.maketrans({".": " ", ",": " ", "!": " ", "?": " "})
# Category 5 (adversarial) counts as right when the answer says one of these.
_LOCOMO_ABSTAIN_PHRASES = ("no information available", "not mentioned")

_word_tokenizer = NLTKWordTokenizer()
_stemmer = PorterStemmer()
_bleu_smoothing = SmoothingFunction().method1


def _strip_punctuation(text: str) -> str:
  return "".join(ch for ch in text if ch not in _PUNCTUATION)


def normalize_answer(text: str) -> str:
  """SQuAD normalisation: lower-case, drop ASCII punctuation and articles, collapse whitespace."""
  text = _strip_punctuation(str(text).lower())
  text = _SQUAD_ARTICLES_RE.sub(" ", text)
  return " ".join(text.split())


def exact_match(pred: str, gold: str) -> bool:
  """True when `pred` and `gold` are equal after `normalize_answer`."""
  return normalize_answer(pred) == normalize_answer(gold)


def simple_tokenize(text: str) -> list[str]:
  """A-Mem / Mem0 tokenisation: lower-case, `. , ! ?` to spaces, split on whitespace."""
  return str(text).lower().translate(_SIMPLE_PUNCT_TABLE).split()


def token_f1(pred: str, gold: str) -> float:
  """F1 between the token sets of `pred` and `gold` (A-Mem / Mem0 form); 0 when either is empty."""
  pred_tokens = set(simple_tokenize(pred))
  gold_tokens = set(simple_tokenize(gold))
  common = len(pred_tokens & gold_tokens)
  if common == 0:
    return 0.0
  precision = common / len(pred_tokens)
  recall = common / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def bleu_tokenize(text: str) -> list[str]:
  """Lower-cased Treebank tokens (`NLTKWordTokenizer`, no punkt sentence split; see module doc)."""
  return _word_tokenizer.tokenize(str(text).lower())


def bleu1(pred: str, gold: str) -> float:
  """Sentence BLEU-1 of `pred` against the single reference `gold`; 0 when either is empty."""
  pred_tokens = bleu_tokenize(pred)
  gold_tokens = bleu_tokenize(gold)
  if not pred_tokens or not gold_tokens:
    return 0.0
  return float(
      sentence_bleu([gold_tokens], pred_tokens, weights=(1, 0, 0, 0),
                    smoothing_function=_bleu_smoothing))


def locomo_normalize(text: str) -> str:
  """LoCoMo normalisation: drop commas, lower-case, drop punctuation and a/an/the/and, squeeze."""
  text = _strip_punctuation(str(text).replace(",", "").lower())
  text = _LOCOMO_ARTICLES_RE.sub(" ", text)
  return " ".join(text.split())


def _stemmed_tokens(text: str) -> list[str]:
  return [_stemmer.stem(word) for word in locomo_normalize(text).split()]


def locomo_token_f1(pred: str, gold: str) -> float:
  """LoCoMo's `f1_score`: multiset F1 of Porter-stemmed normalised tokens (0 with no overlap)."""
  pred_tokens = _stemmed_tokens(pred)
  gold_tokens = _stemmed_tokens(gold)
  common = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if common == 0:
    return 0.0
  precision = common / len(pred_tokens)
  recall = common / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def locomo_multi_answer_f1(pred: str, gold: str) -> float:
  """LoCoMo's `f1` for lists: split both on commas; mean over gold parts of the best part F1."""
  pred_parts = [part.strip() for part in str(pred).split(",")]
  gold_parts = [part.strip() for part in str(gold).split(",")]
  best = [max(locomo_token_f1(p, g) for p in pred_parts) for g in gold_parts]
  return sum(best) / len(best)


def locomo_f1(pred: str, gold: str, category: int) -> float:
  """LoCoMo's per-question score for QA `category` (1-5).

  1 (multi-hop): `locomo_multi_answer_f1`; 2 and 4: `locomo_token_f1`; 3: `locomo_token_f1`
  against the part of `gold` before the first ';'; 5 (adversarial): 1.0 when `pred` says
  "no information available" or "not mentioned" (case-insensitive), else 0.0.

  Raises:
    ValueError: for a category outside 1-5.
  """
  if category == 1:
    return locomo_multi_answer_f1(pred, gold)
  if category in (2, 4):
    return locomo_token_f1(pred, gold)
  if category == 3:
    return locomo_token_f1(pred, str(gold).split(";")[0].strip())
  if category == 5:
    lowered = str(pred).lower()
    return float(any(phrase in lowered for phrase in _LOCOMO_ABSTAIN_PHRASES))
  raise ValueError(f"locomo_f1: category must be 1-5, got {category!r}")
