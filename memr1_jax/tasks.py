"""Tasks: what a dataset brings to the library beyond its conversations.

`config.task` names the task of a run. "" is the benchmark dataset of config.data (LoCoMo with the paper's split,
LongMemEval, MSC: `DatasetTask`). Any other value is the import path of a module that plugs a task into every mode
without the library naming it (the CPU demo's synthetic task is `memr1_jax.demo`). Such a module defines:

  make_task(config) -> Task        the task of a run;
  SECTION: str                     optional: the name of the task's own config section, config.<SECTION>, with
  section_config() -> ConfigDict     its default fields (checked like the library's own: unknown fields are errors);
  validate(config, source)         optional: checks of that section, raising errors.ConfigError;
  MODES: dict[str, str]            optional: extra modes, mode name -> module path with a `run(config)`.

A `Task` supplies the conversations of each split and may supply a model-free fact extractor
(config.memory.extraction="task"), scripted policies the config can name (config.train.manager_answerer), and
extra metrics of training episodes and of built banks.
"""

from __future__ import annotations

import importlib
import os
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from memr1_jax import data
from memr1_jax.data.schema import Conversation
from memr1_jax.errors import ConfigError

if TYPE_CHECKING:  # Types only: main reads task modules before JAX (which the runner imports) is loaded.
  from memr1_jax.episodes.policy import ChatPolicy
  from memr1_jax.episodes.runner import BankStats, Experience

# The benchmark datasets of a run without a task module, and their default file under config.data.data_dir.
DATASETS = {"locomo": "locomo10.json", "longmemeval": "longmemeval_oracle.json", "msc": "msc_self_instruct.jsonl"}


class Task:
  """The default hooks: no extractor, no scripted policies, no extra metrics. Subclasses implement `splits`."""

  def splits(self) -> dict[str, list[Conversation]]:
    """{"train", "validation", "test"} -> conversations."""
    raise NotImplementedError

  def fact_extractor(self) -> Callable | None:
    """The task's model-free extractor ((session, turn) pairs -> one `agents.extraction.Extraction` each), used
    when config.memory.extraction="task"; None: the task has none."""
    return None

  def scripted_policy(self, name: str) -> ChatPolicy | None:
    """The scripted policy called `name` (e.g. a frozen answerer for config.train.manager_answerer); None: unknown."""
    del name
    return None

  def experience_metrics(self, experiences: Sequence[Experience], conversations: Sequence[Conversation]) -> dict:
    """Extra rollout metrics of one training step's `experiences` over `conversations` (logged as rollout/<key>)."""
    del experiences, conversations
    return {}

  def bank_metrics(self, conversations: Sequence[Conversation], stats: BankStats) -> dict:
    """Extra evaluation metrics ("eval/<key>") of banks a manager built over `conversations` (`stats`)."""
    del conversations, stats
    return {}


class DatasetTask(Task):
  """A benchmark file of config.data: LoCoMo (the paper's split), LongMemEval or MSC."""

  def __init__(self, config):
    d = config.data
    if d.name not in DATASETS:
      raise ConfigError(f"config.data.name={d.name!r}: expected one of {', '.join(DATASETS)} (or set config.task)")
    self.name, self.include_adversarial = d.name, d.include_adversarial
    self.path = d.path or os.path.join(d.data_dir, d.name, DATASETS[d.name])

  def splits(self) -> dict[str, list[Conversation]]:
    if not os.path.exists(self.path):
      raise ConfigError(f"config.data.path: {self.path!r} does not exist (download the dataset, then point "
                        "config.data.path at the file)")
    if self.name == "locomo":
      convs = data.read_locomo(self.path)
      return {s: data.locomo_split(convs, s, include_adversarial=self.include_adversarial)
              for s in ("train", "validation", "test")}
    # LongMemEval's oracle sessions are not listed in time order: sorted by date, as the manager walks them.
    convs = (data.read_longmemeval(self.path, chronological=True) if self.name == "longmemeval"
             else data.read_msc(self.path))
    # Zero-shot benchmarks (the paper evaluates a LoCoMo-trained pair on them): the test split is every item. They
    # have no RL split; the first item (train) and the second (validation) serve smoke runs only, and are also in test.
    return {"train": convs[:1], "validation": convs[1:2], "test": convs}


def task_module(config) -> types.ModuleType | None:
  """The module config.task names (None for ""); a ConfigError naming config.task when it cannot be imported."""
  if not config.task:
    return None
  try:
    return importlib.import_module(config.task)
  except ImportError as e:
    raise ConfigError(f"config.task={config.task!r}: cannot import it ({e})") from None


def load(config) -> Task:
  """The task of `config`: `DatasetTask(config)` or the task module's `make_task(config)`."""
  module = task_module(config)
  return DatasetTask(config) if module is None else module.make_task(config)
