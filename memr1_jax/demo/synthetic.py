"""The synthetic memory task of the CPU demo (generator, statement reader, oracle operations): dated two-speaker
conversations in which facts change.

Each speaker holds a few attributes ("slots": the city they live in, their job, pet, vehicle,
partner, hobby, favourite food), each drawn from a small vocabulary. Over dated sessions a speaker
states a slot for the first time ("I moved to Porto."), changes it ("We left Porto for Lyon."),
retracts it ("I sold my bike.") or restates it ("I still live in Lyon."); filler chit-chat and the
other speaker's replies carry no facts. Questions have short gold answers and LoCoMo categories:

- 4 single-hop, the latest state: "Where does Anna live now?" -> "Lyon"; "Does Anna own a bike
  now?" -> "no" after the bike was sold ("yes" while she still owns it);
- 1 multi-hop, what changed: "Where did Anna live before Lyon?" -> "Porto";
- 2 temporal, when the current value began: "When did Anna move to Lyon?" -> "8 May 2023" (the
  session date, LoCoMo's "1:56 pm on 8 May, 2023" without the time).

`evidence` holds the dia_ids of the turns that establish the answer. Conversations are written in
the LoCoMo JSON format (`write_locomo_json`), so `locomo.read_locomo` reads them back unchanged and
the same prompts, episodes and metrics apply.

Why an ADD-only memory manager fails and an UPDATE / DELETE manager succeeds
----------------------------------------------------------------------------
Every question is about a slot's state at the end of the conversation, and values change. A manager
that only ever ADDs keeps one memory per statement: after "I moved to Porto." and, sessions later,
"I moved to Lyon." (the change often does not name the old value; `changes_name_old` makes every
change name it: "We left Porto for Lyon.") its bank holds both, with nothing
in their text saying which is current; only comparing the two session dates ("... 8 May, 2023"
against "... 2 March, 2023") decides "Where does Anna live now?", and a retraction ("I sold my
bike.") sits next to the purchase it cancels. An answer agent that does not compare dates (a
small model, or memories shown in relevance order rather than time order) has to guess between
the stale and the current value; "before" questions need the same ordering. The ideal
manager instead keeps exactly one memory per live fact: UPDATE rewrites it in place ("Anna has
lived in Lyon since 8 May 2023; before that in Porto."), so the current value, the value before it
and the date of the change are all in one memory, and DELETE removes a retracted fact, so "Does
Anna own a bike now?" -> "no" follows from its absence. Every question is answerable from that
final bank alone (the tests check it); `oracle_bank_ops` gives those ideal operations per turn.
Values never repeat within one speaker's slot, so "before Lyon" and "a bike" are unambiguous.

Fact ids count ADDs from 0 in turn order within a conversation, which is how a fresh
`memory.MemoryBank` numbers its entries when the oracle operations are applied to it in order.

Difficulty knobs (`TaskKnobs`): the number of sessions, slots per speaker, the probabilities that a
live fact is updated, retracted or restated in a later session, the filler ratio, how often the
other speaker echoes a new value, the cap on updates per fact, and whether every change names the
value it replaces (then an UPDATE that just stores the new statement keeps what "before" questions need).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import random
import re
from collections.abc import Sequence

from memr1_jax.data import schema
from memr1_jax.memory.operations import NOOP, MemoryOp, OpKind

SPEAKER_NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas",
                 "Kate", "Lucas")
PET_NAMES = ("Rex", "Milo", "Luna", "Max", "Coco", "Bella", "Toby", "Daisy")


@dataclasses.dataclass(frozen=True)
class Slot:
  """One attribute a speaker holds, its vocabulary, and the sentences that state or ask about it.

  Statement templates are first person ({new}, {old}: values; {pet_name}: decoration). `memory`
  and `before` build the ideal memory text; the question templates take {name} and {value}.
  """

  name: str
  values: tuple[str, ...]
  set_templates: tuple[str, ...]
  change_templates: tuple[str, ...]
  retract_templates: tuple[str, ...]
  restate_templates: tuple[str, ...]
  echo_templates: tuple[str, ...]
  memory: str
  before: str
  latest_question: str
  yes_no_question: str | None
  before_question: str
  when_question: str

  @property
  def retractable(self) -> bool:
    """Whether a speaker can lose this attribute (sell the bike) rather than only change it."""
    return bool(self.retract_templates)


SLOTS = {slot.name: slot for slot in (
    Slot(name="city",
         values=("Porto", "Lyon", "Berlin", "Madrid", "Oslo", "Dublin", "Vienna", "Prague", "Turin",
                 "Leeds"),
         set_templates=("I moved to {new}.", "I just found a flat in {new}.", "I live in {new} now."),
         change_templates=("We left {old} for {new}.", "I moved from {old} to {new}."),
         retract_templates=(),
         restate_templates=("I still live in {new}.", "Life in {new} is still great."),
         echo_templates=("{new} is a lovely city!", "You live in {new} now? Nice!"),
         memory="{name} has lived in {value} since {date}", before="in {value}",
         latest_question="Where does {name} live now?", yes_no_question=None,
         before_question="Where did {name} live before {value}?",
         when_question="When did {name} move to {value}?"),
    Slot(name="job",
         values=("nurse", "teacher", "baker", "chef", "pilot", "farmer", "lawyer", "painter",
                 "driver", "doctor"),
         set_templates=("I started a new job as a {new}.", "I got hired as a {new}.",
                        "I work as a {new} now."),
         change_templates=("I quit being a {old} and now I work as a {new}.",
                           "I am not a {old} anymore, I am a {new} now."),
         retract_templates=("I quit my job as a {old}.", "I lost my job as a {old}."),
         restate_templates=("I still work as a {new}.",),
         echo_templates=("A {new}? That suits you!", "Good luck as a {new}!"),
         memory="{name} has worked as a {value} since {date}", before="as a {value}",
         latest_question="What is {name}'s job now?",
         yes_no_question="Does {name} work as a {value} now?",
         before_question="What was {name}'s job before {value}?",
         when_question="When did {name} start working as a {value}?"),
    Slot(name="pet",
         values=("dog", "cat", "parrot", "rabbit", "hamster", "turtle", "goldfish", "pony"),
         set_templates=("I got a {new} named {pet_name}.", "We adopted a {new} named {pet_name}.",
                        "I have a {new} now."),
         change_templates=("I gave my {old} to a friend and got a {new}.",),
         retract_templates=("I gave my {old} to a friend.", "My {old} ran away."),
         restate_templates=("My {new} is doing well.",),
         echo_templates=("A {new}? So cute!", "I love a good {new}!"),
         memory="{name} has had a {value} since {date}", before="a {value}",
         latest_question="What pet does {name} have now?",
         yes_no_question="Does {name} have a {value} now?",
         before_question="What pet did {name} have before the {value}?",
         when_question="When did {name} get the {value}?"),
    Slot(name="vehicle",
         values=("bike", "car", "scooter", "van", "motorbike", "boat"),
         set_templates=("I bought a {new}.", "I have a {new} now."),
         change_templates=("I sold my {old} and bought a {new}.", "I traded my {old} for a {new}."),
         retract_templates=("I sold my {old}.", "My {old} was stolen."),
         restate_templates=("I still have my {new}.",),
         echo_templates=("A new {new}? Lucky you!", "A {new}? Nice!"),
         memory="{name} has owned a {value} since {date}", before="a {value}",
         latest_question="What vehicle does {name} own now?",
         yes_no_question="Does {name} own a {value} now?",
         before_question="What did {name} own before the {value}?",
         when_question="When did {name} buy the {value}?"),
    Slot(name="partner",
         values=("Tom", "Sam", "Leo", "Mia", "Zoe", "Nina", "Omar", "Ivan", "Rosa", "Paul"),
         set_templates=("I started dating {new}.", "I am seeing {new} now."),
         change_templates=("{old} and I broke up, and now I am dating {new}.",),
         retract_templates=("{old} and I broke up.", "I am not seeing {old} anymore."),
         restate_templates=("{new} and I are still together.",),
         echo_templates=("I am happy for you and {new}!", "{new} sounds lovely!"),
         memory="{name} has been dating {value} since {date}", before="{value}",
         latest_question="Who is {name} dating now?",
         yes_no_question="Is {name} dating {value} now?",
         before_question="Who was {name} dating before {value}?",
         when_question="When did {name} start dating {value}?"),
    Slot(name="hobby",
         values=("chess", "tennis", "yoga", "guitar", "golf", "fishing", "hiking", "running",
                 "knitting", "swimming"),
         set_templates=("I took up {new}.", "I am really into {new} now."),
         change_templates=("I gave up {old} and took up {new}.", "I switched from {old} to {new}."),
         retract_templates=("I gave up {old}.", "I do not do {old} anymore."),
         restate_templates=("I still love {new}.",),
         echo_templates=("{new} sounds fun!", "Have fun with {new}!"),
         memory="{name}'s hobby has been {value} since {date}", before="{value}",
         latest_question="What is {name}'s hobby now?",
         yes_no_question="Is {value} {name}'s hobby now?",
         before_question="What was {name}'s hobby before {value}?",
         when_question="When did {name} take up {value}?"),
    Slot(name="food",
         values=("pizza", "sushi", "pasta", "tacos", "curry", "soup", "salad", "ramen"),
         set_templates=("My favourite food is {new} now.", "I am crazy about {new} these days."),
         change_templates=("I like {new} more than {old} now.",),
         retract_templates=(),
         restate_templates=("My favourite food is still {new}.",),
         echo_templates=("Yum, {new}!", "Good choice, {new} is great."),
         memory="{name}'s favourite food has been {value} since {date}", before="{value}",
         latest_question="What is {name}'s favourite food now?", yes_no_question=None,
         before_question="What was {name}'s favourite food before {value}?",
         when_question="When did {value} become {name}'s favourite food?"),
)}

GREETINGS = ("Hi {other}! How are you?", "Hey {other}, long time no see!", "Good to see you, {other}!")
GREETING_REPLIES = ("Hi {other}! I am good, thanks.", "Hey {other}! All good here.")
BRIDGES = ("So, what is new with you?", "Any news on your side?", "Tell me, how are things?")
FILLER_EXCHANGES = (
    ("How was your week?", "It was busy but fine."),
    ("Did you watch the game last night?", "Yes, it was a close one!"),
    ("The weather is so nice today.", "Yes, finally some sun."),
    ("Any plans for the weekend?", "Not yet, maybe a long walk."),
    ("I read a good book last week.", "Oh, what was it about?"),
    ("How is your family?", "They are all well, thanks."),
    ("I feel a bit tired today.", "Get some rest tonight."),
    ("Did you try the new cafe in town?", "Not yet, is it good?"),
    ("Work was long today.", "Mine too, I need a break."),
    ("I saw a funny movie yesterday.", "I love funny movies."),
)
REPLIES = ("That is great news!", "Wow, good for you!", "Nice, I am glad to hear that.", "Oh, I see.",
           "Sounds good!")
RETRACT_REPLIES = ("Oh no, I am sorry.", "That is a big change.", "Oh, I see.")
CLOSINGS = (("I have to go now. Bye!", "Bye, talk soon!"), ("It was nice to chat.", "Same here, see you!"))

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
# Most filler exchanges before one fact turn.
_MAX_FILLERS_PER_GAP = 3


@dataclasses.dataclass(frozen=True)
class TaskKnobs:
  """Difficulty of the generated conversations.

  Attributes:
    num_sessions: dated sessions per conversation.
    facts_per_speaker: slots each speaker holds (at most `len(SLOTS)`); each is first stated in a
      session of the first half.
    update_prob: chance per later session that a live fact changes value (and that a retracted
      slot gets a new value).
    retract_prob: chance per later session that a live fact of a retractable slot is retracted.
    restate_prob: chance per later session that a live fact is said again unchanged (a NOOP turn); for a slot
      that cannot be retracted (city, food) the retract_prob share is a restatement too.
    filler_ratio: chance, repeated, of one more filler exchange before each fact (at most
      `_MAX_FILLERS_PER_GAP`); 0 means no filler between facts.
    echo_prob: chance that the other speaker's reply repeats the new value ("Lyon is a lovely city!").
    max_updates_per_fact: UPDATEs a fact takes before it only stays, is restated or is retracted.
    changes_name_old: every change of value names the value it replaces ("We left Porto for Lyon.");
      False: a change is as often said like a first statement ("I moved to Lyon.").
  """

  num_sessions: int = 4
  facts_per_speaker: int = 3
  update_prob: float = 0.4
  retract_prob: float = 0.15
  restate_prob: float = 0.1
  filler_ratio: float = 0.3
  echo_prob: float = 0.3
  max_updates_per_fact: int = 2
  changes_name_old: bool = False

  def __post_init__(self):
    if self.num_sessions < 1:
      raise ValueError(f"TaskKnobs.num_sessions must be >= 1, got {self.num_sessions}")
    if not 1 <= self.facts_per_speaker <= len(SLOTS):
      raise ValueError(f"TaskKnobs.facts_per_speaker must be in [1, {len(SLOTS)}], "
                       f"got {self.facts_per_speaker}")
    for name in ("update_prob", "retract_prob", "restate_prob", "filler_ratio", "echo_prob"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"TaskKnobs.{name} must be in [0, 1], got {value}")
    if self.update_prob + self.retract_prob + self.restate_prob > 1.0:
      raise ValueError("TaskKnobs.update_prob + retract_prob + restate_prob must be <= 1, got "
                       f"{self.update_prob + self.retract_prob + self.restate_prob}")
    if self.max_updates_per_fact < 0:
      raise ValueError(f"TaskKnobs.max_updates_per_fact must be >= 0, got {self.max_updates_per_fact}")


@dataclasses.dataclass(frozen=True)
class FactEvent:
  """A turn that states a fact, with the operation it implies on the ideal memory.

  Attributes:
    dia_id: the turn.
    date: its session's date as an answer ("8 May 2023").
    speaker: who said it (the fact is about them).
    slot: a key of `SLOTS`.
    op: ADD (first value, or a value after a retraction), UPDATE (a new value replaces the live
      one), DELETE (the live value is retracted) or NOOP (the live value restated).
    fact_id: the memory the operation creates or targets.
    value: the value held after the turn (ADD / UPDATE / NOOP) or the value retracted (DELETE).
    previous: the value replaced (UPDATE only).
  """

  dia_id: str
  date: str
  speaker: str
  slot: str
  op: OpKind
  fact_id: int
  value: str
  previous: str | None = None


@dataclasses.dataclass(frozen=True)
class _Plan:
  """One fact statement scheduled in a session (fact ids are given when turns are laid out)."""

  speaker: str
  slot: str
  op: OpKind
  value: str
  previous: str | None = None


def generate_conversations(n: int, seed: int, **knobs) -> list[schema.Conversation]:
  """`n` synthetic conversations with questions, the same for the same `seed` and knobs.

  Args:
    n: how many conversations.
    seed: the generator seed; conversation i depends only on (seed, i, knobs), so a longer list
      starts with the shorter one.
    **knobs: fields of `TaskKnobs` (difficulty).

  Returns:
    Conversations with sample_ids "synth-<seed>-<i>" and QA qids "<sample_id>:<index>" (as
    `locomo.read_locomo` numbers them).
  """
  task = TaskKnobs(**knobs)
  return [_conversation(seed, i, task) for i in range(n)]


def train_heldout_split(num_train: int, num_heldout: int, seed: int, **knobs
                        ) -> tuple[list[schema.Conversation], list[schema.Conversation]]:
  """Training and held-out conversations from two different seeds, with no conversation shared.

  Training uses seed `2 * seed`, held-out `2 * seed + 1`; a held-out conversation whose speakers
  and sessions equal a training one is skipped and the next one taken.

  Returns:
    (train, heldout) lists of `num_train` and `num_heldout` conversations.
  """
  task = TaskKnobs(**knobs)
  train = [_conversation(2 * seed, i, task) for i in range(num_train)]
  seen = {_content_key(c) for c in train}
  heldout = []
  for i in itertools.count():
    if len(heldout) == num_heldout:
      break
    candidate = _conversation(2 * seed + 1, i, task)
    if _content_key(candidate) not in seen:
      heldout.append(candidate)
      seen.add(_content_key(candidate))
  return train, heldout


def _content_key(conversation: schema.Conversation) -> tuple:
  return (conversation.speaker_a, conversation.speaker_b, conversation.sessions)


def _conversation(seed: int, index: int, task: TaskKnobs) -> schema.Conversation:
  """Conversation `index` of `seed`: plan the fact events per session, then lay out the turns."""
  rng = random.Random(f"memr1-synthetic:{seed}:{index}")
  speakers = rng.sample(SPEAKER_NAMES, 2)
  plans = _plan_sessions(rng, speakers, task)
  dates = _session_dates(rng, task.num_sessions)
  sessions, events = [], []
  next_fact_id = 0
  fact_ids: dict[tuple[str, str], int] = {}
  for number, (date_time, session_plans) in enumerate(zip(dates, plans), start=1):
    turns, turn_plans = _session_turns(rng, speakers, session_plans, task)
    answer_date = answer_date_of(date_time)
    for position, plan in turn_plans:
      key = (plan.speaker, plan.slot)
      if plan.op == OpKind.ADD:
        fact_ids[key] = next_fact_id
        next_fact_id += 1
      events.append(FactEvent(dia_id=f"D{number}:{position}", date=answer_date, speaker=plan.speaker,
                              slot=plan.slot, op=plan.op, fact_id=fact_ids[key], value=plan.value,
                              previous=plan.previous))
    dia_turns = tuple(schema.Turn(speaker=speaker, text=text, dia_id=f"D{number}:{t}")
                      for t, (speaker, text) in enumerate(turns, start=1))
    sessions.append(schema.Session(index=number, date_time=date_time, turns=dia_turns))
  sample_id = f"synth-{seed}-{index}"
  qa = tuple(dataclasses.replace(q, qid=f"{sample_id}:{j}")
             for j, q in enumerate(_questions(events, speakers)))
  return schema.Conversation(sample_id=sample_id, speaker_a=speakers[0], speaker_b=speakers[1],
                             sessions=tuple(sessions), qa=qa)


def _plan_sessions(rng: random.Random, speakers: Sequence[str], task: TaskKnobs
                   ) -> list[list[_Plan]]:
  """Per session, the fact statements in turn order (at most one per speaker and slot)."""
  slots = {speaker: rng.sample(sorted(SLOTS), task.facts_per_speaker) for speaker in speakers}
  last_intro = max(1, (task.num_sessions + 1) // 2)
  intro = {(speaker, slot): rng.randint(1, last_intro) for speaker in speakers for slot in slots[speaker]}
  live: dict[tuple[str, str], str | None] = {key: None for key in intro}
  used: dict[tuple[str, str], set[str]] = {key: set() for key in intro}
  updates = {key: 0 for key in intro}
  plans = []
  for session in range(1, task.num_sessions + 1):
    session_plans = []
    for key in intro:
      speaker, slot_name = key
      slot = SLOTS[slot_name]
      if session < intro[key]:
        continue
      unused = [v for v in slot.values if v not in used[key]]
      current = live[key]
      if current is None:  # first statement, or a new value after a retraction
        if session > intro[key] and not (unused and rng.random() < task.update_prob):
          continue
        plan = _Plan(speaker, slot_name, OpKind.ADD, rng.choice(unused))
        updates[key] = 0
      else:
        draw = rng.random()
        if draw < task.update_prob and unused and updates[key] < task.max_updates_per_fact:
          plan = _Plan(speaker, slot_name, OpKind.UPDATE, rng.choice(unused), previous=current)
          updates[key] += 1
        elif draw < task.update_prob + task.retract_prob and slot.retractable:
          plan = _Plan(speaker, slot_name, OpKind.DELETE, current)
        elif draw < task.update_prob + task.retract_prob + task.restate_prob:
          plan = _Plan(speaker, slot_name, OpKind.NOOP, current)
        else:
          continue
      live[key] = None if plan.op == OpKind.DELETE else plan.value
      used[key].add(plan.value)
      session_plans.append(plan)
    rng.shuffle(session_plans)
    plans.append(session_plans)
  return plans


def _session_dates(rng: random.Random, num_sessions: int) -> list[str]:
  """LoCoMo-style date-times ("1:56 pm on 8 May, 2023"), between 8 am and 10 pm, 3 to 30 days apart."""
  day = datetime.date(2023, 1, 1) + datetime.timedelta(days=rng.randint(0, 180))
  dates = []
  for _ in range(num_sessions):
    hour, minute = rng.randint(8, 21), rng.randint(0, 59)
    half = "am" if hour < 12 else "pm"
    clock = f"{(hour - 1) % 12 + 1}:{minute:02d} {half}"
    dates.append(f"{clock} on {day.day} {_MONTHS[day.month - 1]}, {day.year}")
    day += datetime.timedelta(days=rng.randint(3, 30))
  return dates


_DATE_TIME_RE = re.compile(r"\d{1,2}:\d{2} [ap]m on (\d{1,2}) ([A-Za-z]+), (\d{4})")


def answer_date_of(date_time: str) -> str:
  """The answer form of a session date-time: "1:56 pm on 8 May, 2023" -> "8 May 2023"."""
  match = _DATE_TIME_RE.fullmatch(date_time)
  if match is None:
    raise ValueError(f"session date {date_time!r} is not of the form '1:56 pm on 8 May, 2023'")
  return f"{match.group(1)} {match.group(2)} {match.group(3)}"


def _session_turns(rng: random.Random, speakers: Sequence[str], plans: Sequence[_Plan],
                   task: TaskKnobs) -> tuple[list[tuple[str, str]], list[tuple[int, _Plan]]]:
  """One session's (speaker, text) turns, speakers alternating, and the turn number of each plan."""
  turns: list[tuple[str, str]] = []
  fact_turns = []

  def other(speaker: str) -> str:
    return speakers[1] if speaker == speakers[0] else speakers[0]

  def say(speaker: str, text: str) -> None:
    turns.append((speaker, text))

  opener = rng.choice(speakers)
  say(opener, rng.choice(GREETINGS).format(other=other(opener)))
  say(other(opener), rng.choice(GREETING_REPLIES).format(other=opener))
  for plan in plans:
    for _ in range(_MAX_FILLERS_PER_GAP):
      if rng.random() >= task.filler_ratio:
        break
      asker = other(turns[-1][0])
      question, answer = rng.choice(FILLER_EXCHANGES)
      say(asker, question)
      say(other(asker), answer)
    if turns[-1][0] == plan.speaker:
      say(other(plan.speaker), rng.choice(BRIDGES))
    say(plan.speaker, _statement(rng, plan, task))
    fact_turns.append((len(turns), plan))
    say(other(plan.speaker), _reply(rng, plan, task))
  closer = other(turns[-1][0])
  closing, closing_reply = rng.choice(CLOSINGS)
  say(closer, closing)
  say(other(closer), closing_reply)
  return turns, fact_turns


