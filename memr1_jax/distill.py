r"""mode=distill: a teacher's Memory Manager and Answer Agent trajectories, the data of the Memory-SFT baseline.

  python -m memr1_jax.main --config=configs/grpo_qwen7b.py --config.mode=distill --config.workdir=$RUNS/distill \
      --config.data.path=$DATA/locomo10.json --config.model.path=$CKPT/Qwen2.5-7B-Instruct \
      --config.distill.teacher=https://api.openai.com/v1 --config.distill.teacher_model=gpt-5

The teacher (config.distill.teacher: any OpenAI-compatible endpoint, the key in the environment variable NAMED by
distill.teacher_api_key_env; or a local model spec: "base", a Hugging Face directory, a training workdir) plays both
agents greedily over the conversations of config.distill.split, with the facts of the configured extractor
(config.memory.extraction) and the prompts the trained agents see (config.memory.prompts):
- as manager, it builds each conversation's bank turn by turn; every manager prompt and its reply is a trajectory;
- as answer agent, it answers every question of the split from the bank it built (30 + 30 retrieved memories).
Replies that the agents' parsers cannot read are left out (counted); with distill.correct_answers_only, so are answers
that miss the gold exactly.

Written under <workdir>/distill/: manager.jsonl and answer.jsonl, one `{"messages": [...], "response": "..."}` a line
(what mode=sft reads: --config.sft.path=<that file> --config.agent=manager|answer), and summary.json (counts, the
teacher). Every teacher reply is cached in a sqlite3 file keyed by the teacher and the exact prompt
(distill.cache, default <workdir>/distill/teacher_cache.sqlite) as it arrives: an interrupted distill rerun asks
nothing it was answered before, a finished one asks nothing at all. The JSONL files are written atomically at the end.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

from memr1_jax import components, defaults, fileio, openai_client, tasks
from memr1_jax import extractor as extractor_lib
from memr1_jax.agents import parsers
from memr1_jax.episodes import runner
from memr1_jax.episodes.policy import ManagerView, Prompt, Sample
from memr1_jax.errors import ConfigError

# Files of <workdir>/distill.
MANAGER_FILE, ANSWER_FILE, SUMMARY_FILE = "manager.jsonl", "answer.jsonl", "summary.json"


class TeacherError(openai_client.EndpointError):
  """The teacher endpoint failed for good (the cache keeps every reply it gave)."""


class TeacherPolicy:
  """A greedy ChatPolicy whose replies come from `backend` through a disk cache; records each (prompt, reply).

  Attributes:
    prompts, replies: every prompt answered and its reply, in call order.
    asked, cached: replies asked of the backend and read from the cache.
  """

  def __init__(self, backend, identity: dict, cache: extractor_lib.ExtractionCache):
    """`backend` maps chats to replies (a `stream` method is used when present); `identity` (the teacher) is part of
    every cache key."""
    self.backend, self.identity, self.cache = backend, identity, cache
    self.prompts: list[Prompt] = []
    self.replies: list[str] = []
    self.asked = self.cached = 0

  def generate(self, prompts: Sequence[Prompt], *, n: int = 1, greedy: bool = True) -> list[list[Sample]]:
    """One reply per prompt (the teacher decodes greedily; n copies of it)."""
    keys = [extractor_lib.cache_key(self.identity, p.messages) for p in prompts]
    known = self.cache.get_many(keys)
    self.cached += sum(key in known for key in keys)
    ask = {key: p.messages for key, p in zip(keys, prompts) if key not in known}
    if ask:
      self.asked += len(ask)
      known.update(self._ask(list(ask), list(ask.values())))
    self.prompts += prompts
    self.replies += [known[key] for key in keys]
    return [[Sample(text=known[key])] * n for key in keys]

  def _ask(self, keys: list[str], chats: list) -> dict[str, str]:
    """{key: reply} of the backend, each stored in the cache as it arrives (kept when the backend fails)."""
    got: dict[str, str] = {}
    stream = getattr(self.backend, "stream", None)
    try:
      pairs = stream(chats) if stream is not None else enumerate(self.backend(chats))
      for i, reply in pairs:
        got[keys[i]] = reply
        self.cache.put_many([(keys[i], reply)])
    except openai_client.EndpointError as e:
      raise TeacherError(f"{e}; the cache {self.cache.path} keeps the {len(got)} replies of this call and every one "
                         "before: rerun to go on from them") from None
    return got

  def take(self) -> list[tuple[Prompt, str]]:
    """The (prompt, reply) pairs recorded since the last call, and forgets them."""
    out = list(zip(self.prompts, self.replies))
    self.prompts, self.replies = [], []
    return out


def _record(prompt: Prompt, reply: str) -> dict:
  return {"messages": [dict(m) for m in prompt.messages], "response": reply}


def _teacher(config) -> TeacherPolicy:
  """The TeacherPolicy of config.distill (ConfigError naming the field on bad input); sends no request."""
  d = config.distill
  if not d.teacher:
    raise ConfigError("config.distill.teacher: empty; name an OpenAI-compatible endpoint's base URL (with "
                      "config.distill.teacher_model) or a local model spec (base, a Hugging Face directory, a workdir)")
  if openai_client.is_endpoint_url(d.teacher):
    if not d.teacher_model:
      raise ConfigError(f"config.distill.teacher_model: empty; name the model served at {d.teacher!r}")
    backend, identity = components.endpoint_backend(
        f"config.distill.teacher={d.teacher!r}", "teacher", base_url=d.teacher, model=d.teacher_model,
        api_key_env=d.teacher_api_key_env, timeout_s=d.timeout_s, retries=d.retries, backoff_s=d.backoff_s,
        concurrency=d.concurrency, max_tokens=d.max_tokens)
  else:
    components.parse_model_spec(d.teacher, "config.distill.teacher")
    backend = extractor_lib.EngineBackend(functools.partial(_teacher_engine, config), name=d.teacher)
    identity = {"backend": "local", "spec": d.teacher, "max_tokens": int(d.max_tokens)}
  cache = os.path.expanduser(d.cache) or os.path.join(config.workdir, "distill", "teacher_cache.sqlite")
  return TeacherPolicy(backend, identity, extractor_lib.ExtractionCache(cache))


def _teacher_engine(config):
  """The local teacher of config.distill.teacher as a greedy EnginePolicy (loaded at its first uncached prompt)."""
  mesh = components.setup_mesh(config)
  model, tokenizer, _ = components.load_model_spec(config, mesh, config.distill.teacher, "config.distill.teacher")
  return components.make_engine_policy(model, tokenizer, config, mesh, seed=config.seed,
                                       max_new_tokens=config.distill.max_tokens)


def _manager_readable(prompt: Prompt, reply: str, max_ops: int) -> bool:
  """Whether the manager's parser reads `reply` to `prompt` without a format error."""
  view = prompt.view
  if not isinstance(view, ManagerView):
    return False
  parsed = parsers.parse_manager_output(reply, range(len(view.memories)), speaker=view.speaker, max_ops=max_ops)
  return parsed.format_error is None


