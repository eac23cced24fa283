"""Builders shared by every mode of `main.py`: mesh, policy + tokenizer, memory embedder and banks, fact extractor,
data splits.

Each builder reads one part of the config and fails fast, naming the config field and the file, before any
expensive work starts.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memr1_jax import openai_client, tasks
from memr1_jax import extractor as extractor_lib
from memr1_jax import learner as learner_lib
from memr1_jax import sharding as sharding_lib
from memr1_jax.agents import extraction as extraction_lib
from memr1_jax.agents import prompts
from memr1_jax.checkpoint import Checkpointer
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import EnginePolicy
from memr1_jax.errors import ConfigError
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.models import config as model_config
from memr1_jax.models import decoder as decoder_lib
from memr1_jax.models import lora as lora_lib
from memr1_jax.models.encoder import SentenceEncoder, default_encoder_path
from memr1_jax.models.loading import load_pretrained
from memr1_jax.models.tokenizer import Tokenizer
from memr1_jax.sampling.engine import RolloutConfig, RolloutEngine

logger = logging.getLogger(__name__)



def configure_jax(config) -> None:
  """Process-wide JAX settings of `config` (the persistent compilation cache, config.jax_cache_dir), before the
  first compilation."""
  if config.jax_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.jax_cache_dir))


def setup_mesh(config):
  """Starts multi-host JAX when configured and returns the (data, fsdp, tensor) mesh of config.mesh.shape over the
  first config.mesh.num_devices devices (all when -1)."""
  m = config.mesh
  sharding_lib.maybe_initialize_distributed(
      m.distributed, m.coordinator_address or None, None if m.num_processes < 0 else m.num_processes,
      None if m.process_id < 0 else m.process_id)
  devices = jax.devices()
  if m.num_devices != -1:
    if not 1 <= m.num_devices <= len(devices) or jax.process_count() > 1:
      raise ConfigError(f"config.mesh.num_devices={m.num_devices}: must be -1 or 1..{len(devices)} (the devices "
                        f"there are), and -1 across processes ({jax.process_count()} here)")
    devices = devices[:m.num_devices]
  try:
    return sharding_lib.make_mesh(tuple(m.shape), devices)
  except ValueError as e:
    raise ConfigError(f"config.mesh.shape={tuple(m.shape)}: {e}") from None


def _model_overrides(config) -> dict:
  mc = config.model
  return dict(remat=bool(mc.remat), attention_impl=mc.attention_impl or None)


def load_policy(config, mesh, path: str | None = None):
  """(decoder, tokenizer) of config.model (or of the checkpoint directory `path`), placed on `mesh`.

  With config.model.path empty, a random-init decoder of config.model.preset and the tokenizer of
  config.model.tokenizer (tests, benchmarks, the CPU demo).
  """
  mc = config.model
  path = path or mc.path
  if path:
    if not os.path.isdir(path):
      raise ConfigError(f"config.model.path={path!r}: not a directory")
    model, _ = load_pretrained(path, dtype=mc.dtype, param_dtype=mc.param_dtype, mesh=mesh, **_model_overrides(config))
    # config.model.tokenizer belongs to config.model.path; another checkpoint brings its own tokenizer.
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir(config) if path == mc.path else path)
    return model, tokenizer
  try:
    cfg = model_config.get_preset(mc.preset, dtype=mc.dtype, param_dtype=mc.param_dtype, **_model_overrides(config))
  except KeyError as e:
    raise ConfigError(f"config.model.preset: {e.args[0]}") from None
  if not mc.get("tokenizer"):
    raise ConfigError("config.model.tokenizer: a random-init preset needs a tokenizer directory")
  tokenizer = Tokenizer.from_pretrained(tokenizer_dir(config))
  if tokenizer.vocab_size > cfg.vocab_size:
    cfg = cfg.replace(vocab_size=tokenizer.vocab_size)
  init = jax.jit(lambda: nnx.split(decoder_lib.Decoder(cfg, rngs=nnx.Rngs(config.seed))))
  model = nnx.merge(*init())
  if mesh is not None and mesh.size > 1:
    sharding_lib.shard_model(model, mesh)
  return model, tokenizer


def tokenizer_dir(config) -> str:
  """The directory of config.model's tokenizer: config.model.tokenizer (resolved) or else config.model.path."""
  return config.model.get("tokenizer") or config.model.path


