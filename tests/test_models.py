"""Tests for memr1_jax.models: logits parity with transformers' PyTorch Qwen2 / LLaMA, the KV cache, export, bad input.

Every checkpoint is a tiny random-init transformers model (all weights, biases and norm scales random) written with
`save_pretrained`; the reference is transformers' own forward pass on the same directory.
"""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from memr1_jax.models import CheckpointError, KVCache, PRESETS, export_pretrained, load_pretrained, positions_from_mask
from memr1_jax.models.config import config_from_hf, config_to_hf
from memr1_jax.models.attention import cached_attention, cascade_attention, decode_kv_bytes
from memr1_jax.models.decoder import rope_inv_freq
from memr1_jax.testing import LLAMA3_SCALING, hf_logits, left_padded_batch, load_hf_model, make_hf_checkpoint

VOCAB = 384
TOL = 1e-4
# Rows of different lengths, the longest past llama3's original_max_position_embeddings (64); one single token.
LENGTHS = (96, 61, 5, 1)

CASES = {
    "qwen2_tied_mha": dict(family="qwen2", tie=True, heads=4, kv_heads=4),
    "qwen2_untied_gqa2_sharded": dict(family="qwen2", tie=False, heads=4, kv_heads=2, max_shard_size="20KB"),
    "llama_untied_mqa_llama3": dict(family="llama", tie=False, heads=4, kv_heads=1, rope_scaling=LLAMA3_SCALING),
    "llama_tied_gqa2": dict(family="llama", tie=True, heads=4, kv_heads=2),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  """name -> directory of each tiny checkpoint in CASES (built once per module)."""
  root = tmp_path_factory.mktemp("ckpts")
  return {name: make_hf_checkpoint(str(root / name), vocab=VOCAB, seed=i, **kw)
          for i, (name, kw) in enumerate(CASES.items())}


@pytest.fixture(scope="module")
def batch():
  """A left-padded batch (input_ids_bt, attention_mask_bt) of rows with LENGTHS."""
  return left_padded_batch(LENGTHS, VOCAB, seed=1)


def _max_diff_on_tokens(a_btv, b_btv, mask_bt) -> float:
  return float(np.abs(np.asarray(a_btv) - np.asarray(b_btv))[np.asarray(mask_bt, bool)].max())


def _copy(src: str, tmp_path) -> str:
  dst = str(tmp_path / "ckpt")
  shutil.copytree(src, dst)
  return dst


def _rewrite_tensors(path: str, fname: str, edit) -> None:
  """Loads `path/fname` with the safetensors library, applies `edit(dict)` and writes it back."""
  full = os.path.join(path, fname)
  tensors = dict(safetensors.numpy.load_file(full))
  edit(tensors)
  safetensors.numpy.save_file(tensors, full, metadata={"format": "pt"})


def _edit_config(path: str, **fields) -> None:
  fname = os.path.join(path, "config.json")
  with open(fname) as f:
    hf = json.load(f)
  for key, value in fields.items():
    if isinstance(value, dict):
      hf[key] = {**hf.get(key, {}), **value}
    else:
      hf[key] = value
  with open(fname, "w") as f:
    json.dump(hf, f)


# ----------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, ckpts, batch):
  """Logits equal transformers' on every non-pad position of a left-padded batch (max abs diff < 1e-4)."""
  ids_bt, mask_bt = batch
  model, _ = load_pretrained(ckpts[name])
  diff = _max_diff_on_tokens(model(ids_bt, mask_bt), hf_logits(ckpts[name], ids_bt, mask_bt), mask_bt)
  assert diff < TOL, f"{name}: max abs diff {diff}"


def test_pad_positions_are_finite(ckpts, batch):
  """Left-pad positions (whose queries see no valid key) still give finite logits, so masked losses stay finite."""
  model, _ = load_pretrained(ckpts["qwen2_untied_gqa2_sharded"])
  assert np.isfinite(np.asarray(model(*batch))).all()


def test_checkpoint_cases_cover_the_intended_variants(ckpts):
  """The parity cases really are tied / untied, MHA / GQA / MQA, llama3-scaled and multi-shard."""
  cfgs = {name: load_pretrained(path)[1] for name, path in ckpts.items()}
  assert {c.tie_word_embeddings for c in cfgs.values()} == {True, False}
  assert {c.num_heads // c.num_kv_heads for c in cfgs.values()} == {1, 2, 4}
  llama3 = cfgs["llama_untied_mqa_llama3"]
  assert llama3.rope_scaling is not None and llama3.max_position_embeddings > 64
  files = os.listdir(ckpts["qwen2_untied_gqa2_sharded"])
  assert "model.safetensors.index.json" in files
  assert sum(f.endswith(".safetensors") for f in files) > 2


def test_llama3_scaling_matters_for_parity(ckpts, batch):
  """Dropping the llama3 rope scaling breaks parity, so the parity test above exercises it."""
  ids_bt, mask_bt = batch
  path = ckpts["llama_untied_mqa_llama3"]
  model, _ = load_pretrained(path, rope_scaling=None)
  assert _max_diff_on_tokens(model(ids_bt, mask_bt), hf_logits(path, ids_bt, mask_bt), mask_bt) > 1e-2


def test_rope_inv_freq_matches_transformers_llama31_8b():
  """Llama-3.1-8B's scaled RoPE frequencies (all three bands) equal transformers' llama3 rope init."""
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # pylint: disable=g-import-not-at-top

  cfg = PRESETS["llama3.1-8b"]
  hf_cfg = transformers.LlamaConfig(**config_to_hf(cfg))
  ref_h, attention_scale = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
  ours_h = np.asarray(rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
  np.testing.assert_allclose(ours_h, ref_h.numpy(), rtol=1e-6)
  assert attention_scale == 1.0
  unscaled_h = np.asarray(rope_inv_freq(cfg.head_dim, cfg.rope_theta, None))
  ratio_h = unscaled_h / ours_h
  assert ratio_h.min() == pytest.approx(1.0) and ratio_h.max() == pytest.approx(8.0)
  assert np.any((ratio_h > 1.01) & (ratio_h < 7.99)), "no frequency in the smoothed medium band"


def test_kv_cache_decoding_matches_full_forward(ckpts):
  """Prefill, a 3-token chunk, then one-token steps through a KVCache give the full forward's logits."""
  path = ckpts["llama_untied_mqa_llama3"]
  model, cfg = load_pretrained(path)
  prompt_bt, prompt_mask_bt = left_padded_batch((9, 4, 1), VOCAB, seed=2)
  new_bt = np.random.default_rng(3).integers(0, VOCAB, (3, 7)).astype(np.int32)
  ids_bt = np.concatenate([prompt_bt, new_bt], 1)
  mask_bt = np.concatenate([prompt_mask_bt, np.ones_like(new_bt)], 1)
  full_btv = np.asarray(model(ids_bt, mask_bt))
  positions_bt = np.asarray(positions_from_mask(mask_bt))

  @nnx.jit
  def step(model, ids_bt, mask_bt, positions_bt, cache):
    hidden_btd, cache = model.forward_hidden(ids_bt, mask_bt, positions_bt, cache=cache)
    return model.logits(hidden_btd), cache

  cache = KVCache.init(cfg, batch=3, max_len=ids_bt.shape[1] + 4)  # spare slots stay unwritten
  chunks = [(0, 9), (9, 12)] + [(t, t + 1) for t in range(12, 16)]
  for start, end in chunks:
    logits_btv, cache = step(model, ids_bt[:, start:end], mask_bt[:, start:end], positions_bt[:, start:end], cache)
    diff = _max_diff_on_tokens(logits_btv, full_btv[:, start:end], mask_bt[:, start:end])
    assert diff < TOL, f"tokens [{start}, {end}): max abs diff {diff}"
  assert int(cache.end) == 16


def test_cached_attention_matches_dot_product_attention():
  """Decode-step attention over a [B, K, S, H] cache equals jax.nn.dot_product_attention over [B, S, K, H] (GQA)."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  b, t, k, g, s, h = 3, 2, 2, 3, 11, 8
  q = jnp.asarray(rng.standard_normal((b, t, k * g, h)), jnp.float32)
  k_bskh = jnp.asarray(rng.standard_normal((b, s, k, h)), jnp.float32)
  v_bskh = jnp.asarray(rng.standard_normal((b, s, k, h)), jnp.float32)
  mask_bts = jnp.asarray(rng.random((b, t, s)) < 0.6).at[:, :, 0].set(True)
  want = jax.nn.dot_product_attention(q, k_bskh, v_bskh, mask=mask_bts[:, None], scale=0.3)
  got = cached_attention(q, k_bskh.transpose(0, 2, 1, 3), v_bskh.transpose(0, 2, 1, 3), mask_bts, 0.3)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_cascade_attention_equals_attention_over_the_repeated_cache():
  """Prompt KV once per prompt + per-row suffix KV, merged by log-sum-exp, equals attention over both concatenated."""
  rng = np.random.default_rng(1)
  b, n, t, k, g, h, p, m = 3, 4, 2, 2, 3, 8, 7, 5
  r = b * n
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  q = normal(r, t, k * g, h)
  prefix_k, prefix_v = normal(b, k, p, h), normal(b, k, p, h)
  k_rksh, v_rksh = normal(r, k, m, h), normal(r, k, m, h)
  prefix_valid_bs = jnp.asarray(rng.random((b, p)) < 0.7).at[:, -1].set(True)
  mask_rts = jnp.asarray(rng.random((r, t, m)) < 0.6).at[:, :, 0].set(True)
  got = cascade_attention(q, prefix_k, prefix_v, prefix_valid_bs, k_rksh, v_rksh, mask_rts, 0.3)
  full_mask_rts = jnp.concatenate([jnp.broadcast_to(jnp.repeat(prefix_valid_bs, n, 0)[:, None], (r, t, p)),
                                   mask_rts], axis=2)
  want = cached_attention(q, jnp.concatenate([jnp.repeat(prefix_k, n, 0), k_rksh], 2),
                          jnp.concatenate([jnp.repeat(prefix_v, n, 0), v_rksh], 2), full_mask_rts, 0.3)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_decode_kv_bytes_counts_the_prompt_once_per_prompt():
  """Shared prefix reads P slots per prompt plus M per row; the repeated cache P + M per row (by hand)."""
  shape = dict(num_layers=2, kv_heads=3, head_dim=4, itemsize=2, prompts=5, n=8, prompt_slots=100, new_slots=10)
  slot = 2 * 2 * 3 * 4 * 2  # K and V, layers, heads, head dim, bytes
  assert decode_kv_bytes(**shape, shared_prefix=False) == slot * 40 * 110
  assert decode_kv_bytes(**shape, shared_prefix=True) == slot * (5 * 100 + 40 * 10)


# ----------------------------------------------------------------------------------------------------- config


def test_config_reads_transformers4_llama31_layout():
  """A transformers-4 style Llama-3.1-8B config.json (rope_theta + rope_scaling) parses to the llama3.1-8b preset."""
  hf = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
      "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
      "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16",
  }
  cfg = config_from_hf(hf)
  preset = PRESETS["llama3.1-8b"]
  assert cfg.replace(eos_token_ids=preset.eos_token_ids, pad_token_id=preset.pad_token_id) == preset
  assert cfg.eos_token_ids == (128001, 128008, 128009)


def test_config_reads_transformers4_qwen25_layout():
  """Qwen2.5-7B-Instruct's config.json (rope_scaling null, sliding window off) parses to the qwen2.5-7b preset."""
  hf = {
      "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
      "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
      "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
      "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_scaling": None,
      "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
      "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
  }
  cfg = config_from_hf(hf)
  preset = PRESETS["qwen2.5-7b"]
  assert cfg.replace(eos_token_ids=preset.eos_token_ids, pad_token_id=preset.pad_token_id) == preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_to_hf_round_trips(name):
  """config_from_hf(config_to_hf(cfg)) gives back every preset unchanged."""
  cfg = PRESETS[name]
  assert config_from_hf(config_to_hf(cfg)) == cfg


# ----------------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", ["qwen2_tied_mha", "llama_untied_mqa_llama3"])
def test_export_reloads_in_transformers_with_identical_logits(name, ckpts, batch, tmp_path):
  """export_pretrained -> AutoModelForCausalLM.from_pretrained gives exactly the original checkpoint's logits."""
  ids_bt, mask_bt = batch
  model, cfg = load_pretrained(ckpts[name])
  out = str(tmp_path / "export")
  export_pretrained(model, out)
  reloaded = load_hf_model(out)
  assert reloaded.config.tie_word_embeddings == cfg.tie_word_embeddings
  np.testing.assert_array_equal(hf_logits(reloaded, ids_bt, mask_bt), hf_logits(ckpts[name], ids_bt, mask_bt))


def test_export_in_several_shards_reloads(ckpts, batch, tmp_path):
  """A small max_shard_bytes writes several shards and an index that transformers and load_pretrained both read."""
  ids_bt, mask_bt = batch
  path = ckpts["qwen2_untied_gqa2_sharded"]
  model, _ = load_pretrained(path)
  out = str(tmp_path / "export")
  export_pretrained(model, out, max_shard_bytes=16_000)
  shards = [f for f in os.listdir(out) if f.endswith(".safetensors")]
  assert len(shards) > 3 and "model.safetensors.index.json" in os.listdir(out)
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    assert sorted(set(json.load(f)["weight_map"].values())) == sorted(shards)
  reference_btv = hf_logits(path, ids_bt, mask_bt)
  np.testing.assert_array_equal(hf_logits(out, ids_bt, mask_bt), reference_btv)
  again, _ = load_pretrained(out)
  assert _max_diff_on_tokens(again(ids_bt, mask_bt), reference_btv, mask_bt) < TOL


def test_export_bfloat16(ckpts, batch, tmp_path):
  """dtype="bfloat16" writes BF16 tensors equal to the rounded weights; transformers and we agree on them."""
  ids_bt, mask_bt = batch
  path = ckpts["llama_untied_mqa_llama3"]
  model, _ = load_pretrained(path)
  out = str(tmp_path / "export")
  export_pretrained(model, out, dtype="bfloat16")
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  exported = load_file(os.path.join(out, "model.safetensors"))
  original = load_file(os.path.join(path, "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, tensor in original.items():
    assert exported[name].dtype == torch.bfloat16, name
    assert torch.equal(exported[name], tensor.to(torch.bfloat16)), name
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["dtype"] == "bfloat16"
  ours, _ = load_pretrained(out)
  assert _max_diff_on_tokens(ours(ids_bt, mask_bt), hf_logits(out, ids_bt, mask_bt), mask_bt) < TOL


def test_export_copies_tokenizer_files(tmp_path):
  """export_pretrained(tokenizer_dir=...) copies the tokenizer, its chat template and generation_config along."""
  src = make_hf_checkpoint(str(tmp_path / "src"), vocab=VOCAB, tokenizer="bpe")
  model, _ = load_pretrained(src)
  out = str(tmp_path / "export")
  export_pretrained(model, out, tokenizer_dir=src)
  for fname in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    with open(os.path.join(src, fname), "rb") as a, open(os.path.join(out, fname), "rb") as b:
      assert a.read() == b.read(), fname


def test_export_replaces_an_existing_directory(ckpts, tmp_path):
  """Exporting over an existing checkpoint leaves only the new files (no stale shards)."""
  out = str(tmp_path / "export")
  model, _ = load_pretrained(ckpts["qwen2_tied_mha"])
  export_pretrained(model, out, max_shard_bytes=16_000)
  export_pretrained(model, out, overwrite=True)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


# ----------------------------------------------------------------------------------------------------- bad input


def _load_error(path: str) -> str:
  with pytest.raises(CheckpointError) as e:
    load_pretrained(path)
  return str(e.value)


def test_missing_directory_is_named(tmp_path):
  """A directory that does not exist raises CheckpointError naming its config.json."""
  path = str(tmp_path / "nowhere")
  assert os.path.join(path, "config.json") in _load_error(path)


def test_missing_config_is_named(ckpts, tmp_path):
  """A checkpoint without config.json raises CheckpointError naming the file."""
  path = _copy(ckpts["qwen2_tied_mha"], tmp_path)
  os.remove(os.path.join(path, "config.json"))
  msg = _load_error(path)
  assert os.path.join(path, "config.json") in msg and "not found" in msg


def test_missing_weights_file_is_named(ckpts, tmp_path):
  """A checkpoint without model.safetensors or an index raises CheckpointError saying which files are expected."""
  path = _copy(ckpts["qwen2_tied_mha"], tmp_path)
  os.remove(os.path.join(path, "model.safetensors"))
  msg = _load_error(path)
  assert path in msg and "model.safetensors" in msg


def test_pickle_checkpoint_is_refused(ckpts, tmp_path):
  """A directory holding only pytorch_model.bin is refused with a message about pickle and safetensors."""
  path = _copy(ckpts["qwen2_tied_mha"], tmp_path)
  os.remove(os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "pytorch_model.bin"), "wb") as f:
    f.write(b"not to be unpickled")
  msg = _load_error(path)
  assert "pytorch_model.bin" in msg and "pickle" in msg and "safetensors" in msg


def test_shard_missing_from_index_is_named(ckpts, tmp_path):
  """A shard listed in model.safetensors.index.json but absent raises CheckpointError naming the shard."""
  path = _copy(ckpts["qwen2_untied_gqa2_sharded"], tmp_path)
  shard = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[1]
  os.remove(os.path.join(path, shard))
  msg = _load_error(path)
  assert os.path.join(path, shard) in msg and "index" in msg


@pytest.mark.parametrize("field,value", [
    ("hidden_act", "gelu"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0}),
    ("model_type", "mistral"),
    ("use_sliding_window", True),
])
def test_unsupported_config_field_is_named(field, value, ckpts, tmp_path):
  """An unsupported config.json field raises CheckpointError naming the file, the field and its value."""
  path = _copy(ckpts["qwen2_tied_mha"], tmp_path)
  _edit_config(path, **{field: value})
  msg = _load_error(path)
  shown_field = "rope_type" if field == "rope_parameters" else field
  shown_value = value["rope_type"] if isinstance(value, dict) else value
  assert os.path.join(path, "config.json") in msg and shown_field in msg and str(shown_value).lower() in msg.lower()


def test_wrong_tensor_shape_is_named(ckpts, tmp_path):
  """A tensor whose shape does not fit its parameter raises CheckpointError naming the file and the tensor."""
  path = _copy(ckpts["llama_tied_gqa2"], tmp_path)
  name = "model.layers.1.self_attn.k_proj.weight"
  _rewrite_tensors(path, "model.safetensors", lambda t: t.update({name: t[name][:-1]}))
  msg = _load_error(path)
  assert os.path.join(path, "model.safetensors") in msg and repr(name) in msg


def test_wrong_bias_shape_is_named(ckpts, tmp_path):
  """A bias with the wrong number of entries raises CheckpointError naming the file and the tensor."""
  path = _copy(ckpts["qwen2_tied_mha"], tmp_path)
  name = "model.layers.0.self_attn.q_proj.bias"
  _rewrite_tensors(path, "model.safetensors", lambda t: t.update({name: np.concatenate([t[name], t[name]])}))
  msg = _load_error(path)
  assert os.path.join(path, "model.safetensors") in msg and repr(name) in msg


def test_unexpected_tensor_is_named(ckpts, tmp_path):
  """A checkpoint tensor the model does not use raises CheckpointError naming the file and the tensor."""
  path = _copy(ckpts["llama_tied_gqa2"], tmp_path)
  name = "model.layers.0.mlp.extra_proj.weight"
  _rewrite_tensors(path, "model.safetensors", lambda t: t.update({name: np.zeros((4, 4), np.float32)}))
  msg = _load_error(path)
  assert os.path.join(path, "model.safetensors") in msg and repr(name) in msg


def test_missing_tensor_is_named(ckpts, tmp_path):
  """An untied checkpoint without lm_head.weight raises CheckpointError naming the tensor and the directory."""
  path = _copy(ckpts["llama_untied_mqa_llama3"], tmp_path)
  _rewrite_tensors(path, "model.safetensors", lambda t: t.pop("lm_head.weight"))
  msg = _load_error(path)
  assert path in msg and "'lm_head.weight'" in msg


def test_truncated_safetensors_is_named(ckpts, tmp_path):
  """A safetensors file cut short raises CheckpointError naming the file and a tensor that lies past its end."""
  path = _copy(ckpts["qwen2_tied_mha"], tmp_path)
  fname = os.path.join(path, "model.safetensors")
  with open(fname, "rb") as f:
    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
  header.pop("__metadata__", None)
  last = max(header, key=lambda n: header[n]["data_offsets"][1])
  os.truncate(fname, os.path.getsize(fname) - 100)
  msg = _load_error(path)
  assert fname in msg and "truncated" in msg and repr(last) in msg


def test_truncated_header_is_named(ckpts, tmp_path):
  """A safetensors file cut inside its JSON header raises CheckpointError naming the file."""
  path = _copy(ckpts["qwen2_tied_mha"], tmp_path)
  fname = os.path.join(path, "model.safetensors")
  os.truncate(fname, 50)
  msg = _load_error(path)
  assert fname in msg and "truncated" in msg


def test_compute_dtype_bfloat16_stays_close(ckpts, batch):
  """bf16 parameters and matmuls give finite float32 logits close to the fp32 ones (loose bf16 tolerance)."""
  ids_bt, mask_bt = batch
  path = ckpts["qwen2_untied_gqa2_sharded"]
  model, cfg = load_pretrained(path, dtype="bfloat16")
  assert cfg.param_dtype == "bfloat16" and model.embed_vd[...].dtype == jnp.bfloat16
  logits_btv = np.asarray(model(ids_bt, mask_bt))
  assert logits_btv.dtype == np.float32
  reference_btv = hf_logits(path, ids_bt, mask_bt)
  assert _max_diff_on_tokens(logits_btv, reference_btv, mask_bt) < 0.1 * np.abs(reference_btv).max()