def _statement(rng: random.Random, plan: _Plan, task: TaskKnobs) -> str:
  """The fact turn of `plan` from its slot's templates."""
  slot = SLOTS[plan.slot]
  if plan.op == OpKind.ADD:
    templates = slot.set_templates
  elif plan.op == OpKind.UPDATE:
    templates = slot.change_templates if task.changes_name_old else slot.set_templates + slot.change_templates
  elif plan.op == OpKind.DELETE:
    templates = slot.retract_templates
  else:
    templates = slot.restate_templates
  old = plan.previous if plan.op == OpKind.UPDATE else plan.value
  return rng.choice(templates).format(new=plan.value, old=old, pet_name=rng.choice(PET_NAMES))


def _reply(rng: random.Random, plan: _Plan, task: TaskKnobs) -> str:
  """The other speaker's answer to a fact turn: sympathy, a generic reply, or an echo of the value."""
  if plan.op == OpKind.DELETE:
    return rng.choice(RETRACT_REPLIES)
  if plan.op != OpKind.NOOP and rng.random() < task.echo_prob:
    text = rng.choice(SLOTS[plan.slot].echo_templates).format(new=plan.value)
    return text[0].upper() + text[1:]
  return rng.choice(REPLIES)


@dataclasses.dataclass
class _History:
  """One speaker's slot as the questions need it: the live fact's values in order, and retractions."""

  chain: list[FactEvent] = dataclasses.field(default_factory=list)
  retracted: list[tuple[FactEvent, FactEvent]] = dataclasses.field(default_factory=list)


