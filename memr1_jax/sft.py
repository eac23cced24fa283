"""mode=sft: supervised fine-tuning of the Memory Manager or the Answer Agent on JSONL trajectories.

Each line of `config.sft.path` is `{"messages": [{"role", "content"}, ...], "response": "..."}`. The prompt is the
chat under the tokenizer's chat template with the generation prompt, the target is the response's tokens followed by
the first EOS token: exactly the token sequence the rollout engine samples and the RL learner scores, so an SFT model
starts RL where it left off. The loss is the mean cross-entropy over all response tokens of a batch (prompt tokens
are context only): `learner.sft_loss`. One jitted step per batch (`learner.make_sft_step`, built by
`learner.Learner.create(kind="sft")`): micro-batches of `config.sft.micro_batch_size` rows accumulate the gradient,
then one AdamW update (a non-finite loss or gradient skips it). The model runs over the batch's longest prompt +
response (`sequence_bucket`), not the prompt bucket plus the response bucket, which are maxima of different rows.
`sft.schedule=cosine` decays the learning rate to 0 at the last step.

This is the paper's Memory-SFT baseline (trajectories from a stronger model) and the warm start of the CPU demo
(trajectories of the heuristic agents, `demo.policies`). Batches follow the trainer's deterministic per-epoch
permutations, so a resumed run continues exactly. The steps run in the trainer's loop (`loop.TrainingRun`): resume,
SIGTERM (checkpoint, then exit 75), the non-finite guard (config.train.max_nonfinite_steps), metrics every
config.train.log_every steps.

Output, in the trainer's layout: orbax checkpoints `<workdir>/checkpoints/<step>` holding
`{"learner": TrainState, "step"}` (every `config.sft.checkpoint_every` steps and the last; resumed from the latest),
metrics in `<workdir>/tb` and `metrics.jsonl`, and a Hugging Face directory with the tokenizer
(`config.sft.export_path`, default `<workdir>/hf`) that mode=train loads with `--config.model.path`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np

from memr1_jax import components, console, errors, loop
from memr1_jax.data import errors as data_errors
from memr1_jax.episodes import batching
from memr1_jax.errors import ConfigError
from memr1_jax.learner import Learner, sft_micro_batch_size
from memr1_jax.models import lora as lora_lib
from memr1_jax.models.loading import export_pretrained
from memr1_jax.sampling.generation import bucket_size, length_bucket

logger = logging.getLogger(__name__)


class TrajectoryError(errors.Error, ValueError):
  """A trajectory file or line is unusable (the message names the file and line)."""


def read_trajectories(path: str) -> list[dict]:
  """Reads a JSONL trajectory file: one `{"messages": [...], "response": str}` per non-empty line.

  Raises:
    TrajectoryError naming the file, the line and the field when a line is not such a record.
  """
  if not os.path.exists(path):
    raise TrajectoryError(f"config.sft.path: {path!r} does not exist")
  records = []
  for number, line in enumerate(data_errors.read_text(path).split("\n"), start=1):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise TrajectoryError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
      raise TrajectoryError(f"{where}: expected a JSON object with 'messages' and 'response'")
    messages, response = record.get("messages"), record.get("response")
    if not isinstance(messages, list) or not messages:
      raise TrajectoryError(f"{where}: 'messages' must be a non-empty list of chat messages")
    for i, m in enumerate(messages):
      if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
        raise TrajectoryError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
    if not isinstance(response, str) or not response:
      raise TrajectoryError(f"{where}: 'response' must be a non-empty string")
    records.append({"messages": messages, "response": response})
  if not records:
    raise TrajectoryError(f"{path}: no trajectories")
  return records


def tokenize_trajectory(tokenizer, record: dict, *, max_prompt_len: int, max_response_len: int
                        ) -> tuple[list[int], list[int], bool]:
  """(prompt ids, response ids ending with EOS, whether anything was cut) of one trajectory.

  A prompt longer than `max_prompt_len` keeps its end (as the rollout config says); a response longer than
  `max_response_len` keeps its start (and then has no EOS, like a sample that hit the token limit).
  """
  prompt = tokenizer.encode_chat(record["messages"])
  eos = tokenizer.eos_token_ids[:1]
  response = tokenizer.encode(record["response"]) + list(eos)
  cut = len(prompt) > max_prompt_len or len(response) > max_response_len
  return prompt[-max_prompt_len:], response[:max_response_len], cut


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, rows: int, pad_id: int,
                  min_prompt_bucket: int = 16, prompt_bucket_multiple: int = 0, min_response_bucket: int = 16
                  ) -> dict[str, np.ndarray]:
  """(prompt ids, response ids) pairs -> numpy arrays for `learner.sft_loss`, prompt and response lengths bucketed.

  Returns prompt_ids_bp / prompt_mask_bp (left-padded), response_ids_bt / response_mask_bt (right-padded) with
  B = `rows` (>= len(examples); padding rows have an all-false response mask and so no weight).
  """
  if len(examples) > rows:
    raise ValueError(f"pack_examples: {len(examples)} examples do not fit {rows} rows")
  p = length_bucket(max(len(pr) for pr, _ in examples), min_prompt_bucket, prompt_bucket_multiple)
  t = bucket_size(max(len(r) for _, r in examples), min_response_bucket)
  prompt_ids = np.full((rows, p), pad_id, np.int32)
  prompt_mask = np.zeros((rows, p), bool)
  response_ids = np.full((rows, t), pad_id, np.int32)
  response_mask = np.zeros((rows, t), bool)
  prompt_mask[len(examples):, -1] = True  # Padding rows: one "token" so no attention row is empty.
  for i, (prompt, response) in enumerate(examples):
    prompt_ids[i, p - len(prompt):] = prompt
    prompt_mask[i, p - len(prompt):] = True
    response_ids[i, :len(response)] = response
    response_mask[i, :len(response)] = True
  return dict(prompt_ids_bp=prompt_ids, prompt_mask_bp=prompt_mask, response_ids_bt=response_ids,
              response_mask_bt=response_mask)


def sequence_bucket(examples: Sequence[tuple[Sequence[int], Sequence[int]]], multiple: int = 16) -> int:
  """The longest prompt + response of `examples`, rounded up to `multiple`: the `seq_len` that `pack_examples`'
  rows need (their prompt and response buckets are maxima over different rows, so P + T is often 10-25% longer)."""
  return length_bucket(max(len(p) + len(r) for p, r in examples), multiple, multiple)


def export_path(config) -> str:
  """Where mode=sft writes its Hugging Face directory: config.sft.export_path, else <workdir>/hf."""
  return config.sft.get("export_path") or os.path.join(config.workdir, "hf")


def run(config, progress: bool = True) -> dict:
  """Entry point of mode=sft. Trains, checkpoints and exports; returns a summary.

  Args:
    config: the mode=sft config.
    progress: show a progress bar.

  Returns:
    {"first_loss", "last_loss", "steps", "examples", "truncated", "export_path"} (losses in nats per token, the
    first and last step of this run).

  Raises:
    errors.Preempted after SIGTERM (the current step is checkpointed first; nothing is exported), and
    loop.NonFiniteError after config.train.max_nonfinite_steps non-finite updates in a row.
  """
  c, s = config, config.sft
  os.makedirs(c.workdir, exist_ok=True)
  records = read_trajectories(s.path)  # Fails fast on bad data before the model loads.
  if s.get("schedule", "constant") not in ("constant", "cosine"):
    raise ConfigError(f"config.sft.schedule: {s.schedule!r} is not one of constant, cosine")
  mesh = components.setup_mesh(c)
  policy, tokenizer = components.load_policy(c, mesh)
  if not tokenizer.eos_token_ids:
    raise ConfigError("config.model.tokenizer: the tokenizer has no EOS token to end SFT responses")
  examples, truncated = [], 0
  for record in records:
    prompt, response, cut = tokenize_trajectory(tokenizer, record, max_prompt_len=c.rollout.max_prompt_len,
                                                max_response_len=c.rollout.max_new_tokens)
    examples.append((prompt, response))
    truncated += cut
  if truncated:
    logger.warning("sft: %d of %d trajectories were cut to max_prompt_len=%d / max_new_tokens=%d", truncated,
                   len(examples), c.rollout.max_prompt_len, c.rollout.max_new_tokens)
  num_steps = s.get("num_steps", 0) or s.epochs * math.ceil(len(examples) / s.batch_size)
  learner = Learner.create(c, policy, mesh, kind="sft", num_steps=num_steps)
  micro = sft_micro_batch_size(c)
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = int(np.lcm(micro, dp)) * math.ceil(s.batch_size / int(np.lcm(micro, dp)))
  training = loop.TrainingRun(c, learner, mesh, progress=console.bar if progress else None, meta={"mode": "sft"})
  first = None

  def step_fn(step: int) -> dict:
    nonlocal first
    batch = batching.batch_for_step(examples, step, s.batch_size, c.seed)
    packed = pack_examples(batch, rows=rows, pad_id=tokenizer.pad_token_id,
                           min_prompt_bucket=c.rollout.get("min_prompt_bucket", 16),
                           prompt_bucket_multiple=c.rollout.get("prompt_bucket_multiple", 0))
    metrics = {f"sft/{k}": v for k, v in learner.step(packed, seq_len=sequence_bucket(batch)).items()}
    first = metrics["sft/loss"] if first is None else first
    return metrics

  def batch_labels(step: int) -> str:  # The numbers (from 1, blank lines not counted) of the step's trajectories.
    numbers = batching.batch_for_step(range(1, len(examples) + 1), step, s.batch_size, c.seed)
    return f"trajectories {' '.join(map(str, numbers))} of {s.path}"

  last = training.run_steps(step_fn, num_steps, checkpoint_every=s.get("checkpoint_every", 0), desc="sft",
                            update_prefix="sft/", bar_keys=("sft/loss",), batch_labels=batch_labels).get("sft/loss")
  model = learner.policy()
  if c.model.lora_rank:
    model = lora_lib.merge_lora(model)
  out = export_path(c)
  # Replaces this run's own previous export (a rerun or resume); anything else at `out` is still refused.
  export_pretrained(model, out, tokenizer_dir=components.tokenizer_dir(c), overwrite=True)
  logger.info("sft: %d steps, loss %s -> %s; model: %s", num_steps - training.start_step,
              *(f"{v:.3f}" if v is not None else "-" for v in (first, last)), out)
  return {"first_loss": first, "last_loss": last, "steps": num_steps, "examples": len(examples),
          "truncated": truncated, "export_path": out}
