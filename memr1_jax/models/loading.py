"""Hugging Face checkpoint directory <-> NNX model, tensor by tensor, straight into the target sharding.

The model is built abstractly (`nnx.eval_shape`), each parameter is matched to one checkpoint tensor by a table of
regexes (`WeightRule`), and each device's slice is read from the memory-mapped safetensors file
(`jax.make_array_from_callback`): no model is materialised on one device or twice in host RAM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from memr1_jax import errors
from memr1_jax import sharding as sharding_lib
from memr1_jax.models import safetensors_io
from memr1_jax.models.config import CheckpointError, ModelConfig, config_to_hf, read_hf_config
from memr1_jax.models.decoder import Decoder

Transform = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


def identity(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return x


def transpose(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return x.T


def split_out_heads(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """torch Linear weight [N*H, D] -> [D, N, H] (a view)."""
  d, n, h = shape
  return x.reshape(n, h, x.shape[-1]).transpose(2, 0, 1)


def merge_out_heads(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """[D, N, H] -> torch Linear weight [N*H, D]."""
  return x.transpose(1, 2, 0).reshape(shape)


def split_in_heads(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """torch Linear weight [D, N*H] -> [N, H, D] (a view)."""
  n, h, d = shape
  return x.reshape(x.shape[0], n, h).transpose(1, 2, 0)


def merge_in_heads(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """[N, H, D] -> torch Linear weight [D, N*H]."""
  return x.transpose(2, 0, 1).reshape(shape)


def reshape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return x.reshape(shape)


@dataclasses.dataclass(frozen=True)
class WeightRule:
  """Maps NNX parameter paths matching `nnx_pattern` to checkpoint tensor `hf_template` ({0}, {1}: regex groups).

  `to_nnx(hf_array, nnx_shape)` and `to_hf(nnx_array, hf_shape)` convert the layouts.
  """

  nnx_pattern: str
  hf_template: str
  to_nnx: Transform = identity
  to_hf: Transform = identity


DECODER_RULES: tuple[WeightRule, ...] = (
    WeightRule(r"embed_vd", "model.embed_tokens.weight"),
    WeightRule(r"lm_head_dv", "lm_head.weight", transpose, transpose),
    WeightRule(r"final_norm\.weight", "model.norm.weight"),
    WeightRule(r"layers\.(\d+)\.input_norm\.weight", "model.layers.{0}.input_layernorm.weight"),
    WeightRule(r"layers\.(\d+)\.post_attn_norm\.weight", "model.layers.{0}.post_attention_layernorm.weight"),
    WeightRule(r"layers\.(\d+)\.attn\.([qkv])_d[nk]h", "model.layers.{0}.self_attn.{1}_proj.weight",
               split_out_heads, merge_out_heads),
    WeightRule(r"layers\.(\d+)\.attn\.([qkv])_bias_[nk]h", "model.layers.{0}.self_attn.{1}_proj.bias", reshape, reshape),
    WeightRule(r"layers\.(\d+)\.attn\.o_nhd", "model.layers.{0}.self_attn.o_proj.weight", split_in_heads, merge_in_heads),
    WeightRule(r"layers\.(\d+)\.mlp\.(gate|up)_df", "model.layers.{0}.mlp.{1}_proj.weight", transpose, transpose),
    WeightRule(r"layers\.(\d+)\.mlp\.down_fd", "model.layers.{0}.mlp.down_proj.weight", transpose, transpose),
)

# Checkpoint tensors that carry no parameters of ours.
IGNORED_HF = (r".*rotary_emb\.inv_freq",)


def _path_str(path: Sequence) -> str:
  return ".".join(str(p) for p in path)


def _match(rules: Sequence[WeightRule], path: str) -> tuple[WeightRule, str]:
  for rule in rules:
    m = re.fullmatch(rule.nnx_pattern, path)
    if m:
      return rule, rule.hf_template.format(*m.groups())
  raise CheckpointError(f"no weight rule maps the parameter {path!r}")


def _target_sharding(var, mesh: Mesh | None):
  if mesh is None:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return sharding_lib.variable_sharding(var, mesh)


def load_module(abstract_module: nnx.Module, reader: safetensors_io.CheckpointReader, rules: Sequence[WeightRule],
                *, mesh: Mesh | None = None, ignore: Sequence[str] = IGNORED_HF,
                optional_hf: Sequence[str] = ()) -> nnx.Module:
  """Fills every parameter of `abstract_module` (from `nnx.eval_shape`) from `reader`, sharded over `mesh`.

  Each parameter keeps the dtype of the abstract module. Every parameter must be found with the right shape, and
  every checkpoint tensor must be used (except those matching `ignore`); otherwise CheckpointError names the
  file and tensor and nothing is returned.
  """
  graphdef, abs_state = nnx.split(abstract_module)
  loaded, used = {}, set()
  for path, var in nnx.to_flat_state(abs_state):
    name = _path_str(path)
    rule, hf_name = _match(rules, name)
    if hf_name not in reader:
      raise CheckpointError(f"{reader.path}: tensor {hf_name!r} (for parameter {name}) not found in the checkpoint")
    src = reader.get(hf_name)
    shape, dtype = tuple(var.shape), var.dtype
    try:
      view = rule.to_nnx(src, shape)
    except ValueError as e:
      view = None
      err = e
    if view is None or tuple(view.shape) != shape:
      raise CheckpointError(
          f"{reader.file_of(hf_name)}: tensor {hf_name!r} has shape {tuple(src.shape)}, which does not fit parameter "
          f"{name} of shape {shape}" + (f" ({err})" if view is None else ""))
    sharding = _target_sharding(var, mesh)
    loaded[path] = jax.make_array_from_callback(
        shape, sharding, lambda idx, view=view, dtype=dtype: np.asarray(view[idx], dtype=dtype))
    used.add(hf_name)
  leftovers = [n for n in reader.names() if n not in used and n not in optional_hf
               and not any(re.fullmatch(p, n) for p in ignore)]
  if leftovers:
    listed = ", ".join(f"{reader.file_of(n)}: {n!r}" for n in sorted(leftovers)[:8])
    raise CheckpointError(f"checkpoint tensors not used by the model: {listed} "
                          "(a different architecture or an unsupported config field?)")
  state = nnx.from_flat_state([(p, v.replace(loaded[p])) for p, v in nnx.to_flat_state(abs_state)])
  return nnx.merge(graphdef, state)


def load_pretrained(path: str, *, dtype: str = "float32", param_dtype: str | None = None, mesh: Mesh | None = None,
                    **config_overrides) -> tuple[Decoder, ModelConfig]:
  """Loads a Hugging Face Qwen2 / LLaMA checkpoint directory into a (sharded) `Decoder`.

  Args:
    path: directory with config.json and model.safetensors (or an index + shards).
    dtype: compute dtype; param_dtype: storage dtype (default: `dtype`).
    mesh: a (data, fsdp, tensor) mesh; parameters are placed by `memr1_jax.sharding.LOGICAL_RULES`. None: one device.
    config_overrides: ModelConfig fields to override (e.g. attention_impl, remat).
  Returns:
    (model, cfg).
  """
  cfg = read_hf_config(path, dtype=dtype, param_dtype=param_dtype or dtype, **config_overrides)
  reader = safetensors_io.CheckpointReader(path)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  optional = ("lm_head.weight",) if cfg.tie_word_embeddings else ()
  return load_module(abstract, reader, DECODER_RULES, mesh=mesh, optional_hf=optional), cfg


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1 and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def module_to_hf_tensors(module: nnx.Module, rules: Sequence[WeightRule], hf_shapes: dict[str, tuple[int, ...]] | None
                         = None) -> dict[str, np.ndarray]:
  """Every parameter of `module` as a checkpoint tensor (host numpy) named and laid out by `rules`."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    rule, hf_name = _match(rules, _path_str(path))
    arr = _to_host(var[...])
    if rule.to_hf is transpose or rule.to_hf is identity:
      out[hf_name] = np.ascontiguousarray(rule.to_hf(arr, ()))
    else:
      out[hf_name] = np.ascontiguousarray(rule.to_hf(arr, hf_shapes[hf_name]))
  return out


