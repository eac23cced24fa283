"""The Python-side episode runner: memory banks, prompts, parsed outputs, rewards.

Everything here is host work; every model call goes through a `ChatPolicy`, batched over many episodes.

Episodes and credit assignment:
- **Bank building** (`build_banks`): walk conversations turn by turn, all conversations in lock step (one policy
  call per turn index for the whole batch); per turn: facts (`RunnerConfig.extract`: simple, a task's, or a frozen
  LLM's), related memories, manager prompt, parsed operations applied to that conversation's bank.
- **Answer episodes** (`answer_episodes`): per question, 30 memories per speaker from its conversation's bank, the
  answer prompt, `n` sampled responses; reward = exact match of the parsed answer with the gold answer (with
  `f1_reward_weight` w: (1 - w) x exact match + w x token F1), minus `format_penalty` when the reply could not be
  parsed cleanly. The `n` responses to one question form a GRPO group.
- **Manager episodes** (`manager_episodes`): walk a conversation with the *policy* as the manager. At each turn
  that is the last evidence turn of some training questions, sample `n` manager responses to the same prompt;
  each is applied to its own fork of the bank and a frozen answer agent answers those questions from the fork:
  the response's reward is the mean of the answers' scores (exact match, or its mix with F1; minus the format
  penalty). So credit goes to exactly the
  operation that completed the evidence, and the `n` responses share a prompt (a proper GRPO group). With
  `manager_reward_questions="answerable"` the fork answers every question whose evidence is complete by then,
  so an UPDATE or DELETE that destroys a memory still needed is paid for at the turn that made it. The bank
  then continues with the first sampled response; turns that complete no question are not trained on.
- **Tuple episodes** (`tuple_episodes`, the paper's Algorithm 1): the same branching reward on saved (turn, temporal
  memory bank, linked QA) tuples (`episodes.tuples`) instead of a walk, so a step costs batch x group responses.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from memr1_jax.agents import extraction as extraction_lib
from memr1_jax.agents import parsers, prompts
from memr1_jax.data.schema import QA, Conversation, Session, Turn
from memr1_jax.episodes.policy import AnswerView, ChatPolicy, ManagerView, Prompt, Sample
from memr1_jax.eval import metrics
from memr1_jax.memory.bank import MemoryBank, MemoryEntry, apply_to_banks, fill_banks, search_banks
from memr1_jax.memory.operations import OpKind

if TYPE_CHECKING:  # Types only: the tuples module imports the runner.
  from memr1_jax.episodes.tuples import ManagerTuple

BankFactory = Callable[[], MemoryBank]


@dataclasses.dataclass(frozen=True)
class Experience:
  """One trainable response: the learner's unit.

  Attributes:
    sample: the policy's response (token ids and behaviour log-probs).
    reward: scalar outcome reward.
    group: responses with the same group share a prompt (GRPO normalises within a group).
    kind: "answer" or "manager".
    info: scalars for logging (em, f1, format_error, op counts, ...).
  """

  sample: Sample
  reward: float
  group: int
  kind: str
  info: dict


@dataclasses.dataclass
class RunnerConfig:
  """Episode settings (mirrors config.memory / config.rl)."""

  related_k: int = 10  # Related memories shown to the manager.
  related_min_score: float = float("-inf")  # Only related memories scoring at least this are shown.
  answer_k_per_speaker: int = 30  # Memories per speaker shown to the answer agent.
  format_penalty: float = 0.0  # Subtracted from the reward of a response with a format error.
  # Share of token F1 in the outcome reward of an answer: (1 - w) x exact match + w x token F1 (0: exact match).
  f1_reward_weight: float = 0.0
  max_ops_per_output: int = 64  # Operations read from one manager reply.
  # The fact extractor, (session, turn) pairs -> one Extraction each: any callable (the simple facts, a task's own, or
  # the frozen LLM extractor `memr1_jax.extractor.FrozenExtractor`, never the policy under training).
  extract: Callable[[Sequence[tuple[Session, Turn]]], list[extraction_lib.Extraction]] = (
      extraction_lib.extract_facts_simple)
  # Questions that score a manager response: "turn" (those its turn completes) or "answerable" (every question
  # whose evidence is complete by its turn, so overwriting or deleting a memory still needed costs reward).
  manager_reward_questions: str = "turn"
  # The instructions of the manager and answer prompts (`prompts.PROMPT_SETS`).
  prompt_set: prompts.PromptSet = prompts.PROMPT_SETS["compact"]


def _turn_order(conv: Conversation) -> dict[str, int]:
  return {turn.dia_id: i for i, (_, turn) in enumerate(conv.turns)}


_DIA_ID_RE = re.compile(r"D\d+:\d+")


def last_evidence_turn(conv: Conversation, qa: QA, order: dict[str, int] | None = None) -> int | None:
  """Index (in `conv.turns`) of the last turn that `qa.evidence` cites; None when no cited turn exists."""
  order = _turn_order(conv) if order is None else order
  found = [order[d] for ev in qa.evidence for d in _DIA_ID_RE.findall(ev) if d in order]
  return max(found) if found else None


def prefetch_facts(conversations: Sequence[Conversation], cfg: RunnerConfig) -> None:
  """When `cfg.extract` caches (has `prefetch`, e.g. the frozen LLM extractor), extracts every turn of
  `conversations` it lacks in one call (an endpoint's requests all in flight together, one batched generate of a
  local model) instead of one small call per turn of the walk."""
  prefetch = getattr(cfg.extract, "prefetch", None)
  if prefetch is not None:
    prefetch([item for conv in conversations for item in conv.turns])


def prefetch_embeddings(bank: MemoryBank, conversations: Sequence[Conversation], cfg: RunnerConfig,
                        questions: Sequence[QA] = ()) -> None:
  """When `bank`'s embed_fn caches (has `prefetch`, e.g. components.CachedEmbedder), embeds in one call the facts of
  every turn of `conversations` (by `cfg.extract`) and `questions`, so that the walk's many small per-turn searches,
  and the ADDs of copied facts, hit the cache instead of each running the encoder on a few texts."""
  prefetch = getattr(bank.embed_fn, "prefetch", None)
  if prefetch is None:
    return
  items = [item for conv in conversations for item in conv.turns]
  prefetch([qa.question for qa in questions] + [f.text for ext in cfg.extract(items) for f in ext.facts])


def _manager_prompt(bank: MemoryBank, facts: list[extraction_lib.Fact], session: Session, turn: Turn,
                    cfg: RunnerConfig) -> tuple[Prompt, list[int]]:
  """The manager prompt for one turn, and the bank ids of the memories it shows in the order shown: per fact the
  `cfg.related_k` most similar memories that score at least `cfg.related_min_score`.

  The chat numbers the memories by position, [0], [1], ... (as Mem0 does), not by bank id: a short id in a fixed
  range is copied far more reliably than an arbitrary one (a bank id the prompt never showed is a format error).
  `parse_manager_reply` maps the reply's ids back to bank ids.
  """
  hits = bank.search([f.text for f in facts], cfg.related_k) if facts and len(bank) else []
  return manager_prompt_from_hits(hits, facts, session, turn, cfg)


def manager_prompt_from_hits(hits: Sequence[Sequence[tuple[MemoryEntry, float]]], facts: list[extraction_lib.Fact],
                             session: Session, turn: Turn, cfg: RunnerConfig) -> tuple[Prompt, list[int]]:
  """`_manager_prompt` from the bank's search results `hits` (per fact, its top `cfg.related_k` memories with their
  scores), so that many banks can be searched in one embedding call (`search_banks`)."""
  seen, related = set(), []
  for fact_hits in hits:
    for entry, score in fact_hits:
      if score >= cfg.related_min_score and entry.memory_id not in seen:
        seen.add(entry.memory_id)
        related.append(entry)
  shown = [dataclasses.replace(entry, memory_id=position) for position, entry in enumerate(related)]
  prompt = manager_prompt(facts, shown, speaker=turn.speaker, date=session.date_time, system=cfg.prompt_set.manager)
  return prompt, [e.memory_id for e in related]


def manager_prompt(facts: Sequence[extraction_lib.Fact], shown: Sequence[MemoryEntry], *, speaker: str, date: str,
                   system: str = prompts.MANAGER_SYSTEM_PROMPT) -> Prompt:
  """The manager prompt (instructions `system`) showing `facts` and the memories `shown` (under their
  `memory_id`s), with its view."""
  chat = prompts.manager_messages([f.text for f in facts], shown, speaker=speaker, date=date, system=system)
  return Prompt(chat, ManagerView(tuple(facts), tuple(shown), speaker, date))


def parse_manager_reply(text: str, shown_ids: Sequence[int], speaker: str, cfg: RunnerConfig
                        ) -> parsers.ManagerParse:
  """Parses a reply to a `_manager_prompt` chat whose memories have bank ids `shown_ids` (in the order shown): the
  only valid UPDATE / DELETE ids are the positions 0 .. len(shown_ids) - 1, returned as the bank ids they name."""
  parsed = parsers.parse_manager_output(text, range(len(shown_ids)), speaker=speaker, max_ops=cfg.max_ops_per_output)
  ops = [op if op.memory_id is None else dataclasses.replace(op, memory_id=shown_ids[op.memory_id])
         for op in parsed.ops]
  return dataclasses.replace(parsed, ops=ops)


def op_counts(ops) -> dict[str, int]:
  """Operation mix of parsed manager output: {"ADD": n, "UPDATE": n, "DELETE": n, "NOOP": n}."""
  counts = collections.Counter(op.kind.value for op in ops)
  return {k.value: counts.get(k.value, 0) for k in OpKind}


@dataclasses.dataclass
class BankStats:
  """What happened while building banks: operation mix, format errors, rejected operations."""

  ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  format_errors: int = 0
  rejected_ops: int = 0
  manager_calls: int = 0
  # (sample_id, dia_id) -> the kinds of the operations parsed from that turn's reply, in order.
  turn_ops: dict = dataclasses.field(default_factory=dict)


def _turn_prompts(banks: Sequence[MemoryBank], turn_lists, step: int, cfg: RunnerConfig):
  """The manager prompts of turn `step` of every conversation whose turn `step` has facts (a turn with nothing to
  store is not shown to the manager): (live indexes, (session, turn) items, prompts, the bank ids of the memories
  each shows, in order)."""
  candidates = [i for i, turns in enumerate(turn_lists) if step < len(turns)]
  extracted = cfg.extract([turn_lists[i][step] for i in candidates])
  live, items, chats, shown_ids = [], [], [], []
  for i, ext in zip(candidates, extracted):
    if not ext.facts:
      continue
    session, turn = turn_lists[i][step]
    chat, ids = _manager_prompt(banks[i], ext.facts, session, turn, cfg)
    live.append(i)
    items.append((session, turn))
    chats.append(chat)
    shown_ids.append(ids)
  return live, items, chats, shown_ids


def _apply_replies(banks: Sequence[MemoryBank], conversations: Sequence[Conversation], live: Sequence[int], items,
                   shown_ids, texts: Sequence[str], cfg: RunnerConfig, stats: BankStats) -> None:
  """Parses one manager reply per live conversation (`_turn_prompts`' live indexes, items and shown bank ids),
  applies it to that conversation's bank (one batched embedding call) and counts it in `stats`."""
  ops = []
  for i, (_, turn), ids, text in zip(live, items, shown_ids, texts):
    parsed = parse_manager_reply(text, ids, turn.speaker, cfg)
    stats.format_errors += parsed.format_error is not None
    stats.ops.update(op.kind.value for op in parsed.ops)
    stats.turn_ops[(conversations[i].sample_id, turn.dia_id)] = tuple(op.kind.value for op in parsed.ops)
    ops.append(parsed.ops)
  results = apply_to_banks([banks[i] for i in live], ops, timestamps=[s.date_time for s, _ in items],
                           source_turn_ids=[(t.dia_id,) for _, t in items])
  stats.rejected_ops += sum(not r.applied for rs in results for r in rs)


def build_banks(manager: ChatPolicy, conversations: Sequence[Conversation], bank_factory: BankFactory,
                cfg: RunnerConfig, *, greedy: bool = True, progress: Callable[[int, int], None] | None = None
                ) -> tuple[list[MemoryBank], BankStats]:
  """Builds one bank per conversation by running `manager` on every turn (conversations in lock step).

  Returns (banks in the order of `conversations`, stats).
  """
  banks = [bank_factory() for _ in conversations]
  prefetch_facts(conversations, cfg)
  if banks:
    prefetch_embeddings(banks[0], conversations, cfg)
  turn_lists = [conv.turns for conv in conversations]
  stats = BankStats()
  longest = max((len(t) for t in turn_lists), default=0)
  for step in range(longest):
    live, items, chats, shown_ids = _turn_prompts(banks, turn_lists, step, cfg)
    samples = manager.generate(chats, n=1, greedy=greedy) if chats else []
    stats.manager_calls += len(chats)
    _apply_replies(banks, conversations, live, items, shown_ids, [s[0].text for s in samples], cfg, stats)
    if progress:
      progress(step + 1, longest)
  return banks, stats


def answer_prompts(bank: MemoryBank, conv: Conversation, questions: Sequence[QA], k_per_speaker: int
                   ) -> list[Prompt]:
  """Answer-agent prompts for `questions` over `bank`: top `k_per_speaker` memories of each speaker."""
  cfg = RunnerConfig(answer_k_per_speaker=k_per_speaker)
  return _answer_prompts_many([bank], [conv], [list(questions)], cfg)[0]


def _answer_memories_many(banks: Sequence[MemoryBank], convs: Sequence[Conversation],
                          questions: Sequence[Sequence[QA]], k: int) -> list[list[list[MemoryEntry]]]:
  """Per bank, per question: the memories the answer agent sees, top `k` of speaker A then of speaker B (one
  embedding call per speaker slot for all banks)."""
  speakers = [(c.speaker_a, c.speaker_b) for c in convs]
  queries = [[qa.question for qa in qs] for qs in questions]
  per_slot = [search_banks(banks, queries, k, speaker=[s[j] for s in speakers]) for j in range(2)]
  return [[[e for e, _ in per_slot[0][b][q]] + [e for e, _ in per_slot[1][b][q]] for q in range(len(qs))]
          for b, qs in enumerate(questions)]


def answer_prompt(qa: QA, memories: Sequence[MemoryEntry], speakers: Sequence[str], per_speaker: int,
                  prompt_set: prompts.PromptSet = prompts.PROMPT_SETS["compact"]) -> Prompt:
  """The answer prompt (instructions and memory lines of `prompt_set`) for `qa` over retrieved `memories` (relevance
  order), at most `per_speaker` of each of `speakers`, with its view."""
  chat = prompts.answer_messages(qa.question, memories, speakers=speakers, question_date=qa.question_date,
                                 per_speaker=per_speaker, system=prompt_set.answer,
                                 text_first=prompt_set.answer_text_first)
  groups = prompts.group_by_speaker(memories, speakers, per_speaker)
  return Prompt(chat, AnswerView(qa, {name: tuple(group) for name, group in groups.items()}))


def _answer_prompt(conv: Conversation, qa: QA, memories: Sequence[MemoryEntry], cfg: RunnerConfig) -> Prompt:
  return answer_prompt(qa, memories, (conv.speaker_a, conv.speaker_b), cfg.answer_k_per_speaker, cfg.prompt_set)


def _answer_prompts_many(banks: Sequence[MemoryBank], convs: Sequence[Conversation],
                         questions: Sequence[Sequence[QA]], cfg: RunnerConfig) -> list[list[Prompt]]:
  """Per bank, per question: the answer prompt."""
  memories = _answer_memories_many(banks, convs, questions, cfg.answer_k_per_speaker)
  return [[_answer_prompt(conv, qa, shown, cfg) for qa, shown in zip(qs, per_question)]
          for conv, qs, per_question in zip(convs, questions, memories)]


def score_answer(text: str, qa: QA, format_penalty: float, f1_weight: float = 0.0) -> tuple[float, dict]:
  """(reward, info) of one answer reply: (1 - f1_weight) x exact match + f1_weight x token F1 (info["score"]),
  minus `format_penalty` for a format error."""
  parsed = parsers.parse_answer_output(text)
  em = float(metrics.exact_match(parsed.answer, qa.answer))
  f1 = metrics.token_f1(parsed.answer, qa.answer)
  info = {"em": em, "f1": f1, "score": (1.0 - f1_weight) * em + f1_weight * f1,
          "format_error": float(parsed.format_error is not None), "answer": parsed.answer}
  return info["score"] - format_penalty * info["format_error"], info


def answer_episodes(policy: ChatPolicy, banks: dict[str, MemoryBank], items: Sequence[tuple[Conversation, QA]],
                    cfg: RunnerConfig, *, n: int, greedy: bool = False, group_offset: int = 0
                    ) -> list[Experience]:
  """Answer-agent episodes: `n` responses per (conversation, question), rewarded by `score_answer`.

  `banks` maps sample_id to that conversation's bank. Groups are numbered from `group_offset` in item order.
  Each experience's info holds `memory_ids`: the ids of the memories its prompt showed, in prompt order.
  """
  convs = list(dict.fromkeys(conv.sample_id for conv, _ in items))
  by_conv = {cid: [(i, qa) for i, (c, qa) in enumerate(items) if c.sample_id == cid] for cid in convs}
  conv_of = {c.sample_id: c for c, _ in items}
  memories_many = _answer_memories_many([banks[c] for c in convs], [conv_of[c] for c in convs],
                                        [[qa for _, qa in by_conv[c]] for c in convs], cfg.answer_k_per_speaker)
  chats: list = [None] * len(items)
  shown_ids: list = [None] * len(items)
  for cid, conv_memories in zip(convs, memories_many):
    for (i, qa), shown in zip(by_conv[cid], conv_memories):
      chats[i] = _answer_prompt(conv_of[cid], qa, shown, cfg)
      shown_ids[i] = tuple(m.memory_id for m in shown)
  samples = policy.generate(chats, n=n, greedy=greedy)
  out = []
  for i, ((conv, qa), group) in enumerate(zip(items, samples)):
    for s in group:
      reward, info = score_answer(s.text, qa, cfg.format_penalty, cfg.f1_reward_weight)
      info.update(category=qa.category, gold=qa.answer, memory_ids=shown_ids[i])
      out.append(Experience(s, reward, group_offset + i, "answer", info))
  return out


@dataclasses.dataclass(frozen=True)
class _Branch:
  """One sampled manager reply to score: the bank it forks, the parsed reply, the sample, its GRPO group, the turn
  (and its session and conversation) and the questions the frozen answer agent asks of the fork."""

  bank: MemoryBank
  parsed: parsers.ManagerParse
  sample: Sample
  group: int
  session: Session
  turn: Turn
  conversation: Conversation
  questions: Sequence[QA]


def _score_branches(branches: Sequence[_Branch], answerer: ChatPolicy, cfg: RunnerConfig,
                    fork: Callable[[MemoryBank], MemoryBank]) -> tuple[list[Experience], list]:
  """Applies each branch's reply to its own fork of its bank, has `answerer` answer the branch's questions from the
  fork (one greedy call for all), and returns (one Experience per branch: reward = the mean `score_answer`
  score of its answers minus `cfg.format_penalty` for a format error; the `apply_to_banks` results per branch)."""
  banks = [fork(b.bank) for b in branches]
  results = apply_to_banks(banks, [b.parsed.ops for b in branches], timestamps=[b.session.date_time for b in branches],
                           source_turn_ids=[(b.turn.dia_id,) for b in branches])
  answer_prompts_ = [p for ps in _answer_prompts_many(banks, [b.conversation for b in branches],
                                                      [b.questions for b in branches], cfg) for p in ps]
  answers = iter(answerer.generate(answer_prompts_, n=1, greedy=True) if answer_prompts_ else [])
  experiences = []
  for b in branches:
    infos = [score_answer(next(answers)[0].text, qa, 0.0, cfg.f1_reward_weight)[1] for qa in b.questions]
    em = sum(i["em"] for i in infos) / max(len(infos), 1)
    score = sum(i["score"] for i in infos) / max(len(infos), 1)
    fmt = float(b.parsed.format_error is not None)
    experiences.append(Experience(b.sample, score - cfg.format_penalty * fmt, b.group, "manager", {
        "em": em, "format_error": fmt, "questions": len(infos), **op_counts(b.parsed.ops),
        "turn": (b.conversation.sample_id, b.turn.dia_id)}))
  return experiences, results


def manager_episodes(policy: ChatPolicy, answerer: ChatPolicy, conversations: Sequence[Conversation],
                     questions: dict[str, Sequence[QA]], bank_factory: BankFactory, cfg: RunnerConfig, *, n: int,
                     group_offset: int = 0,
                     fork: Callable[[MemoryBank], MemoryBank] | None = None) -> tuple[list[Experience], BankStats]:
  """Manager episodes with per-turn branching (see the module docstring).

  Args:
    policy: the manager being trained; answerer: the frozen answer agent (greedy).
    conversations: walked in lock step; questions: sample_id -> the training questions of that conversation.
    n: responses sampled per trained turn (GRPO group size; 1 for PPO).
    fork: copies a bank (default `MemoryBank.fork`).
  Returns:
    (experiences, stats of the walked banks).
  """
  fork = fork or (lambda b: b.fork())
  banks = [bank_factory() for _ in conversations]
  prefetch_facts(conversations, cfg)
  if banks:
    prefetch_embeddings(banks[0], conversations, cfg,
                        [qa for conv in conversations for qa in questions.get(conv.sample_id, ())])
  stats = BankStats()
  # Questions completed at each turn index, per conversation.
  targets = []
  for conv in conversations:
    order = _turn_order(conv)
    at = collections.defaultdict(list)
    for qa in questions.get(conv.sample_id, ()):
      t = last_evidence_turn(conv, qa, order)
      if t is not None:
        at[t].append(qa)
    targets.append(at)
  # Questions whose evidence is complete so far, per conversation (the "answerable" reward scores all of them).
  answerable: list[list[QA]] = [[] for _ in conversations]
  experiences: list[Experience] = []
  group = group_offset
  turn_lists = [conv.turns for conv in conversations]
  for step in range(max((len(t) for t in turn_lists), default=0)):
    for i, at in enumerate(targets):
      answerable[i].extend(at.get(step, ()))
    live, items, chats, shown_ids = _turn_prompts(banks, turn_lists, step, cfg)
    trained = [j for j, i in enumerate(live) if targets[i].get(step)]
    plain = [j for j, i in enumerate(live) if not targets[i].get(step)]
    samples: list = [None] * len(live)
    if plain:
      for j, s in zip(plain, policy.generate([chats[j] for j in plain], n=1)):
        samples[j] = s
    if trained:
      for j, s in zip(trained, policy.generate([chats[j] for j in trained], n=n)):
        samples[j] = s
    stats.manager_calls += len(plain) + n * len(trained)
    # Branches of the trained turns: fork, apply, answer the completed questions from the fork.
    branches = []
    for k, j in enumerate(trained):
      i = live[j]
      session, turn = items[j]
      questions = list(answerable[i]) if cfg.manager_reward_questions == "answerable" else targets[i][step]
      branches += [_Branch(banks[i], parse_manager_reply(s.text, shown_ids[j], turn.speaker, cfg), s, group + k,
                           session, turn, conversations[i], questions) for s in samples[j]]
    if branches:
      experiences += _score_branches(branches, answerer, cfg, fork)[0]
      group += len(trained)
    # Advance every bank with its first sample.
    _apply_replies(banks, conversations, live, items, shown_ids, [s[0].text for s in samples], cfg, stats)
  return experiences, stats



@dataclasses.dataclass
class TupleStats(BankStats):
  """`BankStats` of one `tuple_episodes` step, over every sampled response (ops, format errors, rejected ops,
  manager calls), plus: tuples given, those whose turn had no fact (no experience), answer agent calls."""

  tuples: int = 0
  no_fact_tuples: int = 0
  answer_calls: int = 0


def tuple_episodes(policy: ChatPolicy, answerer: ChatPolicy, tuples: Sequence[ManagerTuple], bank_factory: BankFactory,
                   cfg: RunnerConfig, *, n: int, group_offset: int = 0,
                   fork: Callable[[MemoryBank], MemoryBank] | None = None) -> tuple[list[Experience], TupleStats]:
  """Manager episodes over (turn, temporal memory bank, linked QA) tuples (the paper's Algorithm 1; built by
  `episodes.tuples.build_tuples`): a step costs len(tuples) x n manager responses, whatever the conversation length.

  Per tuple: its bank is rebuilt from the snapshot (one embedding call for the whole batch), the manager prompt of its
  turn is the runner's own (facts by `cfg.extract`, related memories shown by position; one search call), and `n`
  responses are sampled (one policy call for the batch). Each response is applied to its own fork of the bank, and the
  frozen `answerer` answers the tuple's linked questions from that fork (top `cfg.answer_k_per_speaker` memories per
  speaker; one greedy call for every fork). Reward = the answers' mean `score_answer` score minus `cfg.format_penalty`
  for a format error.
  The linked questions are the only ones asked (`cfg.manager_reward_questions` is not used: a tuple carries no other).

  Args:
    policy: the manager being trained; answerer: the frozen answer agent (greedy).
    tuples: the batch; a tuple whose turn has no extracted fact yields no experience (counted in the stats).
    n: responses per tuple (GRPO group size; 1 for PPO).
    group_offset: the first group number (groups count up over the tuples that yield experiences, in order).
    fork: copies a bank (default `MemoryBank.fork`).
  Returns:
    (experiences, stats); each experience's info: em, format_error, questions, op counts, turn (sample_id, dia_id).
  """
  fork = fork or (lambda b: b.fork())
  stats = TupleStats(tuples=len(tuples))
  if not tuples:
    return [], stats
  banks = [bank_factory() for _ in tuples]
  fill_banks(banks, [t.snapshot for t in tuples])
  items = [(t.session, t.turn) for t in tuples]
  prefetch = getattr(cfg.extract, "prefetch", None)
  if prefetch is not None:
    prefetch(items)
  extracted = cfg.extract(items)
  live = [j for j, ext in enumerate(extracted) if ext.facts]
  stats.no_fact_tuples = len(tuples) - len(live)
  if not live:
    return [], stats
  hits = search_banks([banks[j] for j in live], [[f.text for f in extracted[j].facts] for j in live], cfg.related_k)
  chats, shown_ids = [], []
  for j, fact_hits in zip(live, hits):
    chat, ids = manager_prompt_from_hits(fact_hits, extracted[j].facts, *items[j], cfg)
    chats.append(chat)
    shown_ids.append(ids)
  samples = policy.generate(chats, n=n)
  stats.manager_calls += n * len(chats)
  # Branches: every response on its own fork of its tuple's bank.
  branches = []
  for k, j in enumerate(live):
    session, turn = items[j]
    for s in samples[k]:
      parsed = parse_manager_reply(s.text, shown_ids[k], turn.speaker, cfg)
      stats.format_errors += parsed.format_error is not None
      stats.ops.update(op.kind.value for op in parsed.ops)
      branches.append(_Branch(banks[j], parsed, s, group_offset + k, session, turn, tuples[j].conversation(),
                              list(tuples[j].qa)))
  experiences, results = _score_branches(branches, answerer, cfg, fork)
  stats.rejected_ops += sum(not r.applied for rs in results for r in rs)
  stats.answer_calls += sum(len(b.questions) for b in branches)
  return experiences, stats


def add_all_banks(conversations: Sequence[Conversation], bank_factory: BankFactory, cfg: RunnerConfig
                  ) -> dict[str, MemoryBank]:
  """{sample_id: bank} in which every fact of every turn was ADDed (the ADD-all baseline; no manager model), facts by
  `cfg.extract`."""
  prefetch_facts(conversations, cfg)
  banks = {}
  for conv in conversations:
    bank = bank_factory()
    if not banks:
      prefetch_embeddings(bank, conversations, cfg)
    for ext in cfg.extract(conv.turns):
      for fact in ext.facts:
        bank.add(fact.text, speaker=fact.speaker, timestamp=fact.timestamp, source_turn_ids=fact.source_turn_ids)
    banks[conv.sample_id] = bank
  return banks


def heldout_scores(experiences) -> dict:
  """{"eval/em", "eval/f1"}: the mean exact match and F1 of answer `experiences` (runner.Experience)."""
  return {"eval/em": float(np.mean([e.info["em"] for e in experiences])),
          "eval/f1": float(np.mean([e.info["f1"] for e in experiences]))}


def bank_op_scores(stats: BankStats) -> dict:
  """{"eval/ops/<OP>": share of all operations} of the banks `stats` describes."""
  total = max(sum(stats.ops.values()), 1)
  return {f"eval/ops/{op.value}": stats.ops.get(op.value, 0) / total for op in OpKind}


def greedy_banks(conversations: Sequence[Conversation], manager: ChatPolicy | None, bank_factory: BankFactory,
                 cfg: RunnerConfig, *, progress: Callable[[int, int], None] | None = None
                 ) -> tuple[dict[str, MemoryBank], BankStats]:
  """({sample_id: bank}, stats) of banks built greedily by `manager` over `conversations` (None: every fact ADDed,
  the heuristic baseline; its stats count those ADDs)."""
  if manager is None:
    banks = add_all_banks(conversations, bank_factory, cfg)
    stats = BankStats()
    stats.ops["ADD"] = sum(len(bank) for bank in banks.values())
    return banks, stats
  built, stats = build_banks(manager, conversations, bank_factory, cfg, greedy=True, progress=progress)
  return {conv.sample_id: bank for conv, bank in zip(conversations, built)}, stats


def heldout_eval(conversations: Sequence[Conversation], answerer: ChatPolicy, banks: dict[str, MemoryBank],
                 cfg: RunnerConfig) -> dict:
  """{"eval/em", "eval/f1"} of `answerer` answering every question of `conversations` greedily from `banks`."""
  items = [(conv, qa) for conv in conversations for qa in conv.qa]
  return heldout_scores(answer_episodes(answerer, banks, items, cfg, n=1, greedy=True))


def evaluate_agents(conversations: Sequence[Conversation], manager: ChatPolicy | None, answerer: ChatPolicy,
                    bank_factory: BankFactory, cfg: RunnerConfig, *,
                    bank_metrics: Callable[[Sequence[Conversation], BankStats], dict] | None = None) -> dict:
  """Held-out scores of a (manager, answer agent) pair: banks built greedily by `manager` over `conversations`
  (None: every fact ADDed), every question answered greedily by `answerer` from them.

  Returns:
    {"eval/em", "eval/f1", "eval/ops/<OP>"} and `bank_metrics(conversations, stats)` (a task's, e.g.
    `tasks.Task.bank_metrics`).
  """
  banks, stats = greedy_banks(conversations, manager, bank_factory, cfg)
  return {**heldout_eval(conversations, answerer, banks, cfg), **bank_op_scores(stats),
          **(bank_metrics(conversations, stats) if bank_metrics else {})}