def run(config) -> dict:
  """Entry point of mode=distill: writes the trajectories and the summary (see the module doc); returns the summary."""
  d = config.distill
  teacher = _teacher(config)
  splits = tasks.load(config).splits()
  if d.split not in splits:
    raise ConfigError(f"config.distill.split={d.split!r} is not one of {sorted(splits)}")
  conversations = splits[d.split]
  rcfg = components.runner_config(config)
  banks, stats = runner.greedy_banks(conversations, teacher, components.bank_factory(config), rcfg)
  manager = [(p, r) for p, r in teacher.take() if _manager_readable(p, r, rcfg.max_ops_per_output)]
  items = [(conv, qa) for conv in conversations for qa in conv.qa]
  experiences = runner.answer_episodes(teacher, banks, items, rcfg, n=1, greedy=True) if items else []
  answers = [(p, r) for (p, r), exp in zip(teacher.take(), experiences)
             if not exp.info["format_error"] and (exp.info["em"] or not d.correct_answers_only)]
  out = os.path.join(config.workdir, "distill")
  os.makedirs(out, exist_ok=True)
  for name, pairs in ((MANAGER_FILE, manager), (ANSWER_FILE, answers)):
    fileio.write_atomic(os.path.join(out, name),
                        "".join(json.dumps(_record(p, r), ensure_ascii=False) + "\n" for p, r in pairs))
  summary = {
      "teacher": d.teacher, "teacher_model": d.teacher_model, "split": d.split, "dataset": config.data.name,
      "manager": {"prompts": stats.manager_calls, "kept": len(manager), "format_errors": stats.format_errors,
                  "ops": dict(stats.ops)},
      "answer": {"questions": len(items), "kept": len(answers),
                 "format_errors": sum(bool(e.info["format_error"]) for e in experiences),
                 "exact_match": sum(e.info["em"] for e in experiences)},
      "teacher_calls": teacher.asked, "cache_hits": teacher.cached, "config": defaults.redacted(config)}
  fileio.write_atomic(os.path.join(out, SUMMARY_FILE), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
  teacher.cache.close()
  print(f"# distill {d.split}: {len(manager)} of {stats.manager_calls} manager and {len(answers)} of {len(items)} "
        f"answer trajectories kept; teacher {d.teacher_model or d.teacher}: {teacher.asked} asked, {teacher.cached} "
        f"from the cache\n# written to {os.path.join(out, MANAGER_FILE)} and {os.path.join(out, ANSWER_FILE)} "
        "(mode=sft: --config.sft.path=<file> --config.agent=manager|answer)", flush=True)
  return summary