# The validation metric that picks the best checkpoint of a run.
BEST_METRIC = "eval/em"
CHECKPOINT_CHOICES = ("latest", "best", "none")


def load_trained_policy(config, mesh, checkpoint: str = "latest"):
  """(decoder, tokenizer, step): config.model's policy with its trained parameters from <config.workdir>/checkpoints.

  `checkpoint` picks the step: "latest", "best" (by BEST_METRIC) or "none" (config.model's own weights). LoRA
  adapters (config.model.lora_rank > 0) are merged into the weights. `step` is None when no checkpoint was read
  ("none", or the workdir has no checkpoint); "best" with no scored checkpoint raises ConfigError. Only the policy's
  trained arrays are read from the checkpoint (no optimizer state, reference or value model).
  """
  if checkpoint not in CHECKPOINT_CHOICES:
    raise ValueError(f"load_trained_policy: checkpoint={checkpoint!r} is not one of {CHECKPOINT_CHOICES}")
  policy, tokenizer = load_policy(config, mesh)
  directory = os.path.join(config.workdir, "checkpoints")
  if checkpoint == "none" or not os.path.isdir(directory):
    return policy, tokenizer, None
  ckpt = Checkpointer(directory, best_metric=BEST_METRIC if checkpoint == "best" else None)
  try:
    step = ckpt.latest_step() if checkpoint == "latest" else ckpt.best_step()
    if step is None:
      if checkpoint == "best":
        raise ConfigError(f"{directory}: no checkpoint has a {BEST_METRIC!r} score to pick the best by")
      return policy, tokenizer, None
    lora = config.model.lora_rank > 0
    policy = learner_lib.with_adapters(config, policy, mesh)  # The learner's graph; its A init is overwritten below.
    graphdef, trained, rest = nnx.split(policy, lora_lib.LORA if lora else nnx.Param, ...)
    # Trained parameters are saved in the learner's float32 master dtype (`rl.train_state.init_train_state`).
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
                                       sharding=x.sharding), nnx.to_pure_dict(trained))
    try:
      # "latest" restores the newest step that verifies (an older one when the newest is damaged).
      restored, _, step = ckpt.restore_partial({"learner": {"policy": target}},
                                               None if checkpoint == "latest" else step)
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise ConfigError(f"{directory}/{step}: cannot read the policy of config.model (preset/path, "
                        f"lora_rank={config.model.lora_rank}) from this checkpoint ({type(e).__name__}: {e})") from None
  finally:
    ckpt.close()
  dtype = jnp.dtype(config.model.param_dtype)
  params = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        restored["learner"]["policy"])
  model = nnx.merge(graphdef, params, rest)
  if lora:
    model = lora_lib.merge_lora(model)
  logger.info("policy: step %d of %s", step, directory)
  return model, tokenizer, step


# A model spec naming config.model's own weights, untrained (the paper's BASE rows, the Mem0-like manager).
BASE_MODEL = "base"
# A training workdir's own checkpoints are under this subdirectory; its resolved config is workdir.CONFIG_FILE.
_CHECKPOINTS, _WORKDIR_CONFIG = "checkpoints", "config.json"
# The config.model fields a training workdir's saved config brings to a policy loaded from it.
_SAVED_MODEL_FIELDS = ("path", "preset", "tokenizer", "lora_rank", "lora_alpha")


