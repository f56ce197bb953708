"""Byte-level BPE and BERT WordPiece tokenizers on the `tokenizers` package, with `combinax.data`'s interface.

`WordPieceTokenizer.load` reads a BERT `vocab.txt` (with BERT's normalizer and `[CLS] ... [SEP]` framing) or a
Hugging Face `tokenizer.json`, so a pretrained encoder (e.g. all-MiniLM-L6-v2) gets the exact ids it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from combinax.data.base import DataError
from combinax.data.tokenizers import Tokenizer
from combinax.store.rundir import write_atomically


def tokenizers_package():
  """The `tokenizers` package (imported when first needed: it is optional), or a DataError saying how to get it."""
  try:
    import tokenizers
  except ImportError as e:
    raise DataError(f"BPETokenizer and WordPieceTokenizer need the tokenizers package: pip install tokenizers "
                    f"({e})") from None
  return tokenizers


class _HFTokenizer(Tokenizer):
  """A `tokenizers.Tokenizer` behind the common interface."""

  def __init__(self, tokenizer, add_special_tokens: bool = False):
    tokenizer.no_padding()   # the pipeline pads (Batch, BucketByLength, PadToLength); a file's truncation is kept
    self._tok = tokenizer
    # ... but not when a text is cut into pieces: all-MiniLM-L6-v2's file truncates every text to 128 tokens.
    self._whole = tokenizer
    if tokenizer.truncation is not None:
      self._whole = type(tokenizer).from_str(tokenizer.to_str())
      self._whole.no_truncation()
    self.add_special_tokens = add_special_tokens

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self._tok.id_to_token(int(i))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=self.add_special_tokens).ids, np.int32)

  def encode_batch(self, texts):
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=self.add_special_tokens)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, the (start, end) character span of each id in `text`), without special tokens and never truncated:
    for cutting a text into pieces of so many tokens that keep their own characters (`combinax.retrieval`)."""
    encoding = self._whole.encode(text, add_special_tokens=False)
    return np.asarray(encoding.ids, np.int32), np.asarray(encoding.offsets, np.int64).reshape(-1, 2)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)

  def to_json(self) -> str:
    """The whole tokenizer (vocabulary, normaliser, pre-tokeniser) as `tokenizer.json` holds it."""
    return self._tok.to_str()

  def save(self, path) -> None:
    write_atomically(path, self.to_json().encode("utf-8"))


class BPETokenizer(_HFTokenizer):
  """Byte-level BPE (GPT-2 style: any text encodes, nothing is unknown); 0 `<pad>`, 1 `</s>` (EOS).

  >>> from combinax import data
  >>> tok = data.BPETokenizer.train(["low lower lowest", "new newer newest"] * 10, vocab_size=300)
  >>> tok.decode(tok.encode("lowest newer ünïcode"))
  'lowest newer ünïcode'
  """

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> "BPETokenizer":
    tk = tokenizers_package()
    byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                     special_tokens=["<pad>", "</s>"],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return cls(tokenizer)

  def __init__(self, tokenizer, add_special_tokens: bool = False):
    super().__init__(tokenizer, add_special_tokens)
    self.pad_id = _special(tokenizer, "<pad>", 0)
    self.eos_id = _special(tokenizer, "</s>", 1)

  @classmethod
  def load(cls, path) -> "BPETokenizer":
    return cls(_from_file(path))


def _special(tokenizer, token: str, default: int) -> int:
  i = tokenizer.token_to_id(token)
  return default if i is None else i


def _from_file(path):
  tk = tokenizers_package()
  try:
    return tk.Tokenizer.from_file(str(path))
  except Exception as e:  # the Rust library raises plain Exceptions
    raise DataError(f"{path}: not a readable tokenizer.json ({e})") from None


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class WordPieceTokenizer(_HFTokenizer):
  """BERT WordPiece: `[CLS] pieces [SEP]` by default; `pad_id` is `[PAD]`, `eos_id` is `[SEP]`.

  >>> import tempfile, os
  >>> from combinax import data
  >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
  >>> _ = open(path, "w").write("\\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "lord", "##s"]))
  >>> tok = data.WordPieceTokenizer.load(path)
  >>> tok.encode("The Lords"), tok.decode(tok.encode("the lords"))
  (array([2, 5, 6, 7, 3], dtype=int32), 'the lords')
  """

  def __init__(self, tokenizer, add_special_tokens: bool = True):
    super().__init__(tokenizer, add_special_tokens)
    self.pad_id = _special(tokenizer, "[PAD]", 0)
    self.eos_id = _special(tokenizer, "[SEP]", self.pad_id)
    self.cls_id = tokenizer.token_to_id("[CLS]")
    self.mask_id = tokenizer.token_to_id("[MASK]")
    self.unk_id = tokenizer.token_to_id("[UNK]")

  @staticmethod
  def _bert(vocab: dict, lowercase: bool):
    tk = tokenizers_package()
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in vocab]
    if missing:
      raise DataError(f"WordPiece vocabulary has no {missing[0]} token")
    tokenizer = tk.Tokenizer(tk.models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = tk.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                         strip_accents=None, lowercase=lowercase)
    tokenizer.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tokenizer.decoder = tk.decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([t for t in BERT_SPECIALS if t in vocab])
    return tokenizer

  @classmethod
  def from_vocab(cls, vocab_file, lowercase: bool = True, add_special_tokens: bool = True) -> "WordPieceTokenizer":
    """A BERT tokenizer from a `vocab.txt` (one token per line, id = line number)."""
    from combinax.data.files import read_text
    tokens = read_text(vocab_file)
    vocab = {}
    for i, token in enumerate(tokens):
      vocab.setdefault(token, i)
    return cls(cls._bert(vocab, lowercase), add_special_tokens)

  @classmethod
  def load(cls, path, lowercase: bool = True, add_special_tokens: bool = True) -> "WordPieceTokenizer":
    """From a BERT `vocab.txt` (`lowercase` as bert-base-uncased) or a `tokenizer.json` (its own settings).

    A `tokenizer.json` keeps its normalizer, framing and truncation; its padding is turned off (stages pad).
    """
    path = Path(path)
    if path.is_dir():
      path = path / "tokenizer.json" if (path / "tokenizer.json").exists() else path / "vocab.txt"
    if path.suffix == ".txt":
      return cls.from_vocab(path, lowercase, add_special_tokens)
    return cls(_from_file(path), add_special_tokens)

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int = 8192, lowercase: bool = True) -> "WordPieceTokenizer":
    """A BERT-style WordPiece vocabulary trained on `texts` (`[PAD]` = 0)."""
    tk = tokenizers_package()
    trainer = tk.trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                           show_progress=False)
    tokenizer = tk.Tokenizer(tk.models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = tk.normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return cls(cls._bert(tokenizer.get_vocab(), lowercase))

  def save_vocab(self, path) -> None:
    """Writes a BERT `vocab.txt` (tokens in id order)."""
    vocab = self._tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    write_atomically(path, ("\n".join(tokens) + "\n").encode("utf-8"))
