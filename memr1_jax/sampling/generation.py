"""Jitted prefill and `lax.while_loop` decode over a preallocated KV cache, for left-padded batches.

Layout. Prompts are left-padded to a common length P, so every row's prompt ends at slot P - 1 and decode step i
writes slot P + i for all rows (one scalar `cache.end`). `n` samples per prompt share one prefill; rows are
prompt-major (row i * n + j is sample j of prompt i). With `shared_prefix` (the default for n > 1) the prompts' KV
stays stored once per prompt and each row's generated tokens go into a suffix cache of their own (`CascadeCache`), so
a decode step reads every prompt's KV once (`models.attention.cascade_attention`); without it the prefilled cache rows
are repeated n times before decoding and each step reads each prompt's KV n times (`attention.decode_kv_bytes`
counts both).

Shapes are bucketed (`bucket_size`: powers of two with a minimum) for the batch, the prompt length and the number
of new tokens, so a run compiles a bounded number of programs; the padded rows are dropped on return. The cache holds
P + M slots (M = bucketed max_new_tokens), so attention reads at most M slots more than it needs. The model state is
an argument of the jitted functions (the graphdef is static), sampling parameters, stop ids, pad id and the
max_new_tokens limit are traced, and the decode loop's cache is donated.

Log-probs. `logprobs` are those of the sampled tokens under the model's own next-token distribution,
log_softmax(raw logits), without temperature or top-k / top-p: this is the quantity the RL learner recomputes with a
teacher-forced forward pass (old-policy log-probs for the PPO / GRPO ratio and the KL to the reference).
`sampling_logprobs` are under the distribution the token was actually drawn from (tempered and truncated; 0 for
greedy), for importance corrections.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from memr1_jax import multihost
from memr1_jax import sharding as sharding_lib
from memr1_jax.models.decoder import CascadeCache, KVCache, positions_from_mask
from memr1_jax.sampling.samplers import SamplingParams, sample, token_logprobs

MIN_STOP_IDS = 4  # Stop-id arrays are padded (with -1) to a power of two >= this, so new stop ids rarely recompile.


def bucket_size(x: int, minimum: int = 1) -> int:
  """The smallest power of two >= max(x, minimum)."""
  x = max(int(x), int(minimum), 1)
  return 1 << (x - 1).bit_length()


def length_bucket(x: int, minimum: int = 1, multiple: int = 0) -> int:
  """A padded sequence length for `x` tokens: `bucket_size(x, minimum)`, or, when `multiple` > 0, max(x, minimum)
  rounded up to a multiple of `multiple` (finer steps for lengths far from a power of two: 192 for 150-189)."""
  if multiple <= 0:
    return bucket_size(x, minimum)
  x = max(int(x), int(minimum), 1)
  return -(-x // multiple) * multiple


def batch_bucket(num_prompts: int, n: int = 1, min_rows: int = 1, mesh: Mesh | None = None) -> int:
  """Bucketed number of prompts of a call with `n` samples each: the smallest power of two >= num_prompts whose
  rows (times n) reach `min_rows`, rounded up to a multiple of the mesh's data * fsdp size."""
  b = bucket_size(num_prompts, -(-min_rows // n))
  if mesh is not None:
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    b = -(-b // dp) * dp
  return b


@dataclasses.dataclass
class GenerateOutput:
  """Host arrays for R = len(prompts) * n rows (prompt-major) and M = max_new_tokens columns."""

  tokens: np.ndarray  # int32 [R, M]: generated ids; pad id after a stop token.
  logprobs: np.ndarray  # float32 [R, M]: log_softmax(raw logits)[token]; 0 where mask is False.
  sampling_logprobs: np.ndarray  # float32 [R, M]: log q(token) of the sampling distribution; 0 for greedy / masked.
  mask: np.ndarray  # bool [R, M]: True up to and including the stop token.
  stopped: np.ndarray  # bool [R]: the row ended on a stop token (else it hit max_new_tokens).


def _cache_shardings(cache: KVCache, mesh: Mesh) -> KVCache:
  """Shardings for a cache: batch over (data, fsdp), KV heads over tensor (where they divide)."""

  def spec(x, axes):
    return NamedSharding(mesh, sharding_lib.logical_to_spec(axes, x.shape, mesh))

  kv_axes = ("batch", "kv_heads", None, "head_dim")
  return KVCache(k=tuple(spec(x, kv_axes) for x in cache.k), v=tuple(spec(x, kv_axes) for x in cache.v),
                 valid_bs=spec(cache.valid_bs, ("batch", None)), end=NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _constrain(cache: KVCache | CascadeCache, mesh: Mesh | None) -> KVCache | CascadeCache:
  if mesh is None:
    return cache
  if isinstance(cache, CascadeCache):
    return CascadeCache(prefix=_constrain(cache.prefix, mesh), suffix=_constrain(cache.suffix, mesh))
  return jax.lax.with_sharding_constraint(cache, _cache_shardings(cache, mesh))


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("n", "cache_len", "mesh", "shared_prefix"))
def prefill(graphdef: nnx.GraphDef, state: nnx.State, input_ids_bt: jax.Array, attention_mask_bt: jax.Array, *,
            n: int, cache_len: int, mesh: Mesh | None = None, shared_prefix: bool = False
            ) -> tuple[KVCache | CascadeCache, jax.Array, jax.Array]:
  """Runs the left-padded prompts through the model into a fresh cache of `cache_len` slots.

  Args:
    graphdef, state: `nnx.split(model)` of a `Decoder` (or any module with `cfg`, `forward_hidden`, `logits`).
    input_ids_bt: [B, P] int32 left-padded prompts; attention_mask_bt: [B, P] (1 = token, 0 = pad).
    n: samples per prompt: the returned cache has B * n rows, prompt-major.
    cache_len: slots per row (P + room for the new tokens). mesh: shard the cache over it (batch, kv heads).
    shared_prefix: return a `CascadeCache` (the prompts' P slots once per prompt, B * n suffix rows of
      cache_len - P empty slots) instead of a `KVCache` whose B * n rows repeat each prompt's slots.
  Returns:
    (cache [B * n rows, end = P], last_logits_bv [B, V] float32 at each prompt's last token, prompt_len_b [B] int32).
  """
  model = nnx.merge(graphdef, state)
  b, p = input_ids_bt.shape
  mask_bt = attention_mask_bt.astype(bool)
  cache = _constrain(KVCache.init(model.cfg, b, p if shared_prefix else cache_len), mesh)
  hidden_btd, cache = model.forward_hidden(input_ids_bt, mask_bt, positions_from_mask(mask_bt), cache)
  last_logits_bv = model.logits(hidden_btd[:, -1])
  if shared_prefix:
    cache = CascadeCache(prefix=cache, suffix=KVCache.init(model.cfg, b * n, cache_len - p))
  elif n > 1:
    cache = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0) if x.ndim else x, cache)
  return _constrain(cache, mesh), last_logits_bv, jnp.sum(mask_bt, axis=-1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("n", "max_new_bucket"), donate_argnames=("cache",))
def decode(graphdef: nnx.GraphDef, state: nnx.State, cache: KVCache, last_logits_bv: jax.Array,
           prompt_len_b: jax.Array, row_ids_r: jax.Array, key: jax.Array, params: SamplingParams,
           stop_ids_s: jax.Array, pad_id: jax.Array, max_new: jax.Array, *, n: int, max_new_bucket: int):
  """Samples up to `max_new` tokens per row with a `lax.while_loop` that exits once every row has stopped.

  Args:
    graphdef, state: the model, as for `prefill`. cache: `prefill`'s cache (R = B * n rows; a `KVCache` or a
      `CascadeCache`), donated.
    last_logits_bv [B, V], prompt_len_b [B]: from `prefill`; repeated n times here.
    row_ids_r: [R] int32 ids folded into `key` for each row's draws (global row numbers make results independent
      of batching). key: a typed PRNG key. params: `SamplingParams`.
    stop_ids_s: [S] int32 stop token ids (-1 = unused slot). pad_id: int32 written after a stop.
    max_new: int32 <= max_new_bucket, the number of tokens to generate at most.
  Returns:
    (tokens_rm int32, logprobs_rm, sampling_logprobs_rm float32, lengths_r int32, stopped_r bool, cache), M =
    max_new_bucket; lengths count the valid tokens (up to and including the stop token); stopped: the row ended on a
    stop id. The final cache is returned so that the donated input buffers are updated in place.
  """
  model = nnx.merge(graphdef, state)
  rows = last_logits_bv.shape[0] * n
  keys_r = jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids_r)
  zeros_rm = jnp.zeros((rows, max_new_bucket), jnp.float32)

  def emit(logits_rv, step, done_r, lengths_r, out):
    """Samples column `step`, writes it into the output buffers and updates done / lengths."""
    tokens_rm, logprobs_rm, slogprobs_rm = out
    token_r, slogp_r = sample(logits_rv, jax.vmap(jax.random.fold_in, (0, None))(keys_r, step), params)
    logp_r = token_logprobs(logits_rv, token_r)
    token_r = jnp.where(done_r, pad_id, token_r)
    put = lambda buf, col: jax.lax.dynamic_update_slice(buf, col[:, None].astype(buf.dtype), (0, step))
    out = (put(tokens_rm, token_r), put(logprobs_rm, jnp.where(done_r, 0.0, logp_r)),
           put(slogprobs_rm, jnp.where(done_r, 0.0, slogp_r)))
    lengths_r = lengths_r + (~done_r).astype(jnp.int32)
    done_r = done_r | jnp.any(token_r[:, None] == stop_ids_s[None, :], axis=-1)
    return token_r, done_r, lengths_r, out

  out = (jnp.zeros((rows, max_new_bucket), jnp.int32), zeros_rm, zeros_rm)
  no_r = jnp.zeros((rows,), bool)
  token_r, done_r, lengths_r, out = emit(jnp.repeat(last_logits_bv, n, axis=0), 0, no_r, jnp.zeros((rows,), jnp.int32),
                                         out)
  position_r = jnp.repeat(prompt_len_b, n)

  def cond(carry):
    step, _, _, done_r, _, _, _ = carry
    return (step < max_new) & ~jnp.all(done_r)

  def body(carry):
    step, cache, token_r, done_r, lengths_r, position_r, out = carry
    ones_r1 = jnp.ones((rows, 1), bool)
    hidden_r1d, cache = model.forward_hidden(token_r[:, None], ones_r1, position_r[:, None], cache)
    token_r, done_r, lengths_r, out = emit(model.logits(hidden_r1d[:, 0]), step, done_r, lengths_r, out)
    return step + 1, cache, token_r, done_r, lengths_r, position_r + 1, out

  carry = (jnp.ones((), jnp.int32), cache, token_r, done_r, lengths_r, position_r, out)
  _, cache, _, done_r, lengths_r, _, (tokens_rm, logprobs_rm, slogprobs_rm) = jax.lax.while_loop(cond, body, carry)
  return tokens_rm, logprobs_rm, slogprobs_rm, lengths_r, done_r, cache


