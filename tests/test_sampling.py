"""Tests of memr1_jax.sampling: prefill + while_loop decode, samplers, log-probs, bucketing, sharding, the engine."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from memr1_jax import sharding as sharding_lib
from memr1_jax.models import KVCache, get_preset, load_pretrained
from memr1_jax.sampling import (RolloutConfig, RolloutEngine, SamplingParams, decode, filter_top_k_top_p, generate,
                                generation, prefill)
from memr1_jax.testing import left_padded_batch, load_hf_model, make_hf_checkpoint

VOCAB = 384
PROMPT_LENGTHS = (5, 11, 3)
MAX_NEW = 8


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """Tiny random-init Qwen2 and LLaMA checkpoint directories."""
  return {family: make_hf_checkpoint(str(tmp_path_factory.mktemp(family)), family=family, vocab=VOCAB, seed=3)
          for family in ("qwen2", "llama")}


@pytest.fixture(scope="module")
def qwen(checkpoints):
  """The Qwen2 checkpoint loaded on one device."""
  return load_pretrained(checkpoints["qwen2"])[0]


def _prompts(lengths=PROMPT_LENGTHS, seed=0) -> list[list[int]]:
  ids_bt, mask_bt = left_padded_batch(lengths, VOCAB, seed=seed)
  return [row[m.astype(bool)].tolist() for row, m in zip(ids_bt, mask_bt)]


def _hf_generate(hf_model, prompts, max_new, eos=None):
  """HF greedy generate on the left-padded batch; returns the new tokens [B, max_new] (pad 0 after EOS)."""
  import torch  # pylint: disable=g-import-not-at-top
  t = max(len(p) for p in prompts)
  ids_bt = np.array([[0] * (t - len(p)) + list(p) for p in prompts])
  mask_bt = np.array([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
  hf_model.generation_config.eos_token_id = eos
  out = hf_model.generate(input_ids=torch.tensor(ids_bt, dtype=torch.long),
                          attention_mask=torch.tensor(mask_bt, dtype=torch.long), do_sample=False,
                          max_new_tokens=max_new, pad_token_id=0, eos_token_id=eos)
  new = out[:, ids_bt.shape[1]:].numpy()
  return np.pad(new, ((0, 0), (0, max_new - new.shape[1])))


def _hf_full_logprobs(hf_model, prompt, completion):
  """log_softmax of HF logits over prompt + completion, at the positions that predict the completion. [T, V]."""
  import torch  # pylint: disable=g-import-not-at-top
  ids = torch.tensor([list(prompt) + list(completion)], dtype=torch.long)
  with torch.no_grad():
    logits = hf_model(input_ids=ids).logits[0].double()
  return torch.log_softmax(logits, -1).numpy()[len(prompt) - 1:len(prompt) - 1 + len(completion)]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_greedy_matches_hf_generate(checkpoints, family):
  """Greedy decoding of a left-padded batch equals HF generate(do_sample=False) token for token."""
  model, _ = load_pretrained(checkpoints[family])
  prompts = _prompts()
  out = generate(model, prompts, key=0, max_new_tokens=MAX_NEW)
  np.testing.assert_array_equal(out.tokens, _hf_generate(load_hf_model(checkpoints[family]), prompts, MAX_NEW))
  assert out.mask.all() and not out.stopped.any()


@pytest.fixture(scope="module")
def sampled(qwen):
  """Two samples per prompt at temperature 0.7 (prompt-major rows)."""
  params = SamplingParams.make(temperature=0.7)
  return generate(qwen, _prompts(), key=jax.random.key(7), max_new_tokens=MAX_NEW, n=2, params=params)


def test_logprobs_equal_teacher_forced_forward(checkpoints, sampled):
  """Returned log-probs equal log_softmax of the raw logits of a full forward over prompt + completion."""
  hf_model = load_hf_model(checkpoints["qwen2"])
  for r, prompt in enumerate(np.repeat(np.array(_prompts(), dtype=object), 2)):
    completion = sampled.tokens[r][sampled.mask[r]]
    ref_tv = _hf_full_logprobs(hf_model, prompt, completion)
    np.testing.assert_allclose(sampled.logprobs[r][sampled.mask[r]], ref_tv[np.arange(len(completion)), completion],
                               atol=2e-5)


def test_sampling_logprobs_are_tempered(checkpoints, sampled):
  """Sampling log-probs equal log_softmax(raw logits / temperature) at the sampled tokens."""
  hf_model = load_hf_model(checkpoints["qwen2"])
  for r, prompt in enumerate(np.repeat(np.array(_prompts(), dtype=object), 2)):
    completion = sampled.tokens[r][sampled.mask[r]]
    logp_tv = _hf_full_logprobs(hf_model, prompt, completion)
    tempered_tv = logp_tv / 0.7 - np.log(np.exp(logp_tv / 0.7).sum(-1, keepdims=True))
    np.testing.assert_allclose(sampled.sampling_logprobs[r][sampled.mask[r]],
                               tempered_tv[np.arange(len(completion)), completion], atol=5e-5)


def test_sampling_is_reproducible_with_fixed_key(qwen, sampled):
  """The same key gives the same samples; another key gives different ones."""
  params = SamplingParams.make(temperature=0.7)
  again = generate(qwen, _prompts(), key=jax.random.key(7), max_new_tokens=MAX_NEW, n=2, params=params)
  other = generate(qwen, _prompts(), key=jax.random.key(8), max_new_tokens=MAX_NEW, n=2, params=params)
  np.testing.assert_array_equal(again.tokens, sampled.tokens)
  np.testing.assert_array_equal(again.logprobs, sampled.logprobs)
  assert (other.tokens != sampled.tokens).any()


def test_samples_of_a_prompt_differ_and_are_prompt_major(qwen, sampled):
  """With n=2 rows 2i and 2i+1 are two different samples of prompt i; greedy n=3 repeats the n=1 rows."""
  assert all((sampled.tokens[2 * i] != sampled.tokens[2 * i + 1]).any() for i in range(len(PROMPT_LENGTHS)))
  one = generate(qwen, _prompts(), key=0, max_new_tokens=MAX_NEW)
  three = generate(qwen, _prompts(), key=0, max_new_tokens=MAX_NEW, n=3)
  np.testing.assert_array_equal(three.tokens, np.repeat(one.tokens, 3, axis=0))


def _decode_logits(model, prompts, n, steps, shared_prefix):
  """Next-token logits [steps + 1, R, V] of prefill, then `steps` teacher-forced decode steps of fixed tokens."""
  graphdef, state = nnx.split(model)
  ids_bt, mask_bt = generation.pad_prompts(prompts, len(prompts), 16, 0)
  cache, logits_bv, prompt_len_b = prefill(graphdef, state, ids_bt, mask_bt, n=n, cache_len=16 + steps,
                                           shared_prefix=shared_prefix)
  tokens_sr = np.random.default_rng(1).integers(0, VOCAB, (steps, len(prompts) * n)).astype(np.int32)

  @jax.jit
  def step(state, cache, token_r, position_r):
    merged = nnx.merge(graphdef, state)
    hidden_r1d, cache = merged.forward_hidden(token_r[:, None], jnp.ones((len(token_r), 1), bool), position_r[:, None],
                                              cache)
    return merged.logits(hidden_r1d[:, 0]), cache

  out = [np.repeat(np.asarray(logits_bv), n, axis=0)]
  position_r = np.repeat(np.asarray(prompt_len_b), n)
  for i in range(steps):
    logits_rv, cache = step(state, cache, tokens_sr[i], position_r + i)
    out.append(np.asarray(logits_rv))
  return np.stack(out)


def test_shared_prefix_decode_logits_equal_the_repeated_cache(qwen):
  """Every decode step's logits over a CascadeCache equal those over the n-times repeated cache (float32)."""
  prompts = _prompts()
  cascade = _decode_logits(qwen, prompts, 3, 6, shared_prefix=True)
  repeated = _decode_logits(qwen, prompts, 3, 6, shared_prefix=False)
  assert np.abs(repeated[1:] - repeated[1:, :1]).max() > 1e-3  # the rows do differ after their own tokens
  np.testing.assert_allclose(cascade, repeated, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("params", [None, SamplingParams.make(temperature=1.0)], ids=["greedy", "sampled"])
def test_shared_prefix_generate_equals_the_repeated_cache(qwen, params):
  """generate with n = 3 gives the same tokens (greedy, and sampled with a fixed key) and log-probs on both paths."""
  kwargs = dict(key=jax.random.key(9), max_new_tokens=MAX_NEW, n=3, params=params)
  cascade = generate(qwen, _prompts(), shared_prefix=True, **kwargs)
  repeated = generate(qwen, _prompts(), shared_prefix=False, **kwargs)
  np.testing.assert_array_equal(cascade.tokens, repeated.tokens)
  np.testing.assert_allclose(cascade.logprobs, repeated.logprobs, atol=2e-5)
  np.testing.assert_allclose(cascade.sampling_logprobs, repeated.sampling_logprobs, atol=2e-5)


def test_top_k_one_equals_greedy(qwen):
  """Sampling at temperature 1.3 with top_k=1 gives the greedy tokens."""
  greedy = generate(qwen, _prompts(), key=0, max_new_tokens=MAX_NEW)
  top1 = generate(qwen, _prompts(), key=5, max_new_tokens=MAX_NEW,
                  params=SamplingParams.make(temperature=1.3, top_k=1))
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)
  np.testing.assert_allclose(top1.sampling_logprobs, 0.0, atol=1e-6)