def _questions(events: Sequence[FactEvent], speakers: Sequence[str]) -> list[schema.QA]:
  """The QA of a conversation from its fact events, grouped by speaker and slot in first-event order."""
  histories: dict[tuple[str, str], _History] = {}
  for event in events:
    history = histories.setdefault((event.speaker, event.slot), _History())
    if event.op == OpKind.ADD:
      history.chain = [event]
    elif event.op == OpKind.UPDATE:
      history.chain.append(event)
    elif event.op == OpKind.DELETE:
      history.retracted.append((history.chain[-1], event))
      history.chain = []
  qa = []
  for speaker in speakers:
    for (who, slot_name), history in histories.items():
      if who == speaker:
        qa.extend(_slot_questions(speaker, SLOTS[slot_name], history))
  return qa


def _slot_questions(name: str, slot: Slot, history: _History) -> list[schema.QA]:
  """Latest state (category 4), before (1) and when (2) questions about one speaker's slot."""
  qa = []
  for established, retraction in history.retracted:
    qa.append(schema.QA(question=slot.yes_no_question.format(name=name, value=established.value),
                        answer="no", category=4, evidence=(established.dia_id, retraction.dia_id)))
  if not history.chain:
    return qa
  current = history.chain[-1]
  qa.append(schema.QA(question=slot.latest_question.format(name=name), answer=current.value,
                      category=4, evidence=(current.dia_id,)))
  if slot.yes_no_question is not None:
    qa.append(schema.QA(question=slot.yes_no_question.format(name=name, value=current.value),
                        answer="yes", category=4, evidence=(current.dia_id,)))
  for earlier, later in zip(history.chain, history.chain[1:]):
    qa.append(schema.QA(question=slot.before_question.format(name=name, value=later.value),
                        answer=earlier.value, category=1, evidence=(earlier.dia_id, later.dia_id)))
  qa.append(schema.QA(question=slot.when_question.format(name=name, value=current.value),
                      answer=current.date, category=2, evidence=(current.dia_id,)))
  return qa


