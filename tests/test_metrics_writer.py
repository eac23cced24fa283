"""metrics_writer: metrics.jsonl and TensorBoard hold each step once after a run is killed and resumed."""

import json
import os
import struct

from tensorboardX.proto import event_pb2

from memr1_jax import train
from memr1_jax.metrics_writer import MetricsWriter, read_jsonl
from memr1_jax.testing.smoke import smoke_config


def _raw_steps(workdir) -> list[int]:
  """The step of every line of <workdir>/metrics.jsonl, in file order (each line must be valid JSON)."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line)["step"] for line in f]


def _events(path: str) -> list:
  """The Event protos of one TFRecord event file."""
  events = []
  with open(path, "rb") as f:
    while header := f.read(12):  # uint64 length, uint32 crc of the length.
      (length,) = struct.unpack("<Q", header[:8])
      events.append(event_pb2.Event.FromString(f.read(length)))
      f.read(4)  # crc of the data.
  return events


def _tensorboard_steps(workdir, tag: str) -> list[int]:
  """The steps TensorBoard shows for scalar `tag`: event files in name order, a START session log at step S
  dropping the events of steps >= S read before it (TensorBoard's purge of a restarted run)."""
  tb = os.path.join(workdir, "tb")
  steps = []
  for name in sorted(os.listdir(tb)):
    for event in _events(os.path.join(tb, name)):
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        steps = [s for s in steps if s < event.step]
      elif event.HasField("summary") and any(v.tag == tag for v in event.summary.value):
        steps.append(event.step)
  return steps


def test_resumed_writer_drops_the_steps_after_the_checkpoint(tmp_path):
  """Steps 1-5 written, then a writer resumed at step 3 writes 4, 5: the file and TensorBoard hold 1..5 once each."""
  first = MetricsWriter(str(tmp_path))
  for step in range(1, 6):
    first.write(step, {"loss": float(step)})
  first.close()
  resumed = MetricsWriter(str(tmp_path), resume_step=3)
  for step in (4, 5):
    resumed.write(step, {"loss": 10.0 * step})
  resumed.close()
  assert _raw_steps(tmp_path) == [1, 2, 3, 4, 5]
  assert [(r["step"], r["loss"]) for r in read_jsonl(str(tmp_path))] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0),
                                                                         (5, 50.0)]
  assert _tensorboard_steps(tmp_path, "loss") == [1, 2, 3, 4, 5]


def test_a_record_cut_short_by_a_kill_is_dropped(tmp_path):
  """A last line cut mid-record is skipped by read_jsonl and removed before a fresh writer appends (nothing else)."""
  writer = MetricsWriter(str(tmp_path))
  for step in (1, 2):
    writer.write(step, {"loss": 1.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 3, "lo')
  assert [r["step"] for r in read_jsonl(str(tmp_path))] == [1, 2]
  writer = MetricsWriter(str(tmp_path))  # A fresh run: no step is dropped, only the broken line.
  writer.write(3, {"loss": 3.0})
  writer.close()
  assert _raw_steps(tmp_path) == [1, 2, 3]


def test_trainer_resumed_after_a_kill_logs_each_step_once(tmp_path):
  """A run killed after logging steps 2, 3 past its step-1 checkpoint, resumed to step 2: metrics.jsonl has 1, 2."""
  train.run(smoke_config(tmp_path, **{"train.num_steps": 1, "train.eval_every": 0}))
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:  # What the killed run logged after step 1.
    f.write(json.dumps({"step": 2, "stale": 1.0}) + "\n" + json.dumps({"step": 3, "stale": 1.0}) + "\n")
  train.run(smoke_config(tmp_path, **{"train.num_steps": 2, "train.eval_every": 0}))
  assert _raw_steps(tmp_path) == [1, 2]
  assert "stale" not in read_jsonl(str(tmp_path))[-1]
  assert _tensorboard_steps(tmp_path, "train/loss") == [1, 2]