def parse_model_spec(spec: str, field: str) -> tuple[str, str, str]:
  """(kind, path, checkpoint) of a model spec: "base" (config.model's weights), a Hugging Face checkpoint directory
  ("hf"), or a training workdir ("workdir", its latest checkpoint; "<workdir>@best" or "@latest" picks one). Checks
  the files only (loads nothing); ConfigError naming `field` on bad input."""
  if spec == BASE_MODEL:
    return "base", "", "none"
  path, _, which = spec.rpartition("@") if "@" in spec else (spec, "", "latest")
  if which not in ("latest", "best"):
    raise ConfigError(f"{field}={spec!r}: '@{which}' is not @latest or @best")
  if os.path.isdir(os.path.join(path, _CHECKPOINTS)):
    return "workdir", path, which
  if os.path.isfile(os.path.join(path, "config.json")) and any(
      name.endswith(".safetensors") for name in os.listdir(path)):
    if "@" in spec:
      raise ConfigError(f"{field}={spec!r}: a Hugging Face directory has no checkpoints to pick by '@{which}'")
    return "hf", path, "none"
  raise ConfigError(f"{field}={spec!r}: neither 'base', a Hugging Face checkpoint directory (config.json and "
                    f"*.safetensors) nor a training workdir (with {_CHECKPOINTS}/)")


def workdir_config(config, path: str):
  """`config` with config.workdir = `path` and the config.model fields of the run saved there."""
  saved_path = os.path.join(path, _WORKDIR_CONFIG)
  try:
    with open(saved_path, encoding="utf-8") as f:
      saved = json.load(f)["model"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"{saved_path}: cannot read the model of the run in {path} ({type(e).__name__}: {e})") from None
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.workdir = path
    for name in _SAVED_MODEL_FIELDS:
      if name in saved:
        out.model[name] = saved[name]
  return out


def load_model_spec(config, mesh, spec: str, field: str):
  """(decoder, tokenizer, provenance) of the model spec `spec` (`parse_model_spec`) of config field `field`; the
  provenance names the model, the checkpoint read and its step."""
  kind, path, which = parse_model_spec(spec, field)
  if kind == "hf":
    model, tokenizer = load_policy(config, mesh, path)
    return model, tokenizer, {"spec": spec, "model": path, "checkpoint": path, "step": None}
  run_config = config if kind == "base" else workdir_config(config, path)
  model, tokenizer, step = load_trained_policy(run_config, mesh, which)
  if kind == "workdir" and step is None:
    raise ConfigError(f"{field}={spec!r}: {os.path.join(path, _CHECKPOINTS)} holds no checkpoint")
  m = run_config.model
  return model, tokenizer, {
      "spec": spec, "model": m.path or f"preset {m.preset}", "step": step,
      "checkpoint": None if step is None else os.path.join(path, _CHECKPOINTS, str(step))}


@functools.lru_cache(maxsize=4)
def make_embedder(name: str):
  """The memory embedder `config.memory.encoder`: "" (bundled all-MiniLM-L6-v2), "hashing[:dim]", or a directory."""
  if name.startswith("hashing"):
    dim = int(name.split(":", 1)[1]) if ":" in name else 256
    return HashingEmbedder(dim)
  return SentenceEncoder.from_pretrained(name or default_encoder_path())


class CachedEmbedder:
  """An `embed_fn` that remembers the embeddings of the last `size` distinct texts (LRU).

  Misses are embedded together in one call to `embed`, padded (by repeating a text) to `min_batch` rows when fewer,
  so that a jitted encoder sees few distinct batch shapes. `prefetch` embeds texts known in advance (an episode's
  facts and questions) in one large call, so the many small calls of a walk through the turns mostly hit.
  """

  def __init__(self, embed, size: int, min_batch: int = 8):
    self.embed, self.size, self.min_batch = embed, int(size), int(min_batch)
    self.dim = embed.dim
    self._cache: collections.OrderedDict = collections.OrderedDict()

  def prefetch(self, texts) -> int:
    """Embeds those of the strings `texts` that are not cached, in one call; returns how many it embedded."""
    embedded = self._fill(texts)
    self._evict()
    return embedded

  def __call__(self, texts):
    """float32 [N, dim] embeddings of the sequence of strings `texts`."""
    texts = list(texts)
    self._fill(texts)
    rows = []
    for text in texts:
      self._cache.move_to_end(text)
      rows.append(self._cache[text])
    self._evict()
    return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

  def _fill(self, texts) -> int:
    missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
    if missing:
      padded = missing + missing[-1:] * (self.min_batch - len(missing))
      for text, vec in zip(missing, np.asarray(self.embed(padded), np.float32)):
        self._cache[text] = vec
    return len(missing)

  def _evict(self) -> None:
    while len(self._cache) > self.size:
      self._cache.popitem(last=False)


