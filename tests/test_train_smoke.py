"""configs/smoke.py through the full training path: episodes, memory banks, rollout, update, checkpoint, eval."""

import os

import jax
import numpy as np
import pytest

from memr1_jax import metrics_writer, train
from memr1_jax.checkpoint import Checkpointer
from memr1_jax.episodes import runner
from memr1_jax.errors import ConfigError
from memr1_jax.testing.smoke import smoke_config


@pytest.mark.parametrize("agent,algorithm", [("answer", "grpo"), ("manager", "grpo"), ("answer", "ppo"),
                                             ("manager", "ppo")])
def test_smoke_trains_each_agent_with_each_algorithm(tmp_path, agent, algorithm):
  """Two steps run end to end: finite losses, an eval score, and a checkpoint per step."""
  c = smoke_config(tmp_path, agent=agent, algorithm=algorithm)
  if algorithm == "ppo":
    c.rollout.group_size = 1
  last = train.run(c)
  records = metrics_writer.read_jsonl(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2]
  assert all(np.isfinite(r["train/loss"]) for r in records)
  assert "eval/em" in last and 0.0 <= last["eval/em"] <= 1.0
  assert Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 2
  if agent == "manager":
    assert sum(last.get(f"rollout/ops/{k}", 0.0) for k in ("ADD", "UPDATE", "DELETE", "NOOP")) > 0 or \
        records[-1]["train/rows"] > 0


def _final_params(workdir):
  ckpt = Checkpointer(str(workdir / "checkpoints"))
  step = ckpt.latest_step()
  state, meta, _ = ckpt.restore(_abstract_like(ckpt, step), step)
  return state, meta


def _abstract_like(ckpt, step):
  # Restore without a target: orbax rebuilds the saved tree as numpy-compatible arrays.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  meta = ckpt._manager.item_metadata(step)["state"]  # pylint: disable=protected-access
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta,
                      is_leaf=lambda x: isinstance(x, ocp.metadata.ArrayMetadata))


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  """Stopping after step 1 and resuming to step 3 ends with the same parameters as running 3 steps at once."""
  straight = tmp_path / "straight"
  train.run(smoke_config(straight, **{"train.num_steps": 3, "train.eval_every": 0}))
  resumed = tmp_path / "resumed"
  train.run(smoke_config(resumed, **{"train.num_steps": 1, "train.eval_every": 0}))
  train.run(smoke_config(resumed, **{"train.num_steps": 3, "train.eval_every": 0}))
  a, meta_a = _final_params(straight)
  b, meta_b = _final_params(resumed)
  assert meta_a["next_step"] == meta_b["next_step"] == 3
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  moved = [np.abs(np.asarray(x, np.float32)).sum() for x in leaves_a]
  assert all(np.isfinite(moved))


def test_manager_answerer_heuristic_scores_the_banks_with_the_scripted_answerer(tmp_path):
  """train.manager_answerer="heuristic": the manager's held-out EM is the heuristic answerer's over the banks the
  policy builds; a value that is neither a mode nor a directory is a ConfigError naming the field."""
  from memr1_jax.demo import policies  # pylint: disable=g-import-not-at-top
  from memr1_jax.episodes import runner  # pylint: disable=g-import-not-at-top
  from memr1_jax.episodes.policy import ScriptedPolicy  # pylint: disable=g-import-not-at-top
  c = smoke_config(tmp_path, agent="manager", **{"train.manager_answerer": "heuristic"})
  trainer = train.Trainer(c)
  assert isinstance(trainer.manager_answerer, ScriptedPolicy)
  scores = trainer.evaluate(c.data.eval_split)
  convs = trainer.splits[c.data.eval_split]
  built, _ = runner.build_banks(trainer.rollout, convs, trainer.bank_factory, trainer.rcfg, greedy=True)
  banks = {conv.sample_id: bank for conv, bank in zip(convs, built)}
  items = [(conv, qa) for conv in convs for qa in conv.qa]
  exps = runner.answer_episodes(ScriptedPolicy(policies.heuristic_answer_reply), banks, items, trainer.rcfg, n=1,
                                greedy=True)
  expected = np.mean([e.info["em"] for e in exps])
  assert expected > 0 and scores["eval/em"] == pytest.approx(expected)  # > 0: it says "no" to yes / no questions
  with pytest.raises(ConfigError, match="train.manager_answerer"):
    train.Trainer(smoke_config(tmp_path / "bad", agent="manager", **{"train.manager_answerer": "no/such/dir"}))


def test_manager_trains_on_prepared_tuples_and_the_answer_agent_on_banks_its_base_manager_built(tmp_path):
  """train.manager_data=tuples: the first step builds the tuple file (as mode=prepare), a step samples tuples and
  updates; train.answer_banks="": the answer agent's banks are built by the starting policy as manager."""
  from memr1_jax import prepare  # pylint: disable=g-import-not-at-top
  c = smoke_config(tmp_path / "manager", agent="manager", **{"train.manager_data": "tuples", "train.num_steps": 1,
                                                             "train.eval_every": 0, "prepare.window": 4})
  trainer = train.Trainer(c)
  assert os.path.exists(prepare.tuples_path(c)) and trainer.items
  assert all(label.count(":") >= 1 for label in trainer.batch_labels(0))
  metrics = trainer.run()
  assert metrics["train/rows"] > 0
  c = smoke_config(tmp_path / "answer", agent="answer", **{"train.answer_banks": "", "train.num_steps": 1,
                                                           "train.eval_every": 0})
  trainer = train.Trainer(c)
  banks = trainer._answer_bank(trainer.splits["train"])  # pylint: disable=protected-access
  add_all = runner.add_all_banks(trainer.splits["train"], trainer.bank_factory, trainer.rcfg)
  assert set(banks) == set(add_all)
  assert [[e.text for e in b.entries()] for b in banks.values()] != [[e.text for e in b.entries()]
                                                                     for b in add_all.values()]
