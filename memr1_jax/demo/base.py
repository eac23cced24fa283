"""The demo's pretrained base model (`assets/demo_base`, an HF directory with its tokenizer) and how it is built.

  python -m memr1_jax.demo.base [out_dir]              # from scratch
  python -m memr1_jax.demo.base out_dir from_dir       # only the reading phase, continuing from_dir's weights
  ... --reading_steps=1600 --seed=1                    # any keyword of build_base, e.g. a longer reading phase

A 0.5M-parameter decoder that has learned to copy (random-token copy exercises), has read the task's prompts with
well-formed but uninformed replies (random operations; a random statement of the asked attribute), and has done
reading exercises (a statement of the asked attribute copied into the reply, its value or date read off it), so it
copies and has seen the formats, but has no policy. Its tokenizer is the demo tokenizer plus one token per agent
instruction (`instruction_tokenizer`), which keeps prompts around 250 tokens on a CPU.

The shipped base is the base of commit 3425b86 (the first two phases, as built at commit 8d8fcd6, when answer
replies named memories by id only) continued by the second command's 800 reading steps (every 4th a rehearsal batch
of the task's text), whose answer prompts list each memory as "text [id] (date)" (the compact prompt set), the line
its replies copy (the base of commit 9294fcc), then by 1,600 more reading steps on 800 other conversations: RL gains
twice as much on the answer agent from a base that reads better (docs/demo.md). Rebuild it with
  git show 9294fcc:memr1_jax/demo/assets/demo_base/model.safetensors > <dir>/model.safetensors  (and config.json,
  tokenizer.json, tokenizer_config.json the same way), then
  python -m memr1_jax.demo.base <out> <dir> --reading_steps=1600 --reading_conversations=800 --seed=1
(18-21 min on 2 CPU cores; on the Intel Xeon that built it this rebuilt the shipped file bit for bit, another CPU
model rounds differently).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import random
import shutil
import tempfile

import jax
from flax import nnx
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from memr1_jax import console, learner, sft
from memr1_jax.agents import prompts
from memr1_jax.demo import policies, synthetic, task
from memr1_jax.demo.config import DEMO_BASE_DIR, DEMO_TOKENIZER_DIR
from memr1_jax.episodes import batching, runner
from memr1_jax.errors import ConfigError
from memr1_jax.memory.bank import MemoryBank
from memr1_jax.memory.embedders import HashingEmbedder
from memr1_jax.models import config as model_config
from memr1_jax.models import decoder as decoder_lib
from memr1_jax.models.loading import export_pretrained, load_pretrained
from memr1_jax.models.tokenizer import Tokenizer
from memr1_jax.rl import train_state as ts

# Synthetic-task seed of the base model's pretraining text (the demo's own conversations use config.seed).
BASE_CORPUS_SEED = 1000
# The agents' fixed system prompts: one token each in the demo base's tokenizer (`instruction_tokenizer`).
INSTRUCTIONS = (prompts.MANAGER_SYSTEM_PROMPT, prompts.ANSWER_SYSTEM_PROMPT, prompts.EXTRACTION_SYSTEM_PROMPT)


# The short, change-heavy task of configs/demo.py (synthetic.generate_conversations' knobs; restate_prob apart).
_SHORT_TASK = dict(num_sessions=2, facts_per_speaker=2, update_prob=0.35, retract_prob=0.35, filler_ratio=0.0)


def _hashing_bank_factory():
  """An empty-MemoryBank factory over a 256-dim hashing embedder: the pretraining text needs only the texts."""
  embed = HashingEmbedder(256)
  return lambda: MemoryBank(embed, embed.dim, index="brute_force")


def instruction_tokenizer(out_dir: str) -> str:
  """Writes the demo tokenizer with each agent's fixed system prompt added as one token to `out_dir`.

  The model reads exactly the same text; the constant instructions (324 and 148 tokens otherwise) just cost one
  position each, which makes a CPU-sized model's prompts 2-3x shorter. Returns `out_dir`.
  """
  os.makedirs(out_dir, exist_ok=True)
  shutil.copy(os.path.join(DEMO_TOKENIZER_DIR, "tokenizer_config.json"), out_dir)
  tokenizer = HFTokenizer.from_file(os.path.join(DEMO_TOKENIZER_DIR, "tokenizer.json"))
  tokenizer.add_tokens([AddedToken(text, normalized=False, special=False) for text in INSTRUCTIONS])
  tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
  return out_dir


def check_instruction_tokens(tokenizer) -> None:
  """Raises ConfigError when an agent's system prompt no longer encodes as one token of `tokenizer` (the prompts
  changed since the base was built: rebuild it with `python -m memr1_jax.demo.base`)."""
  for name in ("MANAGER_SYSTEM_PROMPT", "ANSWER_SYSTEM_PROMPT"):
    if len(tokenizer.encode(getattr(prompts, name))) != 1:
      raise ConfigError(
          f"config.model.path: prompts.{name} is not one token of this tokenizer: the prompts changed after the "
          f"demo base was built; rebuild it with `python -m memr1_jax.demo.base {DEMO_BASE_DIR}`")


def base_corpus(tokenizer, num_conversations: int, rcfg: runner.RunnerConfig, seed: int = 0) -> list[list[int]]:
  """Token ids of pretraining text for the demo base: the manager and answer-agent prompts that the ADD-only
  heuristic meets on `num_conversations` synthetic conversations of seed BASE_CORPUS_SEED (half short and
  change-heavy like configs/demo.py's, half with the task's default knobs), each followed by an uninformed reply
  (`policies.random_manager_reply`: random operations; `random_answer_reply`: a random statement of the asked
  attribute, random yes / no) and the EOS token. Retrieval uses a hashing embedder (only the text matters here)."""
  factory = _hashing_bank_factory()
  half = num_conversations // 2
  convs = (synthetic.generate_conversations(half, BASE_CORPUS_SEED, **_SHORT_TASK)
           + synthetic.generate_conversations(num_conversations - half, BASE_CORPUS_SEED + 1))
  manager, _ = policies.walk_manager(convs, factory, rcfg)
  answer = policies.walk_answerer(convs, runner.add_all_banks(convs, factory, rcfg), rcfg)
  rng = random.Random(seed)
  eos = list(tokenizer.eos_token_ids[:1])
  out = []
  for recording, reply in ((manager, policies.random_manager_reply), (answer, policies.random_answer_reply)):
    for prompt in recording.prompts:
      out.append(tokenizer.encode_chat(prompt.messages) + tokenizer.encode(reply(prompt, rng)) + eos)
  return out


def statement_answer_prompts(num_conversations: int, conversation_seed: int, rcfg: runner.RunnerConfig) -> list:
  """The answer prompts (`Prompt`s, one per question) of `num_conversations` short, change-heavy synthetic
  conversations of `conversation_seed` over ADD-all banks of the task's statements (`task.extract_statements`: the
  memories the demo's answer agent reads; retrieval by a hashing embedder, `rcfg.answer_k_per_speaker` per speaker)."""
  rcfg = dataclasses.replace(rcfg, extract=task.extract_statements)
  convs = synthetic.generate_conversations(num_conversations, conversation_seed, restate_prob=0.0, **_SHORT_TASK)
  return policies.walk_answerer(convs, runner.add_all_banks(convs, _hashing_bank_factory(), rcfg), rcfg).prompts


