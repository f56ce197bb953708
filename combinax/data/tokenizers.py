"""Tokenizers with one small interface, and a trained, cached vocabulary for each bundled corpus.

Every tokenizer has `encode(str) -> int32 array`, `decode(ids) -> str` (padding and special tokens dropped),
`vocab_size`, `pad_id` (0), `eos_id`, `save(path)` and the class method `load(path)`:

- `CharTokenizer`: one id per character (built from texts); ids 0 pad, 1 EOS, 2 unknown.
- `SentencePieceTokenizer`: unigram or BPE pieces trained with the `sentencepiece` package; 0 pad, 1 EOS, 2 unk.
- `BPETokenizer` (byte-level BPE) and `WordPieceTokenizer` (BERT `vocab.txt` or `tokenizer.json`), in
  `combinax.data.hf_tokenizers`, on the `tokenizers` package.

`tokenizer_for("kjv")` trains a vocabulary on a bundled corpus the first time and caches it under
`$COMBINAX_CACHE/tokenizers` (default `~/.cache/combinax/tokenizers`); later calls load it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from combinax.data.base import DataError
from combinax.store.rundir import write_atomically

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class Tokenizer:
  """The common interface; subclasses implement `encode`, `decode`, `vocab_size`, `save` and `load`."""

  pad_id = PAD_ID
  eos_id = EOS_ID

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def encode(self, text: str) -> np.ndarray:
    raise NotImplementedError

  def decode(self, ids) -> str:
    raise NotImplementedError

  def encode_batch(self, texts: Iterable[str]) -> list[np.ndarray]:
    """`encode` of each text."""
    return [self.encode(t) for t in texts]

  def save(self, path) -> None:
    raise NotImplementedError

  @classmethod
  def load(cls, path) -> "Tokenizer":
    raise NotImplementedError

  def _ids(self, ids) -> list[int]:
    """`ids` as a list of ints, without padding and EOS."""
    return [int(i) for i in np.asarray(ids).reshape(-1) if i != self.pad_id and i != self.eos_id]

  def __repr__(self) -> str:
    return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
  """One id per character: 0 pad, 1 EOS, 2 unknown, then `chars` in order from 3.

  >>> from combinax import data
  >>> tok = data.CharTokenizer.train(["hello", "world"])
  >>> ids = tok.encode("hold!")
  >>> ids, tok.decode(ids), tok.vocab_size
  (array([5, 7, 6, 3, 2], dtype=int32), 'hold', 10)
  """

  unk_id = UNK_ID

  def __init__(self, chars: str):
    if len(set(chars)) != len(chars):
      raise DataError("CharTokenizer: characters must be distinct")
    self.chars = chars
    self._ids_of = {c: i + 3 for i, c in enumerate(chars)}

  @classmethod
  def train(cls, texts: Iterable[str]) -> "CharTokenizer":
    """The characters seen in `texts`, sorted."""
    seen = set()
    for text in texts:
      seen.update(text)
    return cls("".join(sorted(seen)))

  @property
  def vocab_size(self) -> int:
    return len(self.chars) + 3

  def encode(self, text: str) -> np.ndarray:
    get = self._ids_of.get
    return np.fromiter((get(c, UNK_ID) for c in text), np.int32, len(text))

  def decode(self, ids) -> str:
    ids = self._ids(ids)
    bad = [i for i in ids if i >= self.vocab_size or i < 0]
    if bad:
      raise DataError(f"CharTokenizer: id {bad[0]} is outside its {self.vocab_size} ids (a model with a larger "
                      "vocabulary than its tokenizer?)")
    return "".join(self.chars[i - 3] for i in ids if i >= 3)

  def save(self, path) -> None:
    save_json(path, "char", chars=self.chars)

  @classmethod
  def load(cls, path) -> "CharTokenizer":
    return cls(load_json(path, "char", cls.__name__)["chars"])


def save_json(path, kind: str, **fields) -> None:
  """A tokenizer's JSON file (written atomically): {"type": kind, **fields}."""
  write_atomically(path, json.dumps({"type": kind, **fields}).encode("utf-8"))


def load_json(path, kind: str, name: str) -> dict:
  """The fields of a tokenizer's JSON file written by `save_json(path, kind, ...)`; a DataError naming the file
  and the tokenizer class `name` if it is of another kind."""
  config = json.loads(Path(path).read_text(encoding="utf-8"))
  if config.get("type") != kind:
    raise DataError(f"{path}: not a {name} file")
  return config


def _sentencepiece():
  try:
    import sentencepiece
  except ImportError as e:
    raise DataError(f"SentencePieceTokenizer needs the sentencepiece package: pip install sentencepiece ({e})") \
        from None
  return sentencepiece


