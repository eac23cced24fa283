"""Checkpointer: round trip, keep-last-N plus best, sharded restore, no restore of half-written steps, and verified
restores that fall back past damaged steps."""

import glob
import json
import logging
import os
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from memr1_jax import sharding
from memr1_jax.checkpoint import CheckpointError, Checkpointer


def _state(seed):
  k = jax.random.key(seed)
  return {"w": jax.random.normal(k, (8, 4)).astype(jnp.bfloat16), "step": jnp.asarray(seed, jnp.int32),
          "rng": jax.random.key_data(k)}


def test_round_trip_restores_equal_values_and_meta(tmp_path):
  """A saved state and its metadata come back equal, bf16 leaves and 0-d scalars included."""
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(3, _state(3), {"data_position": 17, "note": "x"})
  state, meta, step = ckpt.restore(_state(0))
  assert step == 3 and meta == {"data_position": 17, "note": "x"}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_state(3))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.dtype == b.dtype


def test_keeps_last_n_and_the_best(tmp_path):
  """With keep_last=2 and best by 'em', the two newest steps and the best-scoring older step survive."""
  ckpt = Checkpointer(str(tmp_path), keep_last=2, best_metric="em")
  for step, em in [(1, 0.1), (2, 0.9), (3, 0.2), (4, 0.3), (5, 0.1)]:
    ckpt.save(step, _state(step), {}, metrics={"em": em})
  ckpt.wait()
  assert sorted(ckpt.all_steps()) == [2, 4, 5]
  assert ckpt.best_step() == 2


def test_restore_places_arrays_into_the_target_sharding(tmp_path):
  """Restoring into an abstract state with a NamedSharding gives arrays with that sharding."""
  mesh = sharding.make_mesh((1, -1, 1))
  target = NamedSharding(mesh, P("fsdp", None))
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, {"w": jnp.arange(32.0).reshape(8, 4)}, {})
  abstract = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=target)}
  state, _, _ = ckpt.restore(abstract)
  assert state["w"].sharding.is_equivalent_to(target, 2)
  np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(32.0).reshape(8, 4))


def test_arrays_in_host_memory_are_saved_and_restored_into_host_memory(tmp_path):
  """Sharded arrays in pinned host memory (offloaded optimizer states) save, and restore equal and still there."""
  host = NamedSharding(sharding.make_mesh((1, -1, 1)), P("fsdp", None), memory_kind="pinned_host")
  value = np.arange(32.0, dtype=np.float32).reshape(8, 4)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, {"mu": jax.device_put(value, host)}, {})
  ckpt.wait()
  state, _, _ = ckpt.restore({"mu": jax.device_put(np.zeros_like(value), host)})
  assert state["mu"].sharding.memory_kind == "pinned_host"
  np.testing.assert_array_equal(np.asarray(state["mu"]), value)


def test_half_written_step_is_ignored(tmp_path):
  """A step directory left by a killed save (no commit marker) is not taken as the latest checkpoint."""
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(1), {"pos": 1})
  ckpt.close()
  # What a save killed mid-write leaves: orbax's temporary directory for step 2.
  os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-1234" / "state")
  ckpt = Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 1
  _, meta, step = ckpt.restore(_state(0))
  assert (step, meta) == (1, {"pos": 1})


def test_restore_without_checkpoint_raises(tmp_path):
  """Restoring from an empty directory raises FileNotFoundError naming the directory."""
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    Checkpointer(str(tmp_path)).restore(_state(0))


# ----------------------------------------------------------------------------- damaged steps


def _big_state(seed):
  """A state whose float32 array is large and random enough for zstd to store some of it as is: a flipped byte
  there decompresses without error (what silently poisoned a user's run)."""
  k = jax.random.key(seed)
  return {"w": jax.random.normal(k, (256, 256)), "b": jax.random.normal(k, (64, 32)).astype(jnp.bfloat16),
          "step": jnp.asarray(seed, jnp.int32)}


def _saved_run(directory, steps=(1, 2), keep_last=3):
  """A Checkpointer at `directory` with `_big_state(s)` saved at each of `steps` (meta {"next_step": s})."""
  ckpt = Checkpointer(str(directory), keep_last=keep_last)
  for s in steps:
    ckpt.save(s, _big_state(s), {"next_step": s})
  ckpt.close()
  return Checkpointer(str(directory), keep_last=keep_last)


def _data_file(directory, step):
  """The largest array data file of `step` (where most of the state's bytes are)."""
  return max(glob.glob(os.path.join(str(directory), str(step), "state", "**", "d", "*"), recursive=True),
             key=os.path.getsize)


def _flip(path, count=64):
  """Flips the low bit of `count` bytes in the middle of the file."""
  with open(path, "rb") as f:
    data = bytearray(f.read())
  middle = len(data) // 2
  for i in range(middle, middle + count):
    data[i] ^= 0x01
  with open(path, "wb") as f:
    f.write(bytes(data))


def _assert_state_of(state, step):
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_big_state(step))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.name == "memr1_jax.checkpoint" and r.levelno >= logging.WARNING]


def test_flipped_bytes_in_the_latest_step_fall_back_to_the_previous_step(tmp_path, caplog):
  """64 flipped bytes of array data in the latest step: restore returns the previous step's exact arrays, logs one
  warning line naming both steps, and keeps the damaged step aside so the run can save that step again."""
  ckpt = _saved_run(tmp_path)
  _flip(_data_file(tmp_path, 2))
  with caplog.at_level(logging.WARNING):
    state, meta, step = ckpt.restore(_big_state(0))
  assert (step, meta) == (1, {"next_step": 1})
  _assert_state_of(state, 1)
  [line] = _warnings(caplog)
  assert "\n" not in line and "restored step 1 instead of damaged step(s) 2: " in line and "'w'" in line
  assert os.path.isdir(tmp_path / "2.damaged") and ckpt.all_steps() == [1]
  ckpt.save(2, _big_state(2), {"next_step": 2})
  assert ckpt.restore(_big_state(0))[2] == 2


