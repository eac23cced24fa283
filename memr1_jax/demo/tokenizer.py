"""The demo's small tokenizer: byte-level BPE (about 2k tokens) trained on the synthetic task.

Trained deterministically on what the demo model reads and writes: the synthetic conversations
(`synthetic.generate_conversations`), their questions, answers and ideal memories, the Memory
Manager's JSON operations and the Answer Agent's replies, the rendered agent prompts
(`agents.prompts`, so their instructions are whole-word tokens), and the numbers 0-99 (memory
ids). Byte-level BPE has no unknown token: any text round-trips, unseen words just take more tokens.

Special tokens follow Qwen2's ChatML: `<|endoftext|>` (padding) and `<|im_start|>` / `<|im_end|>`
around each chat message; `<|im_end|>` is the end-of-sequence token, as in Qwen2.5-Instruct, so the
demo stops where the paper's model stops. The directory holds `tokenizer.json` and
`tokenizer_config.json` (with the ChatML `chat_template`), so
`transformers.AutoTokenizer.from_pretrained(dir, local_files_only=True).apply_chat_template(...)`
works offline.

The shipped copy is `DEMO_TOKENIZER_DIR`; rebuild it after changing the task or the prompts with
`python -m memr1_jax.demo.tokenizer`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from memr1_jax.agents import prompts
from memr1_jax.demo import synthetic
from memr1_jax.demo.config import DEMO_TOKENIZER_DIR
from memr1_jax.memory.operations import MemoryOp, OpKind

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
# Upper bound on the vocabulary (bytes + merges + special tokens); training may stop below it.
VOCAB_SIZE = 2048
# Synthetic conversations in the training corpus.
CORPUS_CONVERSATIONS = 200
# Turns per conversation whose manager / extraction prompts are rendered into the corpus.
PROMPTED_TURNS_PER_CONVERSATION = 3
MAX_MEMORY_ID = 99
MODEL_MAX_LENGTH = 8192
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@dataclasses.dataclass(frozen=True)
class _Memory:
  """A memory as the prompts show it (`agents.prompts.MemoryLike`)."""

  memory_id: int
  text: str
  speaker: str
  timestamp: str


def corpus_lines(seed: int = 0) -> Iterator[str]:
  """The training text of the demo tokenizer, in a fixed order (deterministic in `seed`)."""
  # Every memory id twice bare ("[12]") and twice after a space ('"id": 12'), so each is one token.
  numbers = range(MAX_MEMORY_ID + 1)
  yield "\n".join(str(i) for i in numbers)
  yield " ".join(f"[{i}]" for i in numbers)
  yield " ".join(str(i) for i in numbers)
  yield " ".join(f'"id": {i},' for i in numbers)
  yield "ADD UPDATE DELETE NOOP yes no none Useful memories: **Answer:**"
  for conversation in synthetic.generate_conversations(CORPUS_CONVERSATIONS, seed):
    ops = synthetic.oracle_bank_ops(conversation)
    live: dict[int, _Memory] = {}
    next_id = 0
    prompted = 0
    for session, turn in conversation.turns:
      fact = f"[{session.date_time}] {turn.speaker}: {turn.text}"
      yield turn.text
      yield fact
      op = ops[turn.dia_id][0]
      yield json.dumps({"operations": [_op_json(op)]})
      if prompted < PROMPTED_TURNS_PER_CONVERSATION and op.kind != OpKind.NOOP:
        prompted += 1
        yield from _chat_lines(prompts.manager_messages(
            [fact], list(live.values()), speaker=turn.speaker, date=session.date_time))
        yield from _chat_lines(prompts.extraction_messages(
            turn.text, speaker=turn.speaker, date=session.date_time))
      if op.kind == OpKind.ADD:
        live[next_id] = _Memory(next_id, op.text, op.speaker, session.date_time)
        next_id += 1
      elif op.kind == OpKind.UPDATE:
        live[op.memory_id] = dataclasses.replace(live[op.memory_id], text=op.text)
      elif op.kind == OpKind.DELETE:
        del live[op.memory_id]
    speakers = (conversation.speaker_a, conversation.speaker_b)
    for qa in conversation.qa:
      yield qa.question
      answer_re = re.compile(rf"\b{re.escape(qa.answer)}\b")
      useful = [m for m in live.values() if answer_re.search(m.text)][:1]
      reply_lines = [f"[{m.memory_id}] {m.text}" for m in useful] or ["none"]
      yield "Useful memories:\n" + "\n".join(reply_lines) + f"\n**Answer:** {qa.answer}"
    first_qa = conversation.qa[0] if conversation.qa else None
    if first_qa is not None:
      yield from _chat_lines(prompts.answer_messages(first_qa.question, list(live.values()),
                                                     speakers=speakers))


def _chat_lines(messages) -> Iterator[str]:
  """Chat messages as the template writes them after `<|im_start|>`: role, newline, content."""
  for message in messages:
    yield f"{message['role']}\n{message['content']}"
  yield "assistant\n"


def _op_json(op: MemoryOp) -> dict:
  """A `MemoryOp` in the manager's reply format."""
  record: dict = {"op": op.kind.value}
  if op.memory_id is not None:
    record["id"] = op.memory_id
  if op.text is not None:
    record["text"] = op.text
  return record


def train_demo_tokenizer(seed: int = 0) -> Tokenizer:
  """A byte-level BPE `Tokenizer` trained on `corpus_lines(seed)`, special tokens first (ids 0-2)."""
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(corpus_lines(seed), trainer=trainer)
  return tokenizer


def tokenizer_config() -> dict:
  """The `tokenizer_config.json` contents: special tokens, ChatML chat template, fast tokenizer."""
  return {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "bos_token": None,
      "eos_token": IM_END,
      "pad_token": PAD_TOKEN,
      "unk_token": None,
      "additional_special_tokens": [IM_START, IM_END],
      "model_max_length": MODEL_MAX_LENGTH,
      "clean_up_tokenization_spaces": False,
      "chat_template": CHAT_TEMPLATE,
  }


def build_demo_tokenizer(out_dir: str | os.PathLike[str], seed: int = 0) -> str:
  """Trains the demo tokenizer and writes `tokenizer.json` and `tokenizer_config.json` to `out_dir`.

  Returns:
    `out_dir` as a string.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  tokenizer = train_demo_tokenizer(seed)
  tokenizer.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(tokenizer_config(), f, indent=2)
    f.write("\n")
  return out_dir


if __name__ == "__main__":
  print(build_demo_tokenizer(DEMO_TOKENIZER_DIR))
