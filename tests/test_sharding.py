"""Tests for memr1_jax.sharding on 8 virtual CPU devices (tests/conftest.py): meshes, parameter specs, sharded forward.

The checkpoint is sized so every mesh axis divides the dimensions it shards (hidden 64, heads 8, mlp 128, vocab 256)
except the 4 KV heads on a tensor axis of 8, which must fall back to replication.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from memr1_jax import sharding as sharding_lib
from memr1_jax.errors import ConfigError
from memr1_jax.models import Decoder, export_pretrained, load_pretrained
from memr1_jax.testing import left_padded_batch, make_hf_checkpoint

VOCAB = 256
MESH_SHAPES = ((1, 8, 1), (2, 2, 2), (1, 1, 8))

# Expected PartitionSpec per mesh shape and parameter (layer 1 stands for every layer).
EXPECTED_SPECS = {
    (1, 8, 1): {
        "q": P("fsdp", None, None), "k": P("fsdp", None, None), "o": P(None, None, "fsdp"),
        "q_bias": P(None, None), "k_bias": P(None, None), "gate": P("fsdp", None), "down": P(None, "fsdp"),
        "embed": P(None, "fsdp"), "lm_head": P("fsdp", None), "norm": P(None),
    },
    (2, 2, 2): {
        "q": P("fsdp", "tensor", None), "k": P("fsdp", "tensor", None), "o": P("tensor", None, "fsdp"),
        "q_bias": P("tensor", None), "k_bias": P("tensor", None), "gate": P("fsdp", "tensor"),
        "down": P("tensor", "fsdp"), "embed": P("tensor", "fsdp"), "lm_head": P("fsdp", "tensor"), "norm": P(None),
    },
    (1, 1, 8): {  # 4 KV heads do not divide over 8 devices: k and its bias replicate.
        "q": P(None, "tensor", None), "k": P(None, None, None), "o": P("tensor", None, None),
        "q_bias": P("tensor", None), "k_bias": P(None, None), "gate": P(None, "tensor"), "down": P("tensor", None),
        "embed": P("tensor", None), "lm_head": P(None, "tensor"), "norm": P(None),
    },
}


def _named_params(model: Decoder) -> dict[str, jax.Array]:
  layer = model.layers[1]
  return {
      "q": layer.attn.q_dnh[...], "k": layer.attn.k_dkh[...], "o": layer.attn.o_nhd[...],
      "q_bias": layer.attn.q_bias_nh[...], "k_bias": layer.attn.k_bias_kh[...], "gate": layer.mlp.gate_df[...],
      "down": layer.mlp.down_fd[...], "embed": model.embed_vd[...], "lm_head": model.lm_head_dv[...],
      "norm": layer.input_norm.weight[...],
  }


def _local_shape(shape, spec, mesh) -> tuple[int, ...]:
  """Each device's slice of an array of `shape` laid out by `spec` (every dimension divides evenly here)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    out.append(dim // int(np.prod([mesh.shape[a] for a in axes])))
  return tuple(out)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """A tiny untied Qwen2 checkpoint: hidden 64, 8 heads of 8, 4 KV heads, mlp 128, vocab 256."""
  return make_hf_checkpoint(str(tmp_path_factory.mktemp("sharding") / "qwen2"), family="qwen2", hidden=64,
                            intermediate=128, heads=8, kv_heads=4, vocab=VOCAB, seed=5)


@pytest.fixture(scope="module")
def batch():
  """A left-padded batch of 8 rows (divisible by every data * fsdp product used here)."""
  return left_padded_batch((12, 12, 9, 7, 5, 3, 2, 1), VOCAB, seed=6)


@pytest.fixture(scope="module")
def unsharded_logits(ckpt, batch):
  """Logits of the single-device model on `batch`."""
  model, _ = load_pretrained(ckpt)
  return np.asarray(model(*batch))


def test_eight_virtual_devices():
  """tests/conftest.py gives this session 8 CPU devices."""
  assert jax.device_count() == 8


def test_make_mesh_axes_and_fill():
  """make_mesh names the axes (data, fsdp, tensor), fills -1, uses Auto axis types and rejects a bad shape."""
  mesh = sharding_lib.make_mesh((2, -1, 2))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="does not cover"):
    sharding_lib.make_mesh((3, 1, 1))