# ------------------------------------------------------------------ reading facts back from text


def _template_regex(template: str) -> re.Pattern[str]:
  """A full-match regex for a statement template; {new} / {old} capture slot values."""
  pattern = re.escape(template)
  pattern = pattern.replace(re.escape("{pet_name}"), "(?:" + "|".join(PET_NAMES) + ")")
  for field in ("new", "old"):
    pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>[^ .,!?]+)")
  return re.compile(pattern)


def _statement_patterns() -> list[tuple[str, bool, re.Pattern[str]]]:
  """(slot, is_retraction, regex) for every first-person statement template."""
  patterns = []
  for slot in SLOTS.values():
    for template in slot.set_templates + slot.change_templates + slot.restate_templates:
      patterns.append((slot.name, False, _template_regex(template)))
    for template in slot.retract_templates:
      patterns.append((slot.name, True, _template_regex(template)))
  return patterns


_STATEMENT_PATTERNS = _statement_patterns()


def parse_statement(text: str) -> tuple[str, str | None, str | None, bool] | None:
  """Reads a fact turn: (slot, new value, old value, is_retraction), or None for any other text.

  A retraction gives (slot, None, retracted value, True); a statement gives its new value and, when
  the sentence names it, the old one. Only values of the slot's vocabulary count.
  """
  for slot_name, is_retraction, pattern in _STATEMENT_PATTERNS:
    match = pattern.fullmatch(text)
    if match is None:
      continue
    fields = match.groupdict()
    values = SLOTS[slot_name].values
    if any(value is not None and value not in values for value in fields.values()):
      continue
    return slot_name, fields.get("new"), fields.get("old"), is_retraction
  return None