def test_changed_metadata_is_detected(tmp_path, caplog):
  """A step whose metadata JSON was changed (still valid JSON) is skipped like damaged array data."""
  ckpt = _saved_run(tmp_path)
  (tmp_path / "2" / "meta" / "metadata").write_text(json.dumps({"next_step": 7}))
  with caplog.at_level(logging.WARNING):
    assert ckpt.restore(_big_state(0))[1:] == ({"next_step": 1}, 1)
  assert "the metadata" in _warnings(caplog)[0]


@pytest.mark.parametrize("which", ["data", "state/_METADATA", "meta/metadata", "integrity/metadata"])
@pytest.mark.parametrize("how", ["delete", "truncate", "empty"])
def test_missing_or_cut_file_of_the_latest_step_falls_back(tmp_path, caplog, which, how):
  """A deleted, truncated or emptied file of the latest step: restore falls back to the previous step with one
  warning line instead of failing."""
  ckpt = _saved_run(tmp_path)
  path = _data_file(tmp_path, 2) if which == "data" else str(tmp_path / "2" / which)
  if how == "delete":
    os.remove(path)
  else:
    os.truncate(path, os.path.getsize(path) // 2 if how == "truncate" else 0)
  with caplog.at_level(logging.WARNING):
    state, _, step = ckpt.restore(_big_state(0))
  assert step == 1
  _assert_state_of(state, 1)
  assert len(_warnings(caplog)) == 1


def test_every_step_damaged_raises_one_short_paragraph(tmp_path):
  """When no step verifies, restore raises CheckpointError: one paragraph naming each step and why, no chained
  traceback."""
  ckpt = _saved_run(tmp_path)
  _flip(_data_file(tmp_path, 1))
  os.remove(_data_file(tmp_path, 2))
  with pytest.raises(CheckpointError, match=r"no checkpoint step can be restored.*step 2: .*step 1: ") as e:
    ckpt.restore(_big_state(0))
  message = str(e.value)
  assert "\n" not in message and len(message) < 1000
  assert "The above exception" not in "".join(traceback.format_exception(e.value))  # Nothing chained.
  assert ckpt.all_steps() == [1, 2]  # Nothing is moved aside when there is nothing to fall back to.


def test_explicit_damaged_step_raises_naming_it(tmp_path):
  """Asking for a damaged step by number raises CheckpointError naming its directory (no fallback)."""
  ckpt = _saved_run(tmp_path)
  _flip(_data_file(tmp_path, 2))
  with pytest.raises(CheckpointError, match=rf"{tmp_path}/2: 1 item\(s\) differ .*'w'.*Other steps: \[1\]"):
    ckpt.restore(_big_state(0), 2)
  with pytest.raises(CheckpointError, match=rf"{tmp_path}/2: "):
    Checkpointer(str(tmp_path)).restore_partial({"w": _big_state(0)["w"]}, 2)


def test_partial_restore_verifies_only_the_arrays_read(tmp_path):
  """restore_partial checks the arrays it reads: damage to an array it does not read does not stop it."""
  ckpt = _saved_run(tmp_path)
  _flip(_data_file(tmp_path, 2))  # The data of 'w'.
  subtree, _, step = ckpt.restore_partial({"b": _big_state(0)["b"]})
  assert step == 2
  np.testing.assert_array_equal(np.asarray(subtree["b"]), np.asarray(_big_state(2)["b"]))
  assert Checkpointer(str(tmp_path)).restore_partial({"w": _big_state(0)["w"]})[2] == 1


def test_keep_last_n_keeps_the_last_finite_step(tmp_path):
  """keep_last=2 with the last two saves non-finite: the newest finite step stays on disk and last_finite_step()
  names it, also for a Checkpointer opened later."""
  ckpt = Checkpointer(str(tmp_path), keep_last=2, best_metric="em")
  for step in range(1, 5):
    state = _state(step)
    if step > 2:
      state["w"] = state["w"].at[0, 0].set(jnp.nan)
    ckpt.save(step, state, {}, metrics={"em": 0.5} if step == 1 else None)
  ckpt.close()
  assert sorted(ckpt.all_steps()) == [1, 2, 3, 4] and ckpt.last_finite_step() == 2
  ckpt.save(5, {**_state(5), "w": _state(5)["w"].at[1, 1].set(jnp.inf)}, {})
  assert sorted(ckpt.all_steps()) == [1, 2, 4, 5]
  assert Checkpointer(str(tmp_path)).last_finite_step() == 2


def test_step_saved_without_digests_still_restores(tmp_path):
  """A step written by older code (no digest record) restores unverified, also as the fallback of a damaged step."""
  old = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True),
                              item_names=("state", "meta"))
  old.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(_big_state(1)),
                                      meta=ocp.args.JsonSave({"next_step": 1})))
  old.close()
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(2, _big_state(2), {"next_step": 2})
  _flip(_data_file(tmp_path, 2))
  state, meta, step = ckpt.restore(_big_state(0))
  assert (step, meta) == (1, {"next_step": 1})
  _assert_state_of(state, 1)
  assert ckpt.last_finite_step() is None