def test_setup_mesh_spans_the_first_num_devices_devices():
  """config.mesh.num_devices picks the first N devices (the -1 fills over them); an impossible count names the field."""
  from memr1_jax import components  # pylint: disable=g-import-not-at-top
  from memr1_jax.defaults import default_config  # pylint: disable=g-import-not-at-top
  config = default_config()
  assert components.setup_mesh(config).devices.size == 8
  config.mesh.num_devices = 2
  mesh = components.setup_mesh(config)
  assert list(mesh.devices.flat) == jax.devices()[:2] and dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 1}
  config.mesh.num_devices = 9
  with pytest.raises(ConfigError, match="config.mesh.num_devices=9"):
    components.setup_mesh(config)


def test_logical_to_spec_replicates_when_not_divisible():
  """A dimension that does not divide by its mesh axis, or whose axis has size 1, is replicated."""
  mesh = sharding_lib.make_mesh((1, 2, 4))
  assert sharding_lib.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 4, 8), mesh) == P("fsdp", "tensor", None)
  assert sharding_lib.logical_to_spec(("embed", "kv_heads", "head_dim"), (63, 2, 8), mesh) == P(None, None, None)
  assert sharding_lib.logical_to_spec(("batch", "embed"), (8, 64), mesh) == P("fsdp", None)  # fsdp used once
  assert sharding_lib.logical_to_spec(None, (3,), mesh) == P()


@pytest.mark.parametrize("shape", MESH_SHAPES)
def test_batch_sharding_splits_rows_over_data_and_fsdp(shape):
  """batch_sharding shards the batch dimension over the data and fsdp axes larger than 1, nothing else."""
  mesh = sharding_lib.make_mesh(shape)
  expected = {(1, 8, 1): P("fsdp", None), (2, 2, 2): P(("data", "fsdp"), None), (1, 1, 8): P(None, None)}[shape]
  assert sharding_lib.batch_sharding(mesh) == NamedSharding(mesh, expected)


@pytest.mark.parametrize("shape", MESH_SHAPES)
def test_load_pretrained_places_parameters_by_logical_rules(shape, ckpt):
  """load_pretrained(mesh=...) puts each parameter on the mesh with its intended PartitionSpec and local slice."""
  mesh = sharding_lib.make_mesh(shape)
  model, _ = load_pretrained(ckpt, mesh=mesh)
  params = _named_params(model)
  for name, spec in EXPECTED_SPECS[shape].items():
    arr = params[name]
    assert arr.sharding == NamedSharding(mesh, spec), f"{name}: {arr.sharding.spec} != {spec}"
    assert {s.data.shape for s in arr.addressable_shards} == {_local_shape(arr.shape, spec, mesh)}, name
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    assert var[...].sharding.mesh == mesh


def test_shard_model_matches_load_pretrained_placement(ckpt):
  """shard_model on a single-device model gives the same shardings and values as load_pretrained(mesh=...)."""
  mesh = sharding_lib.make_mesh((2, 2, 2))
  direct, _ = load_pretrained(ckpt, mesh=mesh)
  moved, _ = load_pretrained(ckpt)
  sharding_lib.shard_model(moved, mesh)
  direct_params, moved_params = _named_params(direct), _named_params(moved)
  for name, arr in direct_params.items():
    assert moved_params[name].sharding == arr.sharding, name
    np.testing.assert_array_equal(np.asarray(moved_params[name]), np.asarray(arr))


@pytest.mark.parametrize("shape", MESH_SHAPES)
def test_sharded_forward_matches_unsharded(shape, ckpt, batch, unsharded_logits):
  """A jitted forward with sharded parameters and a batch_sharding'd batch equals the single-device logits."""
  mesh = sharding_lib.make_mesh(shape)
  model, _ = load_pretrained(ckpt, mesh=mesh)
  ids_bt, mask_bt = sharding_lib.shard_batch(batch, mesh)
  assert ids_bt.sharding == sharding_lib.batch_sharding(mesh)
  logits_btv = nnx.jit(lambda m, ids, mask: m(ids, mask))(model, ids_bt, mask_bt)
  np.testing.assert_allclose(np.asarray(logits_btv), unsharded_logits, atol=1e-5, rtol=1e-5)


def test_export_from_sharded_model_writes_the_original_tensors(ckpt, tmp_path):
  """export_pretrained gathers a (2, 2, 2)-sharded model into exactly the checkpoint's original tensors."""
  model, _ = load_pretrained(ckpt, mesh=sharding_lib.make_mesh((2, 2, 2)))
  out = str(tmp_path / "export")
  export_pretrained(model, out)
  original = safetensors.numpy.load_file(os.path.join(ckpt, "model.safetensors"))
  exported = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, arr in original.items():
    np.testing.assert_array_equal(exported[name], arr, err_msg=name)