def fact_events(conversation: schema.Conversation) -> list[FactEvent]:
  """The fact turns of a synthetic conversation, read from the text and replayed in turn order.

  Each turn is matched against the statement templates (`parse_statement`) and applied to the
  speaker's slot: the first value (or one after a retraction) is an ADD, another value an UPDATE,
  the same value a NOOP, a retraction a DELETE. Works on a conversation read back from JSON.

  Raises:
    ValueError: a statement contradicts the state so far (e.g. retracts a value not held); the
      message names the sample and the turn.
  """
  events = []
  live: dict[tuple[str, str], tuple[int, str]] = {}
  next_fact_id = 0
  for session, turn in conversation.turns:
    parsed = parse_statement(turn.text)
    if parsed is None:
      continue
    slot, new, old, is_retraction = parsed
    key = (turn.speaker, slot)
    held = live.get(key)
    where = f"{conversation.sample_id} turn {turn.dia_id} ({turn.text!r})"
    if old is not None and (held is None or held[1] != old):
      raise ValueError(f"{where}: names {old!r} but {turn.speaker}'s {slot} is "
                       f"{held[1] if held else 'not set'}")
    date = answer_date_of(session.date_time)
    if is_retraction:
      event = FactEvent(turn.dia_id, date, turn.speaker, slot, OpKind.DELETE, held[0], old)
      del live[key]
    elif held is None:
      event = FactEvent(turn.dia_id, date, turn.speaker, slot, OpKind.ADD, next_fact_id, new)
      live[key] = (next_fact_id, new)
      next_fact_id += 1
    elif held[1] == new:
      event = FactEvent(turn.dia_id, date, turn.speaker, slot, OpKind.NOOP, held[0], new)
    else:
      event = FactEvent(turn.dia_id, date, turn.speaker, slot, OpKind.UPDATE, held[0], new,
                        previous=held[1])
      live[key] = (held[0], new)
    events.append(event)
  return events