def reading_corpus(tokenizer, num_conversations: int, rcfg: runner.RunnerConfig, seed: int = 0
                   ) -> list[tuple[list[int], list[int]]]:
  """(prompt ids, reply ids + EOS) of reading exercises for the demo base: the `statement_answer_prompts` of
  `num_conversations` conversations of seed BASE_CORPUS_SEED + 2, each with an uninformed reply
  (`policies.random_answer_reply`: the value or date of a random statement of the asked attribute, a random yes / no).
  """
  rng = random.Random(seed)
  eos = list(tokenizer.eos_token_ids[:1])
  return [(tokenizer.encode_chat(prompt.messages), tokenizer.encode(policies.random_answer_reply(prompt, rng)) + eos)
          for prompt in statement_answer_prompts(num_conversations, BASE_CORPUS_SEED + 2, rcfg)]


def copy_exercises(tokenizer, count: int, rng, max_len: int) -> list[list[int]]:
  """`count` token-id sequences of pure copying, each at most `max_len` long: random spans of 3-16 random tokens,
  one per line, then the same spans again in a shuffled order. Only a model that copies (an induction head)
  predicts the repeats: random tokens have no prior to fall back on."""
  newline = tokenizer.encode("\n")
  skip = set(tokenizer.eos_token_ids) | {tokenizer.pad_token_id} | set(newline)
  for text in INSTRUCTIONS:
    skip.update(tokenizer.encode(text))
  vocab = [i for i in range(tokenizer.vocab_size) if i not in skip]
  out = []
  for _ in range(count):
    spans, length = [], 0
    while True:
      span = [rng.choice(vocab) for _ in range(rng.randint(3, 16))]
      if 2 * (length + len(span) + len(newline)) > max_len:
        break
      spans.append(span)
      length += len(span) + len(newline)
    order = list(range(len(spans)))
    rng.shuffle(order)
    out.append([i for span in spans for i in span + newline] + [i for k in order for i in spans[k] + newline])
  return out