@functools.lru_cache(maxsize=4)
def cached_embedder(name: str, size: int):
  """`make_embedder(name)` behind one shared `CachedEmbedder` of `size` texts (the embedder itself when size is 0)."""
  embed = make_embedder(name)
  return CachedEmbedder(embed, size) if size > 0 else embed


def bank_factory(config):
  """A zero-argument function making an empty MemoryBank as config.memory describes."""
  embed = cached_embedder(config.memory.encoder, int(config.memory.get("embedding_cache", 0)))
  dim = embed.dim
  return lambda: MemoryBank(embed, dim, index=config.memory.index, max_ops_per_call=config.memory.max_ops_per_output)


def fact_extractor(config):
  """The fact extractor of config.memory.extraction, a callable (session, turn) pairs -> one Extraction each: "simple"
  (each turn), "task" (the task's own, `tasks.Task.fact_extractor`) or "llm" (`frozen_extractor`)."""
  choice = config.memory.extraction
  if choice == "llm":
    return frozen_extractor(config)
  if choice == "simple":
    return extraction_lib.extract_facts_simple
  extract = tasks.load(config).fact_extractor()
  if extract is None:
    raise ConfigError(f"config.memory.extraction='task': the task of config.task={config.task!r} has no extractor of "
                      "its own; use 'simple' or 'llm'")
  return extract


def check_extractor(config) -> str:
  """Checks config.memory.extractor* for extraction="llm" without building anything (no request, no model load);
  returns "http" (an OpenAI-compatible endpoint) or "local" (a checkpoint directory); raises ConfigError naming the
  field."""
  m = config.memory
  target = m.extractor
  if not target:
    raise ConfigError("config.memory.extraction='llm' needs config.memory.extractor: a Hugging Face checkpoint "
                      "directory or the base URL of an OpenAI-compatible endpoint (the frozen model that extracts "
                      "the facts; never the policy under training)")
  if openai_client.is_endpoint_url(target):
    if not m.extractor_model:
      raise ConfigError(f"config.memory.extractor_model: empty; name the model served at {target!r}")
    key_env = m.extractor_api_key_env
    if key_env and not os.environ.get(key_env):
      raise ConfigError(f"config.memory.extractor_api_key_env={key_env!r}: that environment variable is not set (it "
                        f"holds the API key of {target!r}; set the field to '' for an endpoint without one)")
    return "http"
  try:
    parse_model_spec(target, "config.memory.extractor")
  except ConfigError as e:
    raise ConfigError(f"{e}, nor the http(s) URL of an OpenAI-compatible endpoint") from None
  return "local"


def extractor_cache_path(config) -> str:
  """The extractor's cache file: config.memory.extractor_cache, or <workdir>/extractor_cache.sqlite; one file per
  process in a multi-process run (each process extracts, all in lock step)."""
  path = os.path.expanduser(config.memory.extractor_cache) or os.path.join(config.workdir, "extractor_cache.sqlite")
  return path if jax.process_count() == 1 else f"{path}.process{jax.process_index()}"


def endpoint_backend(label: str, role: str, *, base_url: str, model: str, api_key_env: str, timeout_s: float,
                     retries: int, backoff_s: float, concurrency: int, max_tokens: int):
  """(`openai_client.ChatClient`, its cache identity) of an OpenAI-compatible endpoint from a config section's fields
  (the fact extractor's, the distill teacher's); ConfigError prefixed by `label` when a field is bad."""
  try:
    endpoint = openai_client.EndpointConfig(
        base_url=base_url, model=model, api_key_env=api_key_env, timeout_s=float(timeout_s),
        max_retries=int(retries), backoff_s=float(backoff_s), max_concurrency=int(concurrency),
        max_tokens=int(max_tokens))
    backend = openai_client.ChatClient(endpoint, role=role)
  except ValueError as e:
    raise ConfigError(f"{label}: {e}") from None
  return backend, extractor_lib.endpoint_identity(endpoint)


