"""The one in-memory form every dataset reader produces (LoCoMo-shaped).

LoCoMo, LongMemEval, MSC and the synthetic task are all read into these records, so prompts,
episodes and metrics see one format.
"""

from __future__ import annotations

import dataclasses

# LoCoMo QA categories (from the LoCoMo evaluation code; 5 is adversarial and usually excluded).
CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclasses.dataclass(frozen=True)
class Turn:
  """One utterance: `speaker` said `text`; `dia_id` is the dataset's turn id (e.g. "D1:3")."""

  speaker: str
  text: str
  dia_id: str


@dataclasses.dataclass(frozen=True)
class Session:
  """A dated session of turns; `index` counts from 1, `date_time` is the dataset's free-form string."""

  index: int
  date_time: str
  turns: tuple[Turn, ...]


@dataclasses.dataclass(frozen=True)
class QA:
  """A question about a conversation with its gold answer.

  `category` follows LoCoMo (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial);
  other datasets map their question types onto a category and keep the original in `question_type`.
  """

  question: str
  answer: str
  category: int
  evidence: tuple[str, ...] = ()
  adversarial_answer: str | None = None
  question_type: str = ""
  question_date: str | None = None
  qid: str = ""


@dataclasses.dataclass(frozen=True)
class Conversation:
  """A long two-speaker conversation with its questions."""

  sample_id: str
  speaker_a: str
  speaker_b: str
  sessions: tuple[Session, ...]
  qa: tuple[QA, ...]

  @property
  def turns(self) -> list[tuple[Session, Turn]]:
    """All turns in order, each with its session."""
    return [(s, t) for s in self.sessions for t in s.turns]
