"""Tests for the episode runner's manager walks: which turns reach the manager, which questions score a sampled
operation."""

from __future__ import annotations

import json

import pytest

from memr1_jax.agents.extraction import Extraction, simple_fact
from memr1_jax.data.schema import QA, Conversation, Session, Turn
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import RecordingPolicy, Sample, ScriptedPolicy
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder

DIM = 64


def ops_reply(ops) -> str:
  """A manager reply of the operations `ops` (dicts as the prompt states them)."""
  return json.dumps({"operations": list(ops)})


class _GroupPolicy:
  """A manager whose i-th sample of every chat is `replies_by_call[call][i]` (one entry per generate call)."""

  def __init__(self, replies_by_call):
    self.calls = list(replies_by_call)

  def generate(self, chats, *, n=1, greedy=False):
    replies = self.calls.pop(0)
    return [[Sample(text=replies[i % len(replies)]) for i in range(n)] for _ in chats]


def _conversation() -> Conversation:
  turns = (Turn("Alice", "I drink black tea.", "D1:1"), Turn("Bob", "I drink coffee.", "D1:2"))
  qa = (QA("What does Alice drink?", "black tea", 1, evidence=("D1:1",), qid="c0:0"),
        QA("What does Bob drink?", "coffee", 1, evidence=("D1:2",), qid="c0:1"))
  return Conversation("c0", "Alice", "Bob", (Session(1, "1 May 2023", turns),), qa)


def _answer(prompt) -> str:
  """Answers from the shown memories: the drink stated for the person asked about, else "none"."""
  text = prompt.messages[-1]["content"]
  name = "Alice" if "What does Alice" in text else "Bob"
  drink = next((d for d in ("black tea", "coffee") if f"{name} drinks {d}" in text), "none")
  return f"**Answer:** {drink}"


@pytest.mark.parametrize("scope, rewards", [("turn", [1.0, 1.0]), ("answerable", [1.0, 0.5])])
def test_answerable_scope_charges_an_update_that_overwrites_a_needed_memory(scope, rewards):
  """At Bob's turn, ADD and an UPDATE overwriting Alice's memory both answer Bob's question (reward 1 with "turn");
  with "answerable" Alice's question is asked too, so the overwrite scores 0.5."""
  bank = lambda: MemoryBank(HashingEmbedder(DIM), DIM, index="brute_force")  # pylint: disable=unnecessary-lambda-assignment
  manager = _GroupPolicy([
      [ops_reply([{"op": "ADD", "text": "Alice drinks black tea"}])],
      [ops_reply([{"op": "ADD", "text": "Bob drinks coffee"}]),
       ops_reply([{"op": "UPDATE", "id": 0, "text": "Bob drinks coffee"}])],
  ])
  cfg = runner.RunnerConfig(related_k=5, answer_k_per_speaker=5, manager_reward_questions=scope)
  conv = _conversation()
  experiences, _ = runner.manager_episodes(manager, ScriptedPolicy(_answer), [conv], {"c0": conv.qa}, bank, cfg, n=2)
  assert [e.reward for e in experiences] == [1.0, 1.0] + rewards
  assert [e.info["questions"] for e in experiences][2:] == ([1, 1] if scope == "turn" else [2, 2])


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_f1_reward_weight_mixes_token_f1_into_answer_and_manager_rewards(weight):
  """"coffee" against gold "black coffee" is EM 0, token F1 2/3 (P 1, R 1/2): reward = weight x 2/3 for the answer
  episode, and for a manager branch whose frozen answerer says it; info["em"] stays the exact match."""
  conv = _conversation()
  qa = QA("What does Bob drink?", "black coffee", 1, evidence=("D1:2",), qid="c0:1")
  conv = Conversation("c0", "Alice", "Bob", conv.sessions, (qa,))
  bank = lambda: MemoryBank(HashingEmbedder(DIM), DIM, index="brute_force")  # pylint: disable=unnecessary-lambda-assignment
  cfg = runner.RunnerConfig(related_k=5, answer_k_per_speaker=5, f1_reward_weight=weight)
  answerer = ScriptedPolicy(lambda prompt: "**Answer:** coffee")
  [answer] = runner.answer_episodes(answerer, {"c0": bank()}, [(conv, qa)], cfg, n=1)
  manager = _GroupPolicy([[ops_reply([{"op": "NOOP"}])], [ops_reply([{"op": "NOOP"}])]])
  branches, _ = runner.manager_episodes(manager, answerer, [conv], {"c0": conv.qa}, bank, cfg, n=1)
  assert [answer.reward, branches[0].reward] == pytest.approx([weight * 2 / 3] * 2)
  assert answer.info["em"] == branches[0].info["em"] == 0.0


