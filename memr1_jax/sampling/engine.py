"""`RolloutEngine`: prompts (token ids, strings or chat messages) in, completions (text, ids, log-probs) out.

The episode runner's entry point to generation. It tokenizes, sorts prompts by length and splits the request into
micro-batches of at most `max_rows_per_batch` rows (prompts * n), runs `generation.generate` on each, and logs progress
and throughput through the stdlib `logging` module (absl's handler picks it up in the trainer).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, Union

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from memr1_jax.sampling.generation import as_key, generate
from memr1_jax.sampling.samplers import SamplingParams

logger = logging.getLogger(__name__)

# A prompt: token ids, a string (tokenizer.encode) or chat messages [{"role", "content"}] (tokenizer.encode_chat).
Prompt = Union[Sequence[int], str, Sequence[dict]]


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Shapes and defaults of a `RolloutEngine`."""

  # Default number of tokens to generate per completion.
  max_new_tokens: int = 512
  # Longer prompts are rejected (ValueError naming the prompt).
  max_prompt_len: int = 4096
  # Rows (prompts * n) per jitted call; larger requests are split into micro-batches.
  max_rows_per_batch: int = 256
  # Smallest prompt-length bucket (prompt lengths are bucketed to powers of two).
  min_prompt_bucket: int = 64
  # > 0: prompt lengths are bucketed to multiples of this instead (generation.length_bucket).
  prompt_bucket_multiple: int = 0
  # Smallest batch bucket in rows (prompts * n per call; prompts are bucketed to powers of two).
  min_batch_bucket: int = 8
  # Token ids that end a completion; None: the tokenizer's `eos_token_ids`, else the model config's.
  stop_token_ids: tuple[int, ...] | None = None
  # Left-padding id; None: the tokenizer's `pad_token_id`, else the model config's, else 0.
  pad_token_id: int | None = None
  # Seed of the engine's own key stream, used when `generate` gets no key.
  seed: int = 0
  # The model's mesh (batch sharded over data * fsdp); None for one device.
  mesh: Mesh | None = None


@dataclasses.dataclass
class Completion:
  """One sampled completion of one prompt."""

  prompt_ids: list[int]
  token_ids: list[int]  # Generated ids, including the stop token when finish_reason == "stop".
  logprobs: np.ndarray  # float32 [len(token_ids)]: log_softmax of the raw model logits at each token.
  sampling_logprobs: np.ndarray  # float32 [len(token_ids)]: log-prob under the sampling distribution (0: greedy).
  text: str | None  # Decoded token_ids without the stop token (None without a tokenizer).
  finish_reason: str  # "stop" (a stop token was generated) or "length" (max_new_tokens reached).
  prompt_index: int
  sample_index: int