def _decoder_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  shapes = {}
  for i in range(cfg.num_layers):
    p = f"model.layers.{i}.self_attn."
    shapes[p + "q_proj.weight"] = (cfg.num_heads * cfg.head_dim, cfg.hidden_size)
    shapes[p + "k_proj.weight"] = shapes[p + "v_proj.weight"] = (cfg.num_kv_heads * cfg.head_dim, cfg.hidden_size)
    shapes[p + "o_proj.weight"] = (cfg.hidden_size, cfg.num_heads * cfg.head_dim)
    shapes[p + "q_proj.bias"] = (cfg.num_heads * cfg.head_dim,)
    shapes[p + "k_proj.bias"] = shapes[p + "v_proj.bias"] = (cfg.num_kv_heads * cfg.head_dim,)
  return shapes


class ExportError(errors.Error, ValueError):
  """export_pretrained refused to write: its target holds something it must not replace (the message says what)."""


# The tokenizer files export_pretrained copies along (by name prefix).
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "vocab", "merges", "generation_config", "chat_template")


def _is_export_file(directory: str, name: str) -> bool:
  """Whether `directory`/`name` is a plain file of the kind export_pretrained writes."""
  full = os.path.join(directory, name)
  return (os.path.isfile(full) and not os.path.islink(full)
          and (name in ("config.json", "model.safetensors.index.json") or name.endswith(".safetensors")
               or name.startswith(TOKENIZER_PREFIXES)))