def test_a_remat_model_generates_as_the_plain_one(checkpoints, qwen):
  """A decoder loaded with remat=True (the training configs' default) generates the same tokens as without it."""
  remat = load_pretrained(checkpoints["qwen2"], remat=True)[0]
  assert remat.cfg.remat
  plain = generate(qwen, _prompts(), key=0, max_new_tokens=MAX_NEW)
  np.testing.assert_array_equal(generate(remat, _prompts(), key=0, max_new_tokens=MAX_NEW).tokens, plain.tokens)


def test_filter_top_k_top_p_by_hand():
  """top_k keeps the k largest logits; top_p keeps the smallest prefix reaching mass p (by hand)."""
  logits = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))
  keep = lambda k, p: np.isfinite(np.asarray(filter_top_k_top_p(logits, jnp.int32(k), jnp.float32(p))))[0]
  np.testing.assert_array_equal(keep(2, 1.0), [False, True, False, True])
  np.testing.assert_array_equal(keep(0, 0.5), [False, True, False, True])  # 0.4 < 0.5, then 0.4 + 0.3 >= 0.5.
  np.testing.assert_array_equal(keep(0, 0.4), [False, True, False, False])
  np.testing.assert_array_equal(keep(3, 0.95), [False, True, True, True])
  np.testing.assert_array_equal(keep(0, 1.0), [True, True, True, True])