class SentencePieceTokenizer(Tokenizer):
  """SentencePiece pieces (unigram or BPE) from a trained model; 0 pad, 1 EOS, 2 unknown.

  >>> from combinax import data
  >>> texts = ["the lord is my shepherd", "i shall not want"] * 20
  >>> tok = data.SentencePieceTokenizer.train(texts, vocab_size=40)
  >>> tok.decode(tok.encode("the lord shall want"))
  'the lord shall want'
  """

  def __init__(self, model_proto: bytes):
    spm = _sentencepiece()
    self.model_proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    self.eos_id = self._sp.eos_id()
    self.pad_id = self._sp.pad_id()
    self.unk_id = self._sp.unk_id()

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int = 8192, model_type: str = "unigram",
            character_coverage: float = 1.0, max_sentence_length: int = 1 << 16,
            num_threads: int = 2) -> "SentencePieceTokenizer":
    """Trains on `texts`; `vocab_size` is an upper bound (a small corpus gets fewer pieces, not an error)."""
    spm = _sentencepiece()
    model = io.BytesIO()
    texts = (t for t in texts if t.strip())
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=texts, model_writer=model, vocab_size=vocab_size, model_type=model_type,
          character_coverage=character_coverage, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
          hard_vocab_limit=False, max_sentence_length=max_sentence_length, num_threads=num_threads,
          shuffle_input_sentence=False, minloglevel=2)
    except RuntimeError as e:
      raise DataError(f"SentencePiece training failed: {e}") from None
    return cls(model.getvalue())

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def encode_batch(self, texts):
    return [np.asarray(ids, np.int32) for ids in self._sp.encode(list(texts))]

  def decode(self, ids) -> str:
    return self._sp.decode(self._ids(ids))

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def save(self, path) -> None:
    write_atomically(path, self.model_proto)

  @classmethod
  def load(cls, path) -> "SentencePieceTokenizer":
    try:
      return cls(Path(path).read_bytes())
    except (OSError, RuntimeError) as e:
      raise DataError(f"{path}: not a readable SentencePiece model ({e})") from None


def load_tokenizer(path) -> Tokenizer:
  """Any tokenizer saved by this module, or a BERT `vocab.txt` / Hugging Face `tokenizer.json` (or their folder)."""
  path = Path(path)
  if path.is_dir():
    for name in ("tokenizer.json", "vocab.txt", "spm.model"):
      if (path / name).exists():
        return load_tokenizer(path / name)
    raise DataError(f"{path}: no tokenizer.json, vocab.txt or spm.model in this folder")
  if not path.exists():
    raise DataError(f"{path}: no such tokenizer file")
  if path.suffix == ".model":
    return SentencePieceTokenizer.load(path)
  if path.suffix == ".txt":
    from combinax.data.hf_tokenizers import WordPieceTokenizer
    return WordPieceTokenizer.load(path)
  if path.suffix == ".json":
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("type") == "char":
      return CharTokenizer(config["chars"])
    from combinax.data.hf_tokenizers import BPETokenizer, WordPieceTokenizer
    kind = (config.get("model") or {}).get("type")
    if kind == "WordPiece":
      return WordPieceTokenizer.load(path)
    if kind == "BPE":
      return BPETokenizer.load(path)
    raise DataError(f"{path}: tokenizer model {kind!r} is not supported (WordPiece, BPE)")
  raise DataError(f"{path}: unknown tokenizer file (expected .model, .json or vocab .txt)")


KINDS = {"sentencepiece": ".model", "bpe": ".json", "wordpiece": ".json", "char": ".json"}


def cache_root() -> Path:
  """combinax's cache: `$COMBINAX_CACHE`, else `~/.cache/combinax`."""
  return Path(os.environ.get("COMBINAX_CACHE") or Path.home() / ".cache" / "combinax")


def cache_dir() -> Path:
  """Where trained vocabularies are cached: `<cache_root()>/tokenizers`."""
  return cache_root() / "tokenizers"


TEXT_FIELDS = {"kjv": ("text",), "imdb_sentiment": ("text",), "bible_en_es": ("en", "es")}


def corpus_texts(name: str, split: str = "train") -> list[str]:
  """The text of a bundled corpus a vocabulary is trained on (both sides of a translation corpus).

  The fields are those of `TEXT_FIELDS`, else `"text"` when the examples have one, else every string field.
  """
  from combinax.data.sources import check_corpus
  examples = check_corpus(name).load(name, split=split)
  fields = TEXT_FIELDS.get(name) or (("text",) if "text" in examples[0] else
                                     tuple(k for k, v in examples[0].items() if isinstance(v, str)))
  return [e[f] for e in examples for f in fields if e[f].strip()]


def train_tokenizer(kind: str, texts: list[str], vocab_size: int) -> Tokenizer:
  """A tokenizer of `kind` ("sentencepiece", "bpe", "wordpiece", "char") trained on `texts`."""
  if kind == "sentencepiece":
    return SentencePieceTokenizer.train(texts, vocab_size)
  if kind == "char":
    return CharTokenizer.train(texts)
  from combinax.data.hf_tokenizers import BPETokenizer, WordPieceTokenizer
  if kind == "bpe":
    return BPETokenizer.train(texts, vocab_size)
  if kind == "wordpiece":
    return WordPieceTokenizer.train(texts, vocab_size)
  raise DataError(f"unknown tokenizer kind {kind!r}; one of {sorted(KINDS)}")


def tokenizer_for(corpus: str, kind: str = "sentencepiece", vocab_size: int = 8192) -> Tokenizer:
  """The tokenizer of `kind` trained on bundled `corpus` (its train split): trained once, then loaded from cache.

  The cache file is named after the corpus, kind, size and a hash of `corpora.info(corpus)`, so a changed corpus
  gets a new vocabulary. Set `COMBINAX_CACHE` to move the cache (tests point it at a temporary folder).
  """
  if kind not in KINDS:
    raise DataError(f"unknown tokenizer kind {kind!r}; one of {sorted(KINDS)}")
  from combinax.data.sources import check_corpus
  info = check_corpus(corpus).info(corpus)
  digest = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:10]
  size = "" if kind == "char" else f"-{vocab_size}"
  path = cache_dir() / f"{corpus}-{kind}{size}-{digest}{KINDS[kind]}"
  if path.exists():
    return load_tokenizer(path)
  tokenizer = train_tokenizer(kind, corpus_texts(corpus), vocab_size)
  tokenizer.save(path)
  return tokenizer