def check_export_target(path: str, overwrite: bool = False) -> bool:
  """Whether export_pretrained may write `path`: True when it must replace an existing directory, False when free.

  Raises ExportError for a file or link, for a non-empty directory unless `overwrite`, and (even with `overwrite`)
  for a directory that is not a previous export: only config.json, *.safetensors and tokenizer files, no folders.
  """
  if not os.path.lexists(path):
    return False
  if os.path.islink(path) or not os.path.isdir(path):
    raise ExportError(f"{path}: exists and is not a directory; the export does not replace it (choose another path)")
  entries = os.listdir(path)
  if not entries:
    return True
  if not overwrite:
    raise ExportError(f"{path}: exists and is not empty; the export does not replace it (choose another path, or "
                      "set overwrite to replace a previous export)")
  foreign = sorted(e for e in entries if not _is_export_file(path, e))
  if foreign or "config.json" not in entries or not any(e.endswith(".safetensors") for e in entries):
    why = f"it holds {', '.join(foreign[:8])}" if foreign else "it lacks config.json or *.safetensors"
    raise ExportError(f"{path}: not a previous export ({why}); even with overwrite the export only replaces one")
  return True


def export_pretrained(model: Decoder, path: str, *, dtype: str | None = None, tokenizer_dir: str | None = None,
                      max_shard_bytes: int = 5 * 2**30, overwrite: bool = False) -> None:
  """Writes `model` as a Hugging Face checkpoint directory (config.json + safetensors shards + index), atomically.

  dtype: tensor dtype to write (default: the parameters' own); tokenizer_dir: copy its tokenizer files along.
  overwrite: replace a previous export at `path`. Without it an existing non-empty `path` raises ExportError, and
  with it anything but a previous export still does (`check_export_target`); nothing is written then.
  Only process 0 writes in a multi-host run (all processes must call it; each checks `path` first, so on a shared
  filesystem all of them refuse together).
  """
  check_export_target(path, overwrite)  # Before the (collective) gather of the parameters.
  cfg = model.cfg
  tensors = module_to_hf_tensors(model, DECODER_RULES, _decoder_hf_shapes(cfg))
  if dtype is not None:
    tensors = {k: v.astype(np.dtype(dtype)) for k, v in tensors.items()}
  if jax.process_index() != 0:
    return
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
  shards = list(safetensors_io.iter_shards(tensors, max_shard_bytes))
  if len(shards) == 1:
    safetensors_io.write_safetensors(os.path.join(tmp, "model.safetensors"), shards[0])
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      safetensors_io.write_safetensors(os.path.join(tmp, fn), shard)
      weight_map.update({k: fn for k in shard})
    total = int(sum(v.nbytes for v in tensors.values()))
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  hf = config_to_hf(cfg)
  hf["torch_dtype"] = hf["dtype"] = str(next(iter(tensors.values())).dtype)
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  if tokenizer_dir:
    for fn in os.listdir(tokenizer_dir):
      if fn.startswith(TOKENIZER_PREFIXES):
        shutil.copy(os.path.join(tokenizer_dir, fn), tmp)
  _move_into_place(tmp, path, overwrite)


def _move_into_place(tmp: str, path: str, overwrite: bool) -> None:
  """Renames the finished directory `tmp` to `path`; a replaced export is renamed aside first and deleted last.

  A crash between the two renames leaves the old export beside `path` as .export-old-*, never no model at all.
  """
  try:
    replace = check_export_target(path, overwrite)  # Again: `path` may have appeared while the tensors were written.
  except ExportError:
    shutil.rmtree(tmp)
    raise
  if not replace:
    os.replace(tmp, path)
    return
  old = tempfile.mkdtemp(prefix=".export-old-", dir=os.path.dirname(tmp))
  os.replace(path, old)  # Onto the empty directory just made: a rename, atomic.
  try:
    os.replace(tmp, path)
  except OSError:
    os.replace(old, path)  # Put the previous export back.
    raise
  shutil.rmtree(old)