class FixedLogitsModel(nnx.Module):
  """A stub decoder whose next-token logits are `logits_v` whatever the input (keeps the cache bookkeeping)."""

  def __init__(self, logits_v):
    self.cfg = get_preset("tiny").replace(vocab_size=len(logits_v), num_layers=1, num_kv_heads=1, head_dim=1)
    self.logits_v = nnx.Param(jnp.asarray(logits_v, jnp.float32))

  def forward_hidden(self, input_ids_bt, attention_mask_bt, positions_bt, cache: KVCache):
    b, t = input_ids_bt.shape
    valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, attention_mask_bt.astype(bool), (0, cache.end))
    return jnp.zeros((b, t, 1)), cache.replace(valid_bs=valid_bs, end=cache.end + t)

  def logits(self, hidden):
    return jnp.broadcast_to(self.logits_v[...], hidden.shape[:-1] + self.logits_v.shape)


STUB_LOGITS = np.array([2.0, 1.2, 1.0, 0.3, 0.0, -0.4, -1.0, -2.5])


def _expected_distribution(logits, temperature, top_p, top_k):
  """The tempered, top-k then top-p truncated, renormalised distribution, computed directly in numpy."""
  p = np.exp(logits / temperature)
  p /= p.sum()
  order = np.argsort(-p)
  kept = order[:top_k] if top_k else order
  q = p[kept] / p[kept].sum()
  mass_before = np.cumsum(q) - q
  kept = kept[mass_before < top_p]
  out = np.zeros_like(p)
  out[kept] = p[kept] / p[kept].sum()
  return out


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.5, 1.0, 0), (2.0, 0.8, 0), (1.0, 1.0, 3),
                                                     (1.5, 0.7, 5)])
def test_sampled_frequencies_match_the_specified_distribution(temperature, top_p, top_k):
  """Empirical token frequencies from a known-logits model match the tempered / truncated distribution."""
  model = FixedLogitsModel(STUB_LOGITS)
  params = SamplingParams.make(temperature=temperature, top_p=top_p, top_k=top_k)
  out = generate(model, [[1]] * 512, key=11, max_new_tokens=32, params=params)
  expected = _expected_distribution(STUB_LOGITS, temperature, top_p, top_k)
  counts = np.bincount(out.tokens.reshape(-1), minlength=len(STUB_LOGITS))
  freq = counts / counts.sum()
  assert (counts[expected == 0] == 0).all()
  tolerance = 5 * np.sqrt(expected * (1 - expected) / counts.sum()) + 1e-3
  assert (np.abs(freq - expected) <= tolerance).all(), (freq, expected)
  np.testing.assert_allclose(out.sampling_logprobs, np.log(expected[out.tokens]), atol=1e-5)
  raw = STUB_LOGITS - np.log(np.exp(STUB_LOGITS).sum())
  np.testing.assert_allclose(out.logprobs, raw[out.tokens], atol=1e-5)