def frozen_extractor(config) -> extractor_lib.FrozenExtractor:
  """The frozen LLM fact extractor of config.memory.extractor* (`memr1_jax.extractor`): an OpenAI-compatible endpoint,
  or a checkpoint directory of its own loaded (beside, never instead of, the policy) at the first turn its cache
  lacks; replies cached in `extractor_cache_path(config)`."""
  m = config.memory
  kind = check_extractor(config)
  label = f"config.memory.extractor={m.extractor!r}"
  if kind == "http":
    backend, identity = endpoint_backend(
        label, "fact extractor", base_url=m.extractor, model=m.extractor_model, api_key_env=m.extractor_api_key_env,
        timeout_s=m.extractor_timeout_s, retries=m.extractor_retries, backoff_s=m.extractor_backoff_s,
        concurrency=m.extractor_concurrency, max_tokens=m.extractor_max_tokens)
  else:
    spec = m.extractor
    backend = extractor_lib.EngineBackend(functools.partial(_extractor_policy, config, spec), name=spec)
    kind, path, which = parse_model_spec(spec, "config.memory.extractor")
    identity = extractor_lib.checkpoint_identity(path or config.model.path, m.extractor_max_tokens)
    if kind == "base" and not config.model.path:  # A random-init preset (tests): named by preset and seed.
      identity.update(path="", preset=config.model.preset, seed=config.seed)
    if kind == "workdir":  # A run that trained on since is another extractor.
      steps = [int(n) for n in os.listdir(os.path.join(path, _CHECKPOINTS)) if n.isdigit()]
      identity.update(checkpoint=which, last_step=max(steps, default=None))
  return extractor_lib.FrozenExtractor(backend, identity, extractor_lib.ExtractionCache(extractor_cache_path(config)),
                                       label=label, fallback_to_turn=bool(m.extractor_fallback))


def _extractor_policy(config, spec: str) -> EnginePolicy:
  """The model of spec `spec` (`parse_model_spec`) as a greedy EnginePolicy with replies of
  config.memory.extractor_max_tokens: a model of its own, on config.mesh."""
  mesh = setup_mesh(config)
  model, tokenizer, _ = load_model_spec(config, mesh, spec, "config.memory.extractor")
  return make_engine_policy(model, tokenizer, config, mesh, seed=config.seed,
                            max_new_tokens=config.memory.extractor_max_tokens)


def runner_config(config) -> runner.RunnerConfig:
  """The episode settings of config.memory / config.rl."""
  return runner.RunnerConfig(
      related_k=config.memory.related_k, related_min_score=config.memory.related_min_score,
      answer_k_per_speaker=config.memory.answer_k_per_speaker,
      format_penalty=config.rl.format_penalty, f1_reward_weight=config.rl.f1_reward_weight,
      max_ops_per_output=config.memory.max_ops_per_output,
      extract=fact_extractor(config), manager_reward_questions=config.rl.manager_reward_questions,
      prompt_set=prompts.PROMPT_SETS[config.memory.prompts])


def make_engine_policy(model, tokenizer, config, mesh, *, seed: int, max_new_tokens: int | None = None):
  """An EnginePolicy over a RolloutEngine for `model` with config.rollout's shapes and sampling settings (replies of
  at most `max_new_tokens`, default config.rollout.max_new_tokens)."""
  r = config.rollout
  max_new_tokens = int(max_new_tokens or r.max_new_tokens)
  engine = RolloutEngine(model, tokenizer, RolloutConfig(
      max_new_tokens=max_new_tokens, max_prompt_len=r.max_prompt_len, max_rows_per_batch=r.max_batch,
      min_prompt_bucket=r.min_prompt_bucket, prompt_bucket_multiple=r.prompt_bucket_multiple,
      min_batch_bucket=r.min_batch_bucket, mesh=mesh if mesh is not None and mesh.size > 1 else None, seed=seed))
  return EnginePolicy(engine, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                      max_new_tokens=max_new_tokens, seed=seed)
