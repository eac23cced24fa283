"""tensorflow-datasets builders for LoCoMo, LongMemEval and MSC-Self-Instruct, without TensorFlow.

Each builder reads its raw file from the manual directory (`manual_dir`) when the file is there,
and otherwise downloads it from the public source; it writes one example per conversation,
`{"sample_id": Text, "conversation": Text}`, where `conversation` is the `Conversation` record as
JSON (`conversation_to_json`), into a single split "full" in file order (shuffling disabled).

tensorflow-datasets 4.9.10 works here without TensorFlow only for `array_record` output read
through `builder.as_data_source()` / `tfds.data_source(...)`; `tfds.load`, `as_dataset` and
tfrecord output import TensorFlow. `load_conversations` does the supported path:

  convs = load_conversations("locomo", data_dir="/tmp/tfds", manual_dir="../shared/data/locomo")

Builders (name, configs, manual file names, download source):
- "locomo" (config "locomo10"): `locomo10.json`, snap-research/locomo on GitHub at a fixed commit.
- "longmemeval": configs "s", "m", "oracle" take the official layout (`longmemeval_s.json` or
  `longmemeval_s_cleaned.json`, ...; download: Hugging Face xiaowu0162/longmemeval-cleaned);
  config "oracle_sample_hydrabuild" takes the re-shaped 16-question sample
  (`longmemeval_oracle_sample_hydrabuild.json`; download: Charles-ace/hydrabuild at a fixed commit).
  Sessions are sorted by date (`read_longmemeval(..., chronological=True)`).
- "msc" (config "self_instruct"): `msc_self_instruct.jsonl`, Hugging Face MemGPT/MSC-Self-Instruct.

Importing this module imports tensorflow_datasets (slow, about a second): `memr1_jax.data` imports
it lazily.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

from memr1_jax.data import locomo
from memr1_jax.data import longmemeval
from memr1_jax.data import msc
from memr1_jax.data import schema

FULL_SPLIT = "full"
FILE_FORMAT = "array_record"
LOCOMO_URL = ("https://raw.githubusercontent.com/snap-research/locomo/"
              "3eb6f2c585f5e1699204e3c3bdf7adc5c28cb376/data/locomo10.json")
LONGMEMEVAL_URL = "https://huggingface.co/datasets/xiaowu0162/longmemeval-cleaned/resolve/main/"
HYDRABUILD_URL = ("https://raw.githubusercontent.com/Charles-ace/hydrabuild/"
                  "1a00f9bffb5249610bdb0018306f16a8cf5e424d/data/longmemeval_oracle_sample.json")
MSC_URL = ("https://huggingface.co/datasets/MemGPT/MSC-Self-Instruct/resolve/main/"
           "msc_self_instruct.jsonl")


def conversation_to_json(conversation: schema.Conversation) -> str:
  """Returns `conversation` as a JSON string (all fields; tuples become lists)."""
  return json.dumps(dataclasses.asdict(conversation), ensure_ascii=False)


def conversation_from_json(text: str | bytes) -> schema.Conversation:
  """Inverse of `conversation_to_json`: rebuilds the frozen `Conversation` record."""
  record = json.loads(text)
  sessions = tuple(
      schema.Session(index=s["index"], date_time=s["date_time"],
                     turns=tuple(schema.Turn(**t) for t in s["turns"]))
      for s in record["sessions"])
  qa = tuple(schema.QA(**{**q, "evidence": tuple(q["evidence"])}) for q in record["qa"])
  return schema.Conversation(sample_id=record["sample_id"], speaker_a=record["speaker_a"],
                             speaker_b=record["speaker_b"], sessions=sessions, qa=qa)


@dataclasses.dataclass(eq=False)
class RawFileConfig(tfds.core.BuilderConfig):
  """A raw data file: names accepted in the manual directory, its download URL, its reader."""

  filenames: tuple[str, ...] = ()
  url: str = ""
  reader: Callable[[str], list[schema.Conversation]] | None = None


class _ConversationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the conversations of one raw file as JSON strings, one example each, in file order."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One example per conversation, serialised as JSON."}
  # No checksums file beside this module. tfds 4.9.10 would look for one through `code_path`, which
  # imports `importlib_resources`: etils 1.15 no longer pulls that package in (ModuleNotFoundError).
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "sample_id": tfds.features.Text(),
            "conversation": tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    config = self.builder_config
    path = _manual_file(dl_manager, config.filenames)
    if path is None:
      missing = (f"{self.name}/{config.name}: none of {config.filenames} in the manual directory "
                 f"and downloading {config.url} failed")
      if not _reachable(config.url):  # Fail now: tfds retries a refused connection for minutes.
        raise FileNotFoundError(
            f"{missing} (host unreachable).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      try:
        path = dl_manager.download(config.url)
      except Exception as err:  # HTTP or network error: say where the file should go instead.
        raise FileNotFoundError(f"{missing} ({err}).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}") from err
    return {FULL_SPLIT: self._generate_examples(config.reader(os.fspath(path)))}

  def _generate_examples(self, conversations: Sequence[schema.Conversation]
                         ) -> Iterator[tuple[str, dict[str, str]]]:
    for k, conversation in enumerate(conversations):
      yield f"{k:08d}", {"sample_id": conversation.sample_id,
                         "conversation": conversation_to_json(conversation)}


def _manual_file(dl_manager: tfds.download.DownloadManager,
                 filenames: Sequence[str]) -> os.PathLike[str] | None:
  """The first of `filenames` present in the manual directory, or None (also when it is unset)."""
  try:
    manual_dir = dl_manager.manual_dir
  except AssertionError:  # tfds: manual directory not given, missing or empty.
    return None
  for filename in filenames:
    if (manual_dir / filename).exists():
      return manual_dir / filename
  return None


def _reachable(url: str, timeout_s: float = 5.0) -> bool:
  """Whether a TCP connection to the URL's host opens (always True when a proxy is configured)."""
  if urllib.request.getproxies():
    return True
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=timeout_s):
      return True
  except OSError:
    return False