def test_no_recompilation_within_bucket_or_for_new_sampling_params(qwen):
  """A second batch in the same buckets with new temperature / top-p / top-k compiles nothing; a new bucket does."""
  engine = RolloutEngine(qwen, None, RolloutConfig(max_new_tokens=6, min_prompt_bucket=16, min_batch_bucket=8))
  sizes = lambda: (prefill._cache_size(), decode._cache_size())
  engine.generate(_prompts((3, 9, 14)), n=2, key=0, temperature=0.7)
  first = sizes()
  engine.generate(_prompts((2, 16), seed=1), n=2, key=1, temperature=1.3, top_p=0.9, top_k=5)
  engine.generate(_prompts((7,), seed=2), n=2, key=2, temperature=0.0, stop_token_ids=[5, 6])
  assert sizes() == first
  engine.generate(_prompts((20,), seed=3), n=2, key=3, temperature=0.7)
  assert sizes() == (first[0] + 1, first[1] + 1)


def test_batch_bucket_counts_rows_of_all_samples():
  """The smallest batch bucket is in rows: one prompt with n = 8 and a minimum of 8 rows decodes 8 rows, not 64."""
  assert generation.batch_bucket(1, n=8, min_rows=8) == 1
  assert generation.batch_bucket(1, n=1, min_rows=8) == 8
  assert generation.batch_bucket(3, n=2, min_rows=8) == 4
  assert generation.batch_bucket(5, n=2, min_rows=8) == 8
  assert generation.batch_bucket(1, n=3, min_rows=8) == 4  # ceil(8 / 3) prompts, bucketed to a power of two.


def test_length_bucket_rounds_to_multiples_when_asked():
  """Prompt lengths pad to powers of two by default, to multiples of `multiple` (from the minimum) when given."""
  assert [generation.length_bucket(n, 16) for n in (1, 16, 17, 150)] == [16, 16, 32, 256]
  assert [generation.length_bucket(n, 128, 64) for n in (1, 128, 129, 189, 193)] == [128, 128, 192, 192, 256]


def test_greedy_completions_do_not_depend_on_the_prompt_bucket(qwen):
  """Prompts padded to 32 (a power of two) or to 24 (a multiple of 8) give the same greedy tokens and log-probs."""
  prompts = _prompts((3, 9, 20))
  pow2 = generate(qwen, prompts, key=0, max_new_tokens=6, min_prompt_bucket=16)
  mult = generate(qwen, prompts, key=0, max_new_tokens=6, min_prompt_bucket=16, prompt_bucket_multiple=8)
  np.testing.assert_array_equal(mult.tokens, pow2.tokens)
  np.testing.assert_allclose(mult.logprobs, pow2.logprobs, atol=1e-5)


def test_eos_stops_row_and_masks_the_rest(checkpoints, qwen):
  """A row stops at its first stop token (mask 1 up to and including it, pad after); HF with the same EOS agrees."""
  prompts = _prompts()
  free = generate(qwen, prompts, key=0, max_new_tokens=MAX_NEW)
  eos = int(free.tokens[0, 3])
  out = generate(qwen, prompts, key=0, max_new_tokens=MAX_NEW, stop_token_ids=[eos], pad_id=0)
  np.testing.assert_array_equal(out.tokens, _hf_generate(load_hf_model(checkpoints["qwen2"]), prompts, MAX_NEW, eos))
  for r in range(len(prompts)):
    hits = np.flatnonzero(free.tokens[r] == eos)
    length = hits[0] + 1 if len(hits) else MAX_NEW
    np.testing.assert_array_equal(out.mask[r], np.arange(MAX_NEW) < length)
    assert out.stopped[r] == bool(len(hits))
    assert (out.tokens[r, length:] == 0).all() and (out.logprobs[r, length:] == 0).all()
  assert out.stopped[0]