def memory_text(speaker: str, slot: str, chain: Sequence[tuple[str, str]]) -> str:
  """The ideal memory of a live fact: its current value and date, then earlier values, newest first.

  Args:
    speaker: whose fact.
    slot: a key of `SLOTS`.
    chain: (value, answer date) pairs from the ADD to the latest UPDATE.

  Returns:
    e.g. "Anna has lived in Lyon since 8 May 2023; before that in Porto."
  """
  spec = SLOTS[slot]
  value, date = chain[-1]
  text = spec.memory.format(name=speaker, value=value, date=date)
  for earlier, _ in reversed(chain[:-1]):
    text += "; before that " + spec.before.format(value=earlier)
  return text + "."


def oracle_bank_ops(conversation: schema.Conversation) -> dict[str, list[MemoryOp]]:
  """The ideal memory operations for every turn of a synthetic conversation.

  ADD a new fact, UPDATE the fact a new value replaces (its text rewritten by `memory_text`, so it
  keeps the earlier values and the date of the change), DELETE a retracted fact, NOOP on restated
  facts, filler and replies. Fact ids are the `FactEvent.fact_id`s (ADDs counted from 0, as a fresh
  `MemoryBank` numbers them); `speaker` is whose fact it is.

  Returns:
    {dia_id: [MemoryOp]} for every turn in order (one operation per turn).
  """
  by_turn = {event.dia_id: event for event in fact_events(conversation)}
  chains: dict[int, list[tuple[str, str]]] = {}
  ops = {}
  for _, turn in conversation.turns:
    event = by_turn.get(turn.dia_id)
    if event is None or event.op == OpKind.NOOP:
      ops[turn.dia_id] = [NOOP]
      continue
    if event.op == OpKind.DELETE:
      ops[turn.dia_id] = [MemoryOp(OpKind.DELETE, memory_id=event.fact_id, speaker=event.speaker)]
      continue
    chain = chains.setdefault(event.fact_id, [])
    chain.append((event.value, event.date))
    text = memory_text(event.speaker, event.slot, chain)
    memory_id = None if event.op == OpKind.ADD else event.fact_id
    ops[turn.dia_id] = [MemoryOp(event.op, memory_id=memory_id, text=text, speaker=event.speaker)]
  return ops


# --------------------------------------------------------------------------------- LoCoMo JSON


def conversation_to_locomo(conversation: schema.Conversation) -> dict:
  """One conversation as a LoCoMo sample dict (`sample_id`, `conversation`, `qa`)."""
  body: dict = {"speaker_a": conversation.speaker_a, "speaker_b": conversation.speaker_b}
  for session in conversation.sessions:
    body[f"session_{session.index}_date_time"] = session.date_time
    body[f"session_{session.index}"] = [
        {"speaker": t.speaker, "dia_id": t.dia_id, "text": t.text} for t in session.turns]
  qa = [{"question": q.question, "answer": q.answer, "evidence": list(q.evidence),
         "category": q.category} for q in conversation.qa]
  return {"sample_id": conversation.sample_id, "conversation": body, "qa": qa}


def write_locomo_json(conversations: Sequence[schema.Conversation], path: str | os.PathLike[str]
                      ) -> None:
  """Writes `conversations` as a LoCoMo `locomo10.json`-style file that `read_locomo` reads back."""
  with open(path, "w", encoding="utf-8") as f:
    json.dump([conversation_to_locomo(c) for c in conversations], f, ensure_ascii=False, indent=1)
