"""mode=sft: trajectory reading, the loss against a hand computation, gradient accumulation, training and export."""

import json
import os
import re
import signal

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from memr1_jax import errors, faults, learner, loop, metrics_writer, sft
from memr1_jax.checkpoint import Checkpointer
from memr1_jax.defaults import default_config
from memr1_jax.demo import DEMO_TOKENIZER_DIR
from memr1_jax.errors import ConfigError
from memr1_jax.models import config as model_config
from memr1_jax.models import decoder as decoder_lib
from memr1_jax.rl import train_state as ts


def _write(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def _record(question, answer):
  return json.dumps({"messages": [{"role": "user", "content": question}], "response": answer})


def _tiny_model(seed=0, vocab=64):
  cfg = model_config.get_preset("tiny", vocab_size=vocab)
  return decoder_lib.Decoder(cfg, rngs=nnx.Rngs(seed))


def _examples():
  # (prompt ids, response ids) of different lengths, so both kinds of padding occur.
  return [([5, 9, 3, 17, 2], [7, 8, 1]), ([11, 4], [6, 30, 31, 32, 1]), ([40, 41, 42], [1])]


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_read_trajectories_names_file_line_and_field(tmp_path):
  """A line without a string 'response' is rejected with the file, the line number and the field."""
  path = _write(tmp_path / "t.jsonl", [_record("q", "a"), json.dumps({"messages": [{"role": "user",
                                                                                       "content": "q"}]})])
  with pytest.raises(sft.TrajectoryError, match=r"t\.jsonl:2: 'response'"):
    sft.read_trajectories(path)


def test_read_trajectories_rejects_invalid_json(tmp_path):
  """A line that is not JSON is rejected naming its line."""
  path = _write(tmp_path / "t.jsonl", [_record("q", "a"), "{not json"])
  with pytest.raises(sft.TrajectoryError, match=r":2: not valid JSON"):
    sft.read_trajectories(path)


def test_sft_loss_equals_numpy_cross_entropy_over_response_tokens():
  """The packed, padded loss equals a numpy cross-entropy over the response tokens of each unpadded sequence."""
  model = _tiny_model()
  examples = _examples()
  rows = sft.pack_examples(examples, rows=4, pad_id=0, min_prompt_bucket=8, min_response_bucket=8)
  loss = float(nnx.jit(learner.sft_loss)(model, rows))
  forward = nnx.jit(lambda m, ids: m(ids))
  nll = []
  for prompt, response in examples:
    ids = np.array([prompt + response])
    logits = np.asarray(forward(model, ids), np.float64)[0]
    logp = _log_softmax(logits)
    for t, token in enumerate(response):
      nll.append(-logp[len(prompt) - 1 + t, token])
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)


def test_sft_step_gradient_is_independent_of_micro_batching():
  """With plain SGD, 4 micro-batches of 1 row move the weights exactly as one micro-batch of 4 rows does."""
  rows = sft.pack_examples(_examples(), rows=4, pad_id=0, min_prompt_bucket=8, min_response_bucket=8)
  deltas = []
  for micro in (1, 4):
    state, frozen, spec = ts.init_train_state(_tiny_model(), optax.sgd(1.0), actor_lr=ts.learning_rate_schedule(1.0),
                                              reference=False)
    before = jax.tree.leaves(jax.device_get(state.policy))
    state, metrics = learner.make_sft_step(spec, micro)(state, frozen, rows)
    assert float(metrics["skipped"]) == 0.0
    deltas.append([a - b for a, b in zip(jax.tree.leaves(jax.device_get(state.policy)), before)])
  for a, b in zip(*deltas):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_sft_step_over_the_sequence_bucket_matches_the_full_prompt_plus_response_length():
  """Running the model over only sequence_bucket(examples) positions (shorter than the prompt + response buckets)
  gives the same loss and the same updated weights as over all of them."""
  examples = _examples()
  rows = sft.pack_examples(examples, rows=4, pad_id=0, min_prompt_bucket=8, min_response_bucket=8)
  seq_len = sft.sequence_bucket(examples, multiple=4)
  assert seq_len == 8 < rows["prompt_ids_bp"].shape[1] + rows["response_ids_bt"].shape[1]
  model = _tiny_model()
  np.testing.assert_allclose(float(nnx.jit(learner.sft_loss, static_argnums=2)(model, rows, seq_len)),
                             float(nnx.jit(learner.sft_loss)(model, rows)), rtol=1e-6)
  weights = []
  for length in (None, seq_len):
    state, frozen, spec = ts.init_train_state(_tiny_model(), optax.sgd(1.0), actor_lr=ts.learning_rate_schedule(1.0),
                                              reference=False)
    state, _ = learner.make_sft_step(spec, 4)(state, frozen, rows, length)
    weights.append(jax.tree.leaves(jax.device_get(state.policy)))
  for a, b in zip(*weights):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _toy_config(workdir, path, steps):
  c = default_config()
  c.mode = "sft"
  c.workdir = str(workdir)
  c.model.preset = "tiny"
  c.model.tokenizer = DEMO_TOKENIZER_DIR
  c.model.dtype = c.model.param_dtype = "float32"
  c.model.remat = False
  c.sft.path = path
  c.sft.lr = 3e-3
  c.sft.warmup_steps = 5
  c.sft.batch_size = 4
  c.sft.micro_batch_size = 2
  c.sft.num_steps = steps
  c.rollout.max_prompt_len = 64
  c.rollout.max_new_tokens = 16
  c.rollout.min_prompt_bucket = 16
  return c