class _CountingManager:
  """The ADD-only heuristic manager that records every chat it is shown."""

  def __init__(self):
    self.chats = []

  def generate(self, chats, *, n=1, greedy=False):
    self.chats += chats
    return [[Sample(text=ops_reply([{"op": "ADD", "text": "x"}]))] * n for _ in chats]


def _first_person_only(items):
  """An extractor that finds a fact only in turns that start with "I " (chit-chat has none)."""
  return [Extraction([simple_fact(session, turn)] if turn.text.startswith("I ") else []) for session, turn in items]


def test_turns_without_facts_are_not_shown_to_the_manager():
  """With an extractor that finds no fact in chit-chat the manager sees only the other turns (build_banks and
  manager_episodes); a question completed at a chit-chat turn still joins the "answerable" questions of later
  turns."""
  turns = (Turn("Alice", "Hi Bob, long time no see!", "D1:1"), Turn("Alice", "I moved to Porto.", "D1:2"),
           Turn("Bob", "Oh, I see.", "D1:3"), Turn("Bob", "I bought a bike.", "D1:4"))
  qa = (QA("Where does Alice live now?", "Porto", 4, evidence=("D1:2",), qid="c0:0"),
        QA("Did Bob reply?", "yes", 4, evidence=("D1:3",), qid="c0:1"),
        QA("Does Bob own a bike now?", "yes", 4, evidence=("D1:4",), qid="c0:2"))
  conv = Conversation("c0", "Alice", "Bob", (Session(1, "1 May 2023", turns),), qa)
  bank = lambda: MemoryBank(HashingEmbedder(DIM), DIM, index="brute_force")  # pylint: disable=unnecessary-lambda-assignment
  cfg = runner.RunnerConfig(related_k=2, answer_k_per_speaker=5, extract=_first_person_only,
                            manager_reward_questions="answerable")
  manager = _CountingManager()
  _, stats = runner.build_banks(manager, [conv], bank, cfg)
  assert stats.manager_calls == 2
  assert ["I moved to Porto." in p.messages[-1]["content"] for p in manager.chats] == [True, False]
  manager = _CountingManager()
  experiences, stats = runner.manager_episodes(manager, ScriptedPolicy(lambda prompt: "**Answer:** yes"), [conv],
                                               {"c0": qa}, bank, cfg, n=2)
  assert len(manager.chats) == 2 and stats.manager_calls == 4
  assert [e.info["questions"] for e in experiences] == [1, 1, 3, 3]
  assert [e.info["turn"] for e in experiences] == [("c0", "D1:2")] * 2 + [("c0", "D1:4")] * 2


class _CountingEmbedder(HashingEmbedder):
  """A HashingEmbedder that records the texts of every call."""

  def __init__(self):
    super().__init__(DIM)
    self.calls = []

  def __call__(self, texts):
    self.calls.append(list(texts))
    return super().__call__(texts)