def build_base(out_dir: str = DEMO_BASE_DIR, *, steps: int = 2000, batch_size: int = 16, lr: float = 1e-3,
               copy_steps: int = 2000, copy_batch_size: int = 32, copy_len: int = 64, copy_share: float = 0.2,
               num_conversations: int = 400, max_len: int = 512, reading_steps: int = 800,
               reading_conversations: int = 400, reading_rehearsal: int = 4, seed: int = 0, init_from: str = "",
               preset: str = "small") -> str:
  """Pretrains the demo's base model and writes it, with its tokenizer, as an HF directory `out_dir`.

  A decoder of `preset` learns, as a plain language model (next-token loss on every token), the prompts of both
  agents on synthetic conversations that the demo never trains or evaluates on, each followed by a random,
  well-formed reply (`base_corpus`), after a first phase of short copy exercises (`copy_exercises`), where a
  2-layer model forms the induction heads it needs to copy facts and values: the stand-in for the pretraining of
  the LLM the paper starts from. Its text shows the formats, copied facts, memories, values and dates, and answers
  read from the memories a question asks about, but no decision (which operation on which memory; which of several
  statements is current, whether a thing is still owned); the demo's SFT stage teaches it the heuristics'
  decisions. A last phase of `reading_steps` reading exercises (`reading_corpus`, loss on the replies only) practises
  the answer format's copy-then-read; every `reading_rehearsal`-th of its steps (0: none) is a batch of the task's
  text instead, so that the answer replies do not pull the weights the manager shares away from its prompts.
  `init_from` continues from an HF directory instead of a random init. The first two phases take about 13 minutes
  on 2 CPU cores, the reading phase about 6.
  """
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer_dir = instruction_tokenizer(os.path.join(tmp, "tokenizer"))
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    rcfg = runner.RunnerConfig(related_k=2, answer_k_per_speaker=3)
    rng = random.Random(seed)
    # Each phase's examples are built only when it runs (the reading phase alone skips the first two corpora).
    # Next-token loss on every token: the first token is the "prompt", the rest the scored "response".
    copying = copy_exercises(tokenizer, 12_800, rng, copy_len) if copy_steps else []  # The copy phase's pool.
    examples = []
    if steps or (reading_steps and reading_rehearsal):
      corpus = [ids[:max_len] for ids in base_corpus(tokenizer, num_conversations, rcfg, seed)]
      corpus += copy_exercises(tokenizer, int(len(corpus) * copy_share / (1 - copy_share)), rng, 128)
      examples = [(ids[:1], ids[1:]) for ids in corpus]
    if init_from:
      model, _ = load_pretrained(init_from)
    else:
      cfg = model_config.get_preset(preset, vocab_size=tokenizer.vocab_size)
      model = nnx.merge(*jax.jit(lambda: nnx.split(decoder_lib.Decoder(cfg, rngs=nnx.Rngs(seed))))())
    schedule = ts.learning_rate_schedule(lr, 100)
    state, frozen, spec = ts.init_train_state(model, ts.make_optimizer(schedule), actor_lr=schedule,
                                              reference=False)
    # Short copy exercises first: the 2-layer preset forms its induction heads on 64-token ones at lr 1e-3 in about
    # 1000 steps, and did not within 800-900 steps of 128- or 256-token ones at lr 3e-3; the task's text then keeps a
    # share of longer ones.
    # Last, reading exercises with the loss on the replies only: the demo's statement-only answer prompts, whose
    # replies copy a statement and then read its value or date off that copy (docs/demo.md: with them the seed-0
    # SFT start answers 0.612 of the held-out questions, 0.412 without; EPYC Milan).
    reading = reading_corpus(tokenizer, reading_conversations, rcfg, seed) if reading_steps else []
    phases = ((copy_steps, [(ids[:1], ids[1:]) for ids in copying], copy_batch_size, 1, copy_len, "copying"),
              (steps, examples, batch_size, 1, 256, "the task's text"),
              (reading_steps, reading, batch_size, 256, 64, "reading exercises"))
    for num_steps, items, rows_per_step, prompt_bucket, bucket, what in phases:
      if not num_steps:
        continue
      step_fn = learner.make_sft_step(spec, rows_per_step)
      bar = console.bar(num_steps, desc=f"pretraining the demo base: {what}")
      for step in range(num_steps):
        if items is reading and reading_rehearsal and step % reading_rehearsal == reading_rehearsal - 1:
          batch, buckets = batching.batch_for_step(examples, step, rows_per_step, seed), (1, 256)
        else:
          batch, buckets = batching.batch_for_step(items, step, rows_per_step, seed), (prompt_bucket, bucket)
        rows = sft.pack_examples(batch, rows=rows_per_step, pad_id=tokenizer.pad_token_id,
                                 min_prompt_bucket=buckets[0], min_response_bucket=buckets[1])
        state, metrics = step_fn(state, frozen, rows)
        if step % 50 == 0:
          bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
        bar.update(1)
      bar.close()
    # bfloat16 halves the file shipped in the repo; the demo computes in float32 (config.model.dtype).
    export_pretrained(ts.policy_model(spec, state, frozen), out_dir, dtype="bfloat16", tokenizer_dir=tokenizer_dir,
                      overwrite=True)  # Rebuilding replaces the shipped base.
  return out_dir