def pad_prompts(prompts: Sequence[Sequence[int]], rows: int, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads `prompts` into [rows, length] int32 ids and a bool mask; extra rows hold a single pad token."""
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  for i, p in enumerate(prompts):
    ids[i, length - len(p):] = p
    mask[i, length - len(p):] = True
  mask[len(prompts):, -1] = True
  return ids, mask


def as_key(key) -> jax.Array:
  """A typed PRNG key from an int seed, a typed key, or a raw uint32 key (`jax.random.PRNGKey`)."""
  if isinstance(key, (int, np.integer)):
    return jax.random.key(int(key))
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def stop_id_array(stop_token_ids: Sequence[int]) -> np.ndarray:
  """Stop ids as an int32 array padded with -1 to a power of two >= MIN_STOP_IDS."""
  ids = np.full((bucket_size(len(stop_token_ids), MIN_STOP_IDS),), -1, np.int32)
  ids[:len(stop_token_ids)] = list(stop_token_ids)
  return ids


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], *, key, max_new_tokens: int, n: int = 1,
             params: SamplingParams | None = None, stop_token_ids: Sequence[int] = (), pad_id: int = 0,
             prompt_index: Sequence[int] | None = None, mesh: Mesh | None = None, min_prompt_bucket: int = 16,
             prompt_bucket_multiple: int = 0, min_batch_bucket: int = 1,
             shared_prefix: bool | None = None) -> GenerateOutput:
  """Generates `n` completions for every prompt (token-id lists) in one prefill + one decode call.

  Args:
    model: a `Decoder` (sharded over `mesh` when given). prompts: non-empty lists of token ids.
    key: int seed or PRNG key. max_new_tokens: >= 1. n: samples per prompt (rows are prompt-major).
    params: `SamplingParams` (default: greedy). stop_token_ids: ids that end a row (kept, mask 1).
    pad_id: id written after a stop and used for left padding.
    prompt_index: global index of each prompt (default 0..len-1): sample j of prompt i draws from the key folded
      with prompt_index[i] * n + j, so results do not depend on how a request is split into batches.
    mesh: the model's mesh; the batch is sharded over (data, fsdp). min_prompt_bucket, prompt_bucket_multiple:
      the prompt-length bucket (`length_bucket`). min_batch_bucket: smallest batch bucket in rows (prompts * n):
      prompts are bucketed to at least ceil(min_batch_bucket / n), so one prompt with n = 8 decodes 8 rows, not
      8 * min_batch_bucket.
    shared_prefix: decode over the prompts' KV stored once per prompt (`CascadeCache`); None: when n > 1.
  Returns:
    `GenerateOutput` with len(prompts) * n rows and max_new_tokens columns.
  """
  if not prompts:
    raise ValueError("generate: no prompts")
  if any(len(p) == 0 for p in prompts):
    raise ValueError(f"generate: prompt {next(i for i, p in enumerate(prompts) if len(p) == 0)} is empty")
  if max_new_tokens < 1 or n < 1:
    raise ValueError(f"generate: max_new_tokens ({max_new_tokens}) and n ({n}) must be >= 1")
  params = params or SamplingParams.make(temperature=0.0)
  prompt_index = np.arange(len(prompts)) if prompt_index is None else np.asarray(prompt_index)
  b = batch_bucket(len(prompts), n, min_batch_bucket, mesh)
  p_len = length_bucket(max(len(p) for p in prompts), min_prompt_bucket, prompt_bucket_multiple)
  m = bucket_size(max_new_tokens)
  ids_bt, mask_bt = pad_prompts(prompts, b, p_len, pad_id)
  row_ids = np.full((b, n), -1, np.int64)
  row_ids[:len(prompts)] = prompt_index[:, None] * n + np.arange(n)[None, :]
  row_ids = (row_ids % (2**31)).astype(np.int32).reshape(-1)
  if mesh is not None:
    ids_bt, mask_bt, row_ids = multihost.shard_batch((ids_bt, mask_bt, row_ids), mesh)
  graphdef, state = nnx.split(model)
  shared_prefix = n > 1 if shared_prefix is None else shared_prefix
  cache, last_logits_bv, prompt_len_b = prefill(graphdef, state, ids_bt, mask_bt, n=n, cache_len=p_len + m, mesh=mesh,
                                                shared_prefix=shared_prefix)
  tokens, logprobs, slogprobs, lengths, stopped, _ = decode(
      graphdef, state, cache, last_logits_bv, prompt_len_b, row_ids, as_key(key), params,
      stop_id_array(stop_token_ids), jnp.int32(pad_id), jnp.int32(max_new_tokens), n=n, max_new_bucket=m)
  tokens, logprobs, slogprobs, lengths, stopped = multihost.to_host((tokens, logprobs, slogprobs, lengths, stopped))
  r = len(prompts) * n
  mask = np.arange(max_new_tokens)[None, :] < lengths[:r, None]
  return GenerateOutput(tokens=tokens[:r, :max_new_tokens], logprobs=logprobs[:r, :max_new_tokens],
                        sampling_logprobs=slogprobs[:r, :max_new_tokens], mask=mask, stopped=stopped[:r])