def test_manager_walk_embeds_its_facts_and_questions_in_one_call():
  """Behind a CachedEmbedder, manager_episodes embeds every fact and question in one call up front; a manager that
  ADDs the facts it is shown then needs no further encoder call, and its rewards equal those without the cache."""
  from memr1_jax.components import CachedEmbedder  # pylint: disable=g-import-not-at-top

  turns = (Turn("Alice", "I moved to Porto.", "D1:1"), Turn("Bob", "I bought a bike.", "D1:2"),
           Turn("Alice", "We left Porto for Lyon.", "D1:3"))
  qa = (QA("Where does Alice live now?", "Lyon", 4, evidence=("D1:3",), qid="c0:0"),
        QA("Does Bob own a bike now?", "yes", 4, evidence=("D1:2",), qid="c0:1"))
  conv = Conversation("c0", "Alice", "Bob", (Session(1, "1 May 2023", turns),), qa)
  cfg = runner.RunnerConfig(related_k=2, answer_k_per_speaker=5)

  def copy_facts(prompt):
    return ops_reply([{"op": "ADD", "text": f.text} for f in prompt.view.facts])

  def walk(embed):
    bank = lambda: MemoryBank(embed, DIM, index="brute_force")  # pylint: disable=unnecessary-lambda-assignment
    experiences, _ = runner.manager_episodes(ScriptedPolicy(copy_facts), ScriptedPolicy(lambda c: "**Answer:** yes"),
                                             [conv], {"c0": qa}, bank, cfg, n=1)
    return [e.reward for e in experiences]

  counting = _CountingEmbedder()
  cached = CachedEmbedder(counting, size=100, min_batch=1)
  assert walk(cached) == walk(HashingEmbedder(DIM))
  assert len(counting.calls) == 1
  facts = {"Alice: I moved to Porto.", "Bob: I bought a bike.", "Alice: We left Porto for Lyon."}
  assert set(counting.calls[0]) == facts | {"Where does Alice live now?", "Does Bob own a bike now?"}


def test_manager_prompt_shows_only_related_memories_scoring_at_least_the_threshold():
  """With related_min_score between the two stored facts' scores against the third, the third turn's prompt shows
  only the higher one; at -inf it shows both."""
  facts = ("Alice: I moved to Porto.", "Bob: I bought a bike.", "Alice: We left Porto for Lyon.")
  turns = tuple(Turn(f.split(": ")[0], f.split(": ")[1], f"D1:{i + 1}") for i, f in enumerate(facts))
  conv = Conversation("c0", "Alice", "Bob", (Session(1, "1 May 2023", turns),), ())
  embed = HashingEmbedder(DIM)
  vectors = embed(list(facts))
  porto, bike = float(vectors[0] @ vectors[2]), float(vectors[1] @ vectors[2])
  assert porto > bike
  for min_score, shown in ((float("-inf"), {facts[0], facts[1]}), ((porto + bike) / 2, {facts[0]})):
    cfg = runner.RunnerConfig(related_k=2, related_min_score=min_score)
    manager = RecordingPolicy(lambda prompt: ops_reply([{"op": "ADD", "text": prompt.view.facts[0].text}]))
    runner.build_banks(manager, [conv], lambda: MemoryBank(embed, DIM, index="brute_force"), cfg)
    assert {m.text for m in manager.prompts[2].view.memories} == shown