def test_sft_run_rejects_an_unknown_schedule_naming_the_field(tmp_path):
  """config.sft.schedule other than constant / cosine is a ConfigError that names the field, before any training."""
  config = _toy_config(tmp_path / "run", _write(tmp_path / "toy.jsonl", [_record("q", "a")]), steps=1)
  config.sft.schedule = "linear"
  with pytest.raises(ConfigError, match=r"config\.sft\.schedule: 'linear'"):
    sft.run(config, progress=False)


def test_sft_run_lowers_the_loss_and_the_export_reproduces_a_trained_response(tmp_path):
  """After SFT on a toy set the loss has dropped and the exported model greedily answers a prompt as trained."""
  from memr1_jax import components  # pylint: disable=g-import-not-at-top
  from memr1_jax.sampling.engine import RolloutConfig, RolloutEngine  # pylint: disable=g-import-not-at-top
  pairs = [("Where does Anna live now?", "**Answer:** Lyon"), ("What pet does Ben have now?", "**Answer:** cat"),
           ("Who is Carla dating now?", "**Answer:** Leo")]
  path = _write(tmp_path / "toy.jsonl", [_record(q, a) for q, a in pairs])
  config = _toy_config(tmp_path / "run", path, steps=60)
  out = sft.run(config, progress=False)
  assert out["last_loss"] < 0.1 * out["first_loss"]
  model, tokenizer = components.load_policy(config, None, path=out["export_path"])
  engine = RolloutEngine(model, tokenizer, RolloutConfig(max_new_tokens=16, max_prompt_len=64, min_prompt_bucket=16))
  completions = engine.generate([[{"role": "user", "content": pairs[0][0]}]], temperature=0.0)
  assert completions[0].text == pairs[0][1]
  assert completions[0].finish_reason == "stop"


_PAIRS = [("Where does Anna live now?", "**Answer:** Lyon"), ("What pet does Ben have now?", "**Answer:** cat"),
          ("Who is Carla dating now?", "**Answer:** Leo")]


def _checkpoint_steps(config) -> list[int]:
  ckpt = Checkpointer(os.path.join(config.workdir, "checkpoints"))
  try:
    return sorted(ckpt.all_steps())
  finally:
    ckpt.close()


def _exported_params(config, export_dir) -> list[np.ndarray]:
  from memr1_jax import components  # pylint: disable=g-import-not-at-top
  model, _ = components.load_policy(config, None, path=export_dir)
  return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]


def test_sft_run_stopped_by_sigterm_checkpoints_and_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
  """SIGTERM during step 2 (MEMR1_FAULT=sigterm@2): the step finishes, checkpoint 3 is saved, Preempted is raised
  and nothing is exported; the same run again resumes at step 3 and ends with the uninterrupted run's loss and
  weights, each step logged once. The interrupted run keeps its optimizer state in pinned host memory
  (rl.optimizer_memory=host), the uninterrupted one on the device."""
  path = _write(tmp_path / "toy.jsonl", [_record(q, a) for q, a in _PAIRS])
  straight_config = _toy_config(tmp_path / "straight", path, steps=5)
  straight = sft.run(straight_config, progress=False)
  config = _toy_config(tmp_path / "run", path, steps=5)
  config.rl.optimizer_memory = "host"
  handler = signal.getsignal(signal.SIGTERM)
  monkeypatch.setenv(faults.ENV_VAR, "sigterm@2")
  with pytest.raises(errors.Preempted, match=rf"stopped by signal {int(signal.SIGTERM)} after step 3 "):
    sft.run(config, progress=False)
  assert signal.getsignal(signal.SIGTERM) is handler  # The run's own handler is gone again.
  assert _checkpoint_steps(config) == [3] and not os.path.exists(sft.export_path(config))
  monkeypatch.delenv(faults.ENV_VAR)
  resumed = sft.run(config, progress=False)
  assert _checkpoint_steps(config) == [3, 5]
  assert resumed["last_loss"] == straight["last_loss"]
  assert [r["step"] for r in metrics_writer.read_jsonl(config.workdir)] == [1, 2, 3, 4, 5]
  for a, b in zip(_exported_params(config, resumed["export_path"]),
                  _exported_params(straight_config, straight["export_path"]), strict=True):
    np.testing.assert_array_equal(a, b)


def test_sft_run_stops_after_max_nonfinite_steps_naming_the_last_finite_checkpoint(tmp_path, caplog):
  """A learning rate of 1e30 makes step 0's update overflow the next forward pass: steps 1 and 2 have a NaN loss,
  are skipped and logged with their trajectories, and with max_nonfinite_steps=2 the run stops with NonFiniteError
  naming checkpoint 2 (saved after the skipped step 1, so finite) as the last good one."""
  path = _write(tmp_path / "toy.jsonl", [_record(q, a) for q, a in _PAIRS])
  config = _toy_config(tmp_path / "run", path, steps=6)
  config.sft.lr, config.sft.warmup_steps, config.sft.checkpoint_every = 1e30, 0, 1
  config.train.max_nonfinite_steps = 2
  with pytest.raises(loop.NonFiniteError, match=r"^2 consecutive non-finite updates \(last at step 2\); stopping\. "
                                                r"The last good checkpoint is step 2 in "):
    sft.run(config, progress=False)
  for step in (1, 2):
    assert any(re.fullmatch(rf"step {step}: non-finite loss or gradient, update skipped \({step} in a row\); "
                            rf"batch: trajectories [1-3]( [1-3]){{3}} of {re.escape(path)}", r.getMessage())
               for r in caplog.records)
  assert _checkpoint_steps(config) == [1, 2]
  records = metrics_writer.read_jsonl(config.workdir)
  assert [(r["step"], r["sft/skipped"]) for r in records] == [(1, 0.0), (2, 1.0)]
  assert np.isfinite(records[0]["sft/loss"]) and not np.isfinite(records[1]["sft/loss"])
