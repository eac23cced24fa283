"""mode=export (memr1_jax/export.py) and reading a run's trained policy back (components.load_trained_policy)."""

import filecmp
import importlib.util
import os

import jax
import numpy as np
import pytest
from flax import nnx

from memr1_jax import components, export, train
from memr1_jax.models.safetensors_io import CheckpointReader
from memr1_jax.testing import hf_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(workdir, **overrides):
  """configs/smoke.py with `workdir` and dotted-key overrides."""
  spec = importlib.util.spec_from_file_location("smoke", os.path.join(REPO, "configs", "smoke.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.workdir = str(workdir)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _max_diff_on_tokens(a_btv, b_btv, mask_bt) -> float:
  return float(np.abs(np.asarray(a_btv) - np.asarray(b_btv))[np.asarray(mask_bt, bool)].max())


def test_export_after_one_lora_training_step_reloads_with_the_trained_logits(tmp_path):
  """One LoRA GRPO step, then export: transformers' logits equal the trainer's policy (not the base model's)."""
  # The entropy bonus moves the adapters even though every smoke reward (and so every advantage) is 0.
  c = smoke_config(tmp_path / "run", **{"train.num_steps": 1, "train.eval_every": 0, "model.lora_rank": 4,
                                        "rl.entropy_coef": 0.5, "rollout.batch_size": 2,
                                        "rollout.max_new_tokens": 4})
  trainer = train.Trainer(c)
  trainer.run()
  trained = trainer.learner.policy()
  c.export.path = str(tmp_path / "hf")
  assert export.run(c) == c.export.path
  ids_bt, mask_bt = hf_reference.left_padded_batch((12, 7, 1), trained.cfg.vocab_size, seed=1)
  expected_btv = np.asarray(trained(ids_bt, mask_bt))
  reloaded = hf_reference.load_hf_model(c.export.path)
  assert reloaded.config.vocab_size == trained.cfg.vocab_size
  assert not any("lora" in name for name in CheckpointReader(c.export.path).names())
  assert _max_diff_on_tokens(hf_reference.hf_logits(reloaded, ids_bt, mask_bt), expected_btv, mask_bt) < 1e-4
  base, _ = components.load_policy(c, None)
  assert _max_diff_on_tokens(base(ids_bt, mask_bt), expected_btv, mask_bt) > 1e-3
  source = components.tokenizer_dir(c)
  for name in os.listdir(source):
    assert filecmp.cmp(os.path.join(source, name), os.path.join(c.export.path, name), shallow=False)
  import transformers  # pylint: disable=g-import-not-at-top
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(c.export.path, local_files_only=True)
  assert hf_tokenizer.get_vocab() == trainer.tokenizer.hf_tokenizer.get_vocab()


def _params(model):
  return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]


def test_load_trained_policy_reads_the_latest_or_best_full_finetuning_step(tmp_path):
  """Two saved steps with different parameters: "latest" reads step 2 exactly, "best" the higher eval/em step 1."""
  c = smoke_config(tmp_path)
  trainer = train.Trainer(c)
  rng = np.random.default_rng(0)
  expected = {}
  initial = trainer.learner.state
  for step, em in ((1, 0.5), (2, 0.25)):
    moved = jax.tree.map(lambda x: x + 0.01 * rng.standard_normal(x.shape).astype(x.dtype), initial.policy)
    trainer.learner.state = initial.replace(policy=moved)
    trainer.save(step, {"eval/em": em})
    expected[step] = _params(trainer.learner.policy())
  trainer.ckpt.close()
  for choice, step in (("latest", 2), ("best", 1)):
    model, _, got_step = components.load_trained_policy(c, None, choice)
    assert got_step == step
    got = _params(model)
    assert len(got) == len(expected[step]) > 0
    for x, y in zip(got, expected[step]):
      np.testing.assert_array_equal(x, y)
  base, _, none_step = components.load_trained_policy(c, None, "none")
  assert none_step is None and not np.array_equal(_params(base)[0], expected[2][0])


def test_export_needs_a_path_and_a_checkpoint(tmp_path):
  """An empty export.path or a workdir without checkpoints is a ConfigError naming the field."""
  with pytest.raises(components.ConfigError, match=r"config\.export\.path"):
    export.run(smoke_config(tmp_path))
  with pytest.raises(components.ConfigError, match=r"config\.workdir"):
    export.run(smoke_config(tmp_path, **{"export.path": str(tmp_path / "hf")}))