def test_sharded_output_equals_single_device(checkpoints, qwen):
  """On a (2, 2, 2) mesh of 8 CPU devices, greedy and sampled outputs equal the single-device ones."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (virtual) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  mesh = sharding_lib.make_mesh((2, 2, 2))
  sharded, _ = load_pretrained(checkpoints["qwen2"], mesh=mesh)
  params = SamplingParams.make(temperature=0.9, top_p=0.95)
  for p in (None, params):
    ref = generate(qwen, _prompts(), key=4, max_new_tokens=MAX_NEW, n=2, params=p)
    out = generate(sharded, _prompts(), key=4, max_new_tokens=MAX_NEW, n=2, params=p, mesh=mesh)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


class CharTokenizer:
  """Maps each character to (ord % 300) + 1: enough to test text in / text out."""

  eos_token_ids = (7,)
  pad_token_id = 0

  def encode(self, text):
    return [ord(c) % 300 + 1 for c in text]

  def decode(self, ids):
    return "".join(chr(i - 1) for i in ids)


def test_engine_results_do_not_depend_on_micro_batching(qwen):
  """Completions (prompt-major, with text and finish reason) are the same in one batch or in micro-batches of 2 rows."""
  prompts = ["hello", "a longer prompt", [5, 6, 7], "x"]
  kwargs = dict(n=2, key=3, temperature=1.0, top_p=0.9, max_new_tokens=MAX_NEW)
  whole = RolloutEngine(qwen, CharTokenizer(), RolloutConfig(min_prompt_bucket=16)).generate(prompts, **kwargs)
  split = RolloutEngine(qwen, CharTokenizer(), RolloutConfig(min_prompt_bucket=16, max_rows_per_batch=2)).generate(
      prompts, **kwargs)
  assert [(c.prompt_index, c.sample_index) for c in whole] == [(i, j) for i in range(4) for j in range(2)]
  for a, b in zip(whole, split):
    assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason and a.text == b.text
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  for c in whole:
    stopped = c.finish_reason == "stop"
    assert stopped == (c.token_ids[-1] == 7) and 7 not in c.token_ids[:-1]
    assert stopped or len(c.token_ids) == MAX_NEW
    assert c.text == CharTokenizer().decode(c.token_ids[:-1] if stopped else c.token_ids)
  assert whole[4].prompt_ids == [5, 6, 7] and whole[0].prompt_ids == CharTokenizer().encode("hello")


def test_bad_inputs_raise_clear_errors(qwen):
  """Empty and over-long prompts, string prompts without a tokenizer and bad sampling parameters raise ValueError."""
  engine = RolloutEngine(qwen, None, RolloutConfig(max_prompt_len=4))
  with pytest.raises(ValueError, match="prompt 1 has 5 tokens"):
    engine.generate([[1], [1, 2, 3, 4, 5]])
  with pytest.raises(ValueError, match="prompt 0 is empty"):
    engine.generate([[]])
  with pytest.raises(ValueError, match="no tokenizer"):
    engine.generate(["text"])
  with pytest.raises(ValueError, match="top_p"):
    engine.generate([[1]], top_p=0.0)


def test_engine_with_checkpoint_tokenizer_and_chat_prompts(qwen, tmp_path):
  """Chat messages are encoded with the chat template, the tokenizer's EOS ids stop, and text is decoded."""
  from memr1_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from memr1_jax.testing import write_tiny_tokenizer  # pylint: disable=g-import-not-at-top
  write_tiny_tokenizer(str(tmp_path), "bpe")
  tokenizer = Tokenizer.from_pretrained(str(tmp_path))
  engine = RolloutEngine(qwen, tokenizer, RolloutConfig(min_prompt_bucket=16))
  messages = [{"role": "user", "content": "What did Alice adopt?"}]
  out = engine.generate([messages, "Bob likes"], key=0, temperature=0.0, max_new_tokens=MAX_NEW)
  assert engine.stop_token_ids == tokenizer.eos_token_ids
  assert out[0].prompt_ids == tokenizer.encode_chat(messages) and out[1].prompt_ids == tokenizer.encode("Bob likes")
  direct = generate(qwen, [c.prompt_ids for c in out], key=0, max_new_tokens=MAX_NEW,
                    stop_token_ids=tokenizer.eos_token_ids, pad_id=tokenizer.pad_token_id)
  for r, c in enumerate(out):
    assert c.token_ids == direct.tokens[r][direct.mask[r]].tolist()
    assert c.text == tokenizer.decode(c.token_ids[:-1] if c.finish_reason == "stop" else c.token_ids)
