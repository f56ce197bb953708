"""Tokenizers share one interface, round-trip text, save and load, and cache one vocabulary per corpus."""

import numpy as np
import pytest

from combinax import data
from combinax.data import tokenizers as tokenizers_lib
from data_helpers import KJV_LIKE, install_fake_corpora

TEXTS = [e["text"] for e in KJV_LIKE] * 6


@pytest.fixture(scope="module")
def trained():
  return {
      "char": data.CharTokenizer.train(TEXTS),
      "sentencepiece": data.SentencePieceTokenizer.train(TEXTS, vocab_size=60),
      "bpe": data.BPETokenizer.train(TEXTS, vocab_size=300),
      "wordpiece": data.WordPieceTokenizer.train(TEXTS, vocab_size=120),
  }


@pytest.mark.parametrize("kind", ["char", "sentencepiece", "bpe", "wordpiece"])
def test_common_interface_round_trip_and_save_load(trained, kind, tmp_path):
  tok = trained[kind]
  text = "And God saw the light, that it was good."
  ids = tok.encode(text)
  assert isinstance(ids, np.ndarray) and ids.dtype == np.int32 and ids.ndim == 1
  assert ids.min() >= 0 and ids.max() < tok.vocab_size
  expected = text.lower() if kind == "wordpiece" else text
  assert tok.decode(ids) == expected
  assert tok.pad_id == 0 and tok.eos_id not in (None, 0)
  assert tok.decode(np.concatenate([ids, [tok.eos_id, tok.pad_id, tok.pad_id]])) == expected
  path = tmp_path / ("tok.model" if kind == "sentencepiece" else "tok.json")
  tok.save(path)
  loaded = data.load_tokenizer(path)
  assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(loaded.encode(text), ids)
  np.testing.assert_array_equal(np.concatenate(tok.encode_batch([text, text])), np.concatenate([ids, ids]))


def test_special_ids(trained):
  sp = trained["sentencepiece"]
  assert (sp.pad_id, sp.eos_id, sp.unk_id) == (0, 1, 2)
  assert sp.id_to_piece(0) == "<pad>" and sp.id_to_piece(1) == "</s>"
  bpe = trained["bpe"]
  assert (bpe.pad_id, bpe.eos_id) == (0, 1) and bpe.id_to_token(1) == "</s>"
  wp = trained["wordpiece"]
  assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.eos_id, wp.mask_id) == (0, 1, 2, 3, 4)
  ids = wp.encode("light")
  assert ids[0] == wp.cls_id and ids[-1] == wp.eos_id


def test_byte_level_bpe_encodes_anything(trained):
  bpe = trained["bpe"]
  text = "naïve façade — 東京 🙂"
  assert bpe.decode(bpe.encode(text)) == text


def test_char_tokenizer_unknown_and_errors(tmp_path):
  tok = data.CharTokenizer("ab")
  np.testing.assert_array_equal(tok.encode("abz"), [3, 4, 2])
  assert tok.decode([3, 2, 4]) == "ab"
  with pytest.raises(data.DataError, match="distinct"):
    data.CharTokenizer("aa")


def test_wordpiece_from_bert_vocab_txt_and_tokenizer_json(tmp_path):
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "in", "the", "begin", "##ning", "god", ",", "."]
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(tokens) + "\n")
  tok = data.load_tokenizer(vocab)
  assert isinstance(tok, data.WordPieceTokenizer) and tok.vocab_size == len(tokens)
  ids = tok.encode("In the Beginning, GOD.")
  assert [tokens[i] for i in ids] == ["[CLS]", "in", "the", "begin", "##ning", ",", "god", ".", "[SEP]"]
  assert tok.decode(ids) == "in the beginning, god."
  np.testing.assert_array_equal(tok.encode("xyz"), [2, 1, 3])
  cased = data.WordPieceTokenizer.load(vocab, lowercase=False)
  assert [tokens[i] for i in cased.encode("The the")] == ["[CLS]", "[UNK]", "the", "[SEP]"]
  bare = data.WordPieceTokenizer.load(vocab, add_special_tokens=False)
  assert [tokens[i] for i in bare.encode("the")] == ["the"]
  tok.save(tmp_path / "tokenizer.json")
  again = data.load_tokenizer(tmp_path)          # a folder: tokenizer.json first
  np.testing.assert_array_equal(again.encode("In the Beginning, GOD."), ids)
  import tokenizers
  padded = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  padded.enable_padding(length=20)
  padded.save(str(tmp_path / "padded.json"))
  np.testing.assert_array_equal(data.load_tokenizer(tmp_path / "padded.json").encode("In the Beginning, GOD."), ids)
  tok.save_vocab(tmp_path / "copy.txt")
  assert (tmp_path / "copy.txt").read_text().split("\n")[:len(tokens)] == tokens


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(data.DataError, match="no such tokenizer file"):
    data.load_tokenizer(tmp_path / "missing.model")
  with pytest.raises(data.DataError, match="no tokenizer.json, vocab.txt or spm.model"):
    data.load_tokenizer(tmp_path)
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"not a model")
  with pytest.raises(data.DataError, match="not a readable SentencePiece model"):
    data.load_tokenizer(bad)
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\nhello\n")
  with pytest.raises(data.DataError, match=r"has no \[UNK\] token"):
    data.load_tokenizer(vocab)


def test_tokenizer_for_trains_once_then_loads_from_the_cache(monkeypatch, tmp_path):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path / "cache"))
  fake = install_fake_corpora(monkeypatch)
  tok = data.tokenizer_for("kjv", vocab_size=64)
  files = list((tmp_path / "cache" / "tokenizers").iterdir())
  assert len(files) == 1 and files[0].name.startswith("kjv-sentencepiece-64-") and files[0].suffix == ".model"
  assert fake.calls == [("kjv", "train")]

  def no_training(*args, **kwargs):
    raise AssertionError("trained again instead of loading the cache")

  monkeypatch.setattr(tokenizers_lib, "train_tokenizer", no_training)
  again = data.tokenizer_for("kjv", vocab_size=64)
  np.testing.assert_array_equal(again.encode(TEXTS[0]), tok.encode(TEXTS[0]))
  assert fake.calls == [("kjv", "train")]


@pytest.mark.parametrize("kind", ["char", "bpe", "wordpiece"])
def test_tokenizer_for_other_kinds_and_translation_corpora(monkeypatch, tmp_path, kind):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  install_fake_corpora(monkeypatch)
  tok = data.tokenizer_for("bible_en_es", kind=kind, vocab_size=200)
  assert tok.decode(tok.encode("la tierra")) == "la tierra"         # Spanish was in the training text too
  assert type(data.tokenizer_for("bible_en_es", kind=kind, vocab_size=200)) is type(tok)


def test_tokenizer_for_errors(monkeypatch, tmp_path):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  install_fake_corpora(monkeypatch)
  with pytest.raises(data.DataError, match=r"unknown corpus 'kvj'; available: \['bible_en_es', 'kjv'\]"):
    data.tokenizer_for("kvj")
  with pytest.raises(data.DataError, match="unknown tokenizer kind 'words'"):
    data.tokenizer_for("kjv", kind="words")


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
  monkeypatch.delenv("COMBINAX_CACHE", raising=False)
  assert tokenizers_lib.cache_dir().parts[-3:] == (".cache", "combinax", "tokenizers")
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  assert tokenizers_lib.cache_dir() == tmp_path / "tokenizers"