def main(argv: list[str] | None = None) -> str:
  """`python -m memr1_jax.demo.base [out_dir [from_dir]] [--<build_base keyword>=value ...]`: builds the base into
  `out_dir` (default: the shipped one); with `from_dir`, only the reading phase continues its weights (copy_steps
  and steps default to 0). Returns out_dir."""
  parser = argparse.ArgumentParser(prog="python -m memr1_jax.demo.base", description=__doc__.split("\n")[0])
  parser.add_argument("out_dir", nargs="?", default=DEMO_BASE_DIR, help="HF directory to write.")
  parser.add_argument("from_dir", nargs="?", default="", help="HF directory whose weights the reading phase continues.")
  for name, param in inspect.signature(build_base).parameters.items():
    if param.kind is param.KEYWORD_ONLY and name != "init_from":
      parser.add_argument(f"--{name}", type=type(param.default), default=None, help=f"default {param.default!r}")
  args = vars(parser.parse_args(argv))
  out_dir, init_from = args.pop("out_dir"), args.pop("from_dir")
  kwargs = {k: v for k, v in args.items() if v is not None}
  if init_from:
    kwargs = {"copy_steps": 0, "steps": 0, **kwargs}
  return build_base(out_dir, init_from=init_from, **kwargs)


if __name__ == "__main__":
  print(main())