def _read_longmemeval_sorted(path: str) -> list[schema.Conversation]:
  return longmemeval.read_longmemeval(path, chronological=True)


class Locomo(_ConversationBuilder):
  """LoCoMo (Maharana et al., ACL 2024): 10 long two-speaker conversations with 1986 questions."""

  name = "locomo"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put locomo10.json (github.com/snap-research/locomo, data/locomo10.json) in the manual "
      "directory.")
  BUILDER_CONFIGS = [RawFileConfig(name="locomo10", filenames=("locomo10.json",), url=LOCOMO_URL,
                                   reader=locomo.read_locomo)]


class Longmemeval(_ConversationBuilder):
  """LongMemEval (Wu et al., ICLR 2025): one chat-assistant history and question per example."""

  name = "longmemeval"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put longmemeval_s.json, longmemeval_m.json or longmemeval_oracle.json (or their *_cleaned "
      "versions; huggingface.co/datasets/xiaowu0162/longmemeval-cleaned), or "
      "longmemeval_oracle_sample_hydrabuild.json, in the manual directory.")
  BUILDER_CONFIGS = [
      RawFileConfig(name="s", filenames=("longmemeval_s.json", "longmemeval_s_cleaned.json"),
                    url=LONGMEMEVAL_URL + "longmemeval_s_cleaned.json",
                    reader=_read_longmemeval_sorted),
      RawFileConfig(name="m", filenames=("longmemeval_m.json", "longmemeval_m_cleaned.json"),
                    url=LONGMEMEVAL_URL + "longmemeval_m_cleaned.json",
                    reader=_read_longmemeval_sorted),
      RawFileConfig(name="oracle", filenames=("longmemeval_oracle.json",),
                    url=LONGMEMEVAL_URL + "longmemeval_oracle.json",
                    reader=_read_longmemeval_sorted),
      RawFileConfig(name="oracle_sample_hydrabuild",
                    filenames=("longmemeval_oracle_sample_hydrabuild.json",
                               "longmemeval_oracle_sample.json"),
                    url=HYDRABUILD_URL, reader=_read_longmemeval_sorted),
  ]


class Msc(_ConversationBuilder):
  """MemGPT's MSC-Self-Instruct: 500 Multi-Session Chat histories, each with a recall question."""

  name = "msc"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put msc_self_instruct.jsonl (huggingface.co/datasets/MemGPT/MSC-Self-Instruct) in the "
      "manual directory.")
  BUILDER_CONFIGS = [RawFileConfig(name="self_instruct", filenames=("msc_self_instruct.jsonl",),
                                   url=MSC_URL, reader=msc.read_msc)]


BUILDERS = {builder.name: builder for builder in (Locomo, Longmemeval, Msc)}


def load_conversations(name: str, data_dir: str | os.PathLike[str],
                       manual_dir: str | os.PathLike[str] | None = None,
                       config: str | RawFileConfig | None = None) -> list[schema.Conversation]:
  """Prepares builder `name` ("locomo" | "longmemeval" | "msc") under `data_dir` if needed and
  returns its conversations, in file order, read back through `builder.as_data_source()`.

  `manual_dir` holds the raw file (without it, or without the file, the builder downloads it);
  `config` picks a builder config by name (default: the first, e.g. LongMemEval "s") or is a
  `RawFileConfig` (e.g. one with another download URL).
  """
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
  builder = BUILDERS[name](data_dir=os.fspath(data_dir), config=config, file_format=FILE_FORMAT)
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(manual_dir), try_download_gcs=False)
  builder.download_and_prepare(download_config=download_config)
  source = builder.as_data_source(split=FULL_SPLIT)
  return [conversation_from_json(source[k]["conversation"]) for k in range(len(source))]
