"""Checkpointer: round trip, keep-last-N plus best, sharded restore, and no restore of half-written steps."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from memr1_jax import sharding
from memr1_jax.checkpoint import Checkpointer


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