class RolloutEngine:
  """Batched generation with the decoder `model` (Decoder or sharded Decoder) and an optional tokenizer.

  The tokenizer (e.g. `memr1_jax.models.tokenizer.Tokenizer`) needs `encode(str) -> list[int]` and
  `decode(list[int]) -> str`, and `encode_chat(messages)` for chat prompts; `eos_token_ids` and `pad_token_id` are
  used when present. The model's current weights are read at every call, so the engine can be
  reused while the policy trains.
  """

  def __init__(self, model: nnx.Module, tokenizer: Any | None = None, config: RolloutConfig | None = None):
    self.model = model
    self.tokenizer = tokenizer
    self.config = config or RolloutConfig()
    cfg = getattr(model, "cfg", None)
    stop = self.config.stop_token_ids
    if stop is None:
      stop = getattr(tokenizer, "eos_token_ids", None) or getattr(cfg, "eos_token_ids", ()) or ()
    self.stop_token_ids = tuple(int(t) for t in stop)
    pad = self.config.pad_token_id
    for source in (tokenizer, cfg):
      if pad is None:
        pad = getattr(source, "pad_token_id", None)
    self.pad_token_id = int(pad) if pad is not None else 0
    self._key = jax.random.key(self.config.seed)

  def _prompt_ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
    out = []
    for i, p in enumerate(prompts):
      if isinstance(p, str) or (len(p) and isinstance(p[0], dict)):
        if self.tokenizer is None:
          raise ValueError(f"prompt {i} is text but the RolloutEngine has no tokenizer (pass token ids)")
        p = self.tokenizer.encode(p) if isinstance(p, str) else self.tokenizer.encode_chat(p)
      ids = [int(t) for t in p]
      if not ids:
        raise ValueError(f"prompt {i} is empty")
      if len(ids) > self.config.max_prompt_len:
        raise ValueError(f"prompt {i} has {len(ids)} tokens, more than max_prompt_len={self.config.max_prompt_len}")
      out.append(ids)
    return out

  def set_model(self, model: nnx.Module) -> None:
    """Samples from `model` from now on (new weights of the same architecture: the compiled programs are reused)."""
    self.model = model

  def generate(self, prompts: Sequence[Prompt], n: int = 1, key=None, *, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, max_new_tokens: int | None = None,
               stop_token_ids: Sequence[int] | None = None) -> list[Completion]:
    """Samples `n` completions per prompt. Returns len(prompts) * n `Completion`s, prompt-major (i * n + j).

    key: int seed or PRNG key (default: the engine's next key). temperature 0 is greedy; top_p 1 and top_k 0 are off.
    max_new_tokens / stop_token_ids default to the config's / the engine's. Completion j of prompt i depends only on
    (key, i, j, prompt, parameters), not on the micro-batching.
    """
    if key is None:
      self._key, key = jax.random.split(self._key)
    key = as_key(key)
    params = SamplingParams.make(temperature=temperature, top_p=top_p, top_k=top_k)
    max_new = int(max_new_tokens or self.config.max_new_tokens)
    stop = self.stop_token_ids if stop_token_ids is None else tuple(int(t) for t in stop_token_ids)
    ids = self._prompt_ids(prompts)
    per_batch = max(1, self.config.max_rows_per_batch // n)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    chunks = [order[s:s + per_batch] for s in range(0, len(order), per_batch)]
    results: list[Completion | None] = [None] * (len(ids) * n)
    total_tokens, start = 0, time.perf_counter()
    for c, chunk in enumerate(chunks):
      t0 = time.perf_counter()
      out = generate(self.model, [ids[i] for i in chunk], key=key, max_new_tokens=max_new, n=n, params=params,
                     stop_token_ids=stop, pad_id=self.pad_token_id, prompt_index=chunk, mesh=self.config.mesh,
                     min_prompt_bucket=self.config.min_prompt_bucket,
                     prompt_bucket_multiple=self.config.prompt_bucket_multiple,
                     min_batch_bucket=self.config.min_batch_bucket)
      new_tokens = int(out.mask.sum())
      total_tokens += new_tokens
      dt = time.perf_counter() - t0
      logger.debug("rollout micro-batch %d/%d: %d prompts x %d samples, %d new tokens in %.2fs (%.1f tokens/s)",
                  c + 1, len(chunks), len(chunk), n, new_tokens, dt, new_tokens / max(dt, 1e-9))
      for r in range(len(chunk) * n):
        i, j = chunk[r // n], r % n
        length = int(out.mask[r].sum())
        token_ids = out.tokens[r, :length].tolist()
        stopped = bool(out.stopped[r])
        text = None
        if self.tokenizer is not None:
          text = self.tokenizer.decode(token_ids[:-1] if stopped else token_ids)
        results[i * n + j] = Completion(
            prompt_ids=ids[i], token_ids=token_ids, logprobs=out.logprobs[r, :length],
            sampling_logprobs=out.sampling_logprobs[r, :length], text=text,
            finish_reason="stop" if stopped else "length", prompt_index=i, sample_index=j)
    dt = time.perf_counter() - start
    logger.debug("rollout: %d completions, %d new tokens in %.2fs (%.1f tokens/s)", len(results), total_tokens, dt,
                total_tokens / max(dt, 1e-9))
    return results
