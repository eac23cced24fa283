"""mode=export (memr1_jax/export.py), reading a run's trained policy back (components.load_trained_policy), and
the export's refusal to write over the run, the model it reads or anything but a previous export."""

import filecmp
import hashlib
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from memr1_jax import components, export, train
from memr1_jax.checkpoint import Checkpointer
from memr1_jax.demo import DEMO_TOKENIZER_DIR
from memr1_jax.errors import ConfigError
from memr1_jax.metrics_writer import read_jsonl
from memr1_jax.models.loading import ExportError, export_pretrained
from memr1_jax.models.safetensors_io import CheckpointReader
from memr1_jax.testing import hf_reference
from memr1_jax.testing.smoke import smoke_config


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
  with pytest.raises(ConfigError, match=r"config\.export\.path"):
    export.run(smoke_config(tmp_path))
  with pytest.raises(ConfigError, match=r"config\.workdir"):
    export.run(smoke_config(tmp_path / "run", **{"export.path": str(tmp_path / "hf")}))


# ------------------------------------------------------------------------------------- export never destroys data


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A smoke run's workdir (<root>/run) with a checkpoint of step 1 and a metrics.jsonl, its tokenizer a copy."""
  root = tmp_path_factory.mktemp("export_safety")
  shutil.copytree(DEMO_TOKENIZER_DIR, root / "tokenizer")
  c = smoke_config(root / "run", **{"model.tokenizer": str(root / "tokenizer")})
  trainer = train.Trainer(c)
  trainer.save(1)
  trainer.writer.write(1, {"train/loss": 1.0})
  trainer.ckpt.close()
  trainer.writer.close()
  return root, c


def _snapshot(root) -> dict[str, str]:
  """Every file below `root`: relative path -> sha256 of its bytes."""
  out = {}
  for d, _, files in os.walk(root):
    for name in files:
      with open(os.path.join(d, name), "rb") as f:
        out[os.path.relpath(os.path.join(d, name), root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _export_config(c, path, overwrite=False):
  out = c.copy_and_resolve_references()
  out.export.path = str(path)
  out.export.overwrite = overwrite
  return out


def test_export_refuses_the_run_and_the_model_it_reads(saved_run):
  """export.path at, inside or around the workdir or model / tokenizer dir is a ConfigError; every file survives."""
  root, c = saved_run
  model_dir = root / "base"
  model_dir.mkdir(exist_ok=True)
  (model_dir / "config.json").write_text("{}")
  with_model = c.copy_and_resolve_references()
  with_model.model.path = str(model_dir)
  before = _snapshot(root)
  targets = [(c, root / "run"), (c, root / "run" / "hf"), (c, root / "run" / "checkpoints"), (c, root),
             (c, root / "tokenizer"), (c, root / "tokenizer" / "hf"), (with_model, model_dir),
             (with_model, model_dir / "hf")]
  for config, path in targets:
    for overwrite in (False, True):
      with pytest.raises(ConfigError, match=r"config\.export\.path"):
        export.run(_export_config(config, path, overwrite))
  assert _snapshot(root) == before
  assert Checkpointer(str(root / "run" / "checkpoints")).latest_step() == 1
  assert [r["step"] for r in read_jsonl(c.workdir)] == [1]


def test_export_refuses_a_directory_holding_other_files(saved_run, tmp_path):
  """A target holding a file the export did not write is refused, even with overwrite; the file survives."""
  _, c = saved_run
  plain, looks_like_export = tmp_path / "plain", tmp_path / "export_and_notes"
  plain.mkdir()
  looks_like_export.mkdir()
  for name in ("config.json", "model.safetensors"):
    (looks_like_export / name).write_text("old export")
  for d in (plain, looks_like_export):
    (d / "notes.txt").write_text("my notes")
  (tmp_path / "a_file").write_text("not a directory")
  before = _snapshot(tmp_path)
  for path in (plain, looks_like_export, tmp_path / "a_file"):
    for overwrite in (False, True):
      with pytest.raises(ConfigError, match=r"config\.export\.path"):
        export.run(_export_config(c, path, overwrite))
  model, _ = components.load_policy(c, None)
  with pytest.raises(ExportError, match="notes.txt"):
    export_pretrained(model, str(looks_like_export), overwrite=True)
  with pytest.raises(ExportError, match="not a directory"):
    export_pretrained(model, str(tmp_path / "a_file"), overwrite=True)
  assert _snapshot(tmp_path) == before


def test_export_replaces_a_previous_export_only_with_overwrite(saved_run, tmp_path):
  """A second export onto the first is refused without export.overwrite and replaces it with it (nothing left over)."""
  _, c = saved_run
  out = tmp_path / "hf"
  assert export.run(_export_config(c, out)) == str(out)
  (out / "model-00001-of-00002.safetensors").write_text("a stale shard of an older export")
  before = _snapshot(tmp_path)
  with pytest.raises(ConfigError, match=r"config\.export\.overwrite=False"):
    export.run(_export_config(c, out))
  assert _snapshot(tmp_path) == before
  export.run(_export_config(c, out, overwrite=True))
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # No temporary or set-aside directory left beside it.
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
  assert CheckpointReader(str(out)).names()