def test_manager_prompt_numbers_memories_by_position_and_replies_act_on_the_bank_ids_they_name():
  """The prompt lists its related memories as [0], [1] whatever their bank ids; a DELETE of position 0 removes the
  memory shown first (bank id 2), an id beyond the list is a format error that changes nothing."""
  facts = ("Alice: I moved to Porto.", "Bob: I bought a bike.", "Alice: I took up chess.", "Alice: I gave up chess.")
  turns = tuple(Turn(f.split(": ")[0], f.split(": ")[1], f"D1:{i + 1}") for i, f in enumerate(facts))
  conv = Conversation("c0", "Alice", "Bob", (Session(1, "1 May 2023", turns),), ())
  embed = HashingEmbedder(DIM)
  cfg = runner.RunnerConfig(related_k=3)
  for target, format_errors in ((0, 0), (3, 1)):
    def reply(prompt, target=target):
      fact = prompt.view.facts[0].text
      if fact != facts[3]:
        return ops_reply([{"op": "ADD", "text": fact}])
      return ops_reply([{"op": "DELETE", "id": target}])
    manager = RecordingPolicy(reply)
    (bank,), stats = runner.build_banks(manager, [conv], lambda: MemoryBank(embed, DIM, index="brute_force"), cfg)
    shown = [(m.memory_id, m.text) for m in manager.prompts[3].view.memories]
    assert [memory_id for memory_id, _ in shown] == [0, 1, 2]
    assert [line.split(" ", 1)[0] for line in manager.records[3]["messages"][1]["content"].splitlines()
            if line.startswith("[")] == ["[0]", "[1]", "[2]"]
    kept = {e.text for e in bank.entries()}
    assert stats.format_errors == format_errors
    assert kept == (set(facts[:3]) - {shown[0][1]} if target == 0 else set(facts[:3]))
    assert shown[0][1] == facts[2]  # Bank id 2, the closest match, is shown as [0].


def test_select_groups_keeps_whole_groups_whose_rewards_differ_first():
  """Of 6 groups of 2 (groups 1, 3, 4 with differing rewards), max 4 keeps those three and one equal-reward group,
  whole and in their original order; max 2 keeps two of the three; both report 3 informative groups."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from memr1_jax.episodes.batching import select_groups  # pylint: disable=g-import-not-at-top
  rewards = {0: (1.0, 1.0), 1: (0.0, 1.0), 2: (0.0, 0.0), 3: (0.5, 0.0), 4: (1.0, 0.0), 5: (0.5, 0.5)}
  exps = [runner.Experience(Sample(text=""), r, g, "manager", {}) for g, pair in rewards.items() for r in pair]
  for max_groups, differing in ((4, 3), (2, 2)):
    kept, informative = select_groups(exps, max_groups, np.random.default_rng(0))
    groups = [e.group for e in kept]
    assert informative == 3 and groups == sorted(groups) and len(groups) == 2 * max_groups
    assert all(groups.count(g) == 2 for g in set(groups))
    assert len(set(groups) & {1, 3, 4}) == differing


def test_pack_experiences_orders_groups_prompt_major_and_rejects_a_group_of_two_prompts():
  """Rows come group by group, prompts left-padded to the bucket; a group whose samples answer different prompts
  raises a ValueError naming the group (the update runs one prompt per group)."""
  from memr1_jax.episodes.batching import pack_experiences  # pylint: disable=g-import-not-at-top
  sample = lambda prompt, response: Sample(text="", prompt_ids=prompt, response_ids=response,  # noqa: E731
                                           logprobs=(-1.0,) * len(response))
  exps = [runner.Experience(sample((5, 6, 7), (1,)), 1.0, 1, "answer", {}),
          runner.Experience(sample((3,), (2, 2)), 0.0, 0, "answer", {}),
          runner.Experience(sample((5, 6, 7), (3, 3)), 0.0, 1, "answer", {}),
          runner.Experience(sample((3,), (4,)), 1.0, 0, "answer", {})]
  packed = pack_experiences(exps, pad_id=0, group_size=2, rows_multiple=2, min_prompt_bucket=4,
                            min_response_bucket=2)
  assert packed["prompt_ids_bp"].tolist() == [[0, 0, 0, 3], [0, 0, 0, 3], [0, 5, 6, 7], [0, 5, 6, 7]]
  assert packed["scores_b"].tolist() == [0.0, 1.0, 1.0, 0.0] and packed["real_rows"] == 4
  exps[2] = runner.Experience(sample((5, 6, 8), (3, 3)), 0.0, 1, "answer", {})
  with pytest.raises(ValueError, match="group 1's experiences answer different prompts"):
    pack_experiences(exps, pad_id=0, group_size=2, rows_multiple=2, min_prompt_bucket=4, min_response_bucket=2)
