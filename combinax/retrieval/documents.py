"""Documents and their chunks: what a knowledge base is made of.

A `Document` is an id, a text and where it came from. `read_documents` reads a user's text files (one document
each) and JSONL files (one per line, with a "text" field and an optional "id"); `corpus_documents` gives a bundled
corpus's documents (the KJV Bible as its 1,189 chapters). `chunk` cuts a document into pieces of `size` encoder
tokens, each `overlap` tokens into the one before, keeping each piece's own characters and token ids:

>>> from combinax.retrieval import documents
>>> doc = documents.Document("d", "In the beginning God created the heaven and the earth.", "example")
>>> class Words:   # a tokenizer that splits on spaces, for the example
...   def encode_with_offsets(self, text):
...     import re, numpy as np
...     spans = [m.span() for m in re.finditer(r"\\S+", text)]
...     return np.arange(len(spans)), np.array(spans)
>>> [c.text for c in documents.chunk(doc, Words(), size=4, overlap=1)]
['In the beginning God', 'God created the heaven', 'heaven and the earth.']
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from combinax.data.files import json_objects


class DocumentError(ValueError):
  """Documents cannot be read or chunked as asked (a file that is not UTF-8, a JSONL line without "text", ...)."""


class Document(NamedTuple):
  id: str        # unique within a knowledge base
  text: str
  source: str    # where it came from: a file (and line), or a bundled corpus and its reference

  def digest(self) -> str:
    """sha256 of the text: a document added again with another text is a change, refused by name."""
    return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


class Chunk(NamedTuple):
  document: str      # the id of its document
  index: int         # its position in the document's chunks
  start: int         # its characters in the document's text: text[start:end]
  end: int
  text: str
  ids: np.ndarray    # its encoder token ids (no special tokens), what its embedding is computed from

  def record(self) -> dict:
    """What a knowledge base keeps of it (the ids are recomputed from the text whenever needed)."""
    return {"document": self.document, "chunk": self.index, "start": self.start, "end": self.end, "text": self.text}


def chunk(document: Document, tokenizer, *, size: int, overlap: int) -> list[Chunk]:
  """`document` cut into chunks of `size` tokens of `tokenizer` (one with `encode_with_offsets`, e.g. the bundled
  encoders' WordPiece), each starting `size - overlap` tokens after the one before; the last may be shorter. A text
  with no tokens gives no chunk."""
  if not 0 <= overlap < size:
    raise DocumentError(f"chunk: overlap must be at least 0 and less than size (got size={size}, overlap={overlap})")
  ids, offsets = tokenizer.encode_with_offsets(document.text)
  chunks, start = [], 0
  while start < len(ids):
    end = min(start + size, len(ids))
    first, last = int(offsets[start][0]), int(offsets[end - 1][1])
    chunks.append(Chunk(document.id, len(chunks), first, last, document.text[first:last], ids[start:end]))
    if end == len(ids):
      break
    start = end - overlap
  return chunks


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
  """The documents of text files (a `.txt` or any other file: one document, its id the file's name) and JSONL files
  (`.jsonl`: one per line, `{"text": ..., "id": optional}`, the id by default `<file name>:<line>`), in the order
  given; a folder gives its files in sorted order."""
  documents = []
  for path in paths:
    path = Path(path)
    if path.is_dir():
      documents += read_documents(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
      continue
    if not path.is_file():
      raise DocumentError(f"{path}: no such file or folder")
    if path.suffix == ".jsonl":   # (a line that is not a JSON object: a DataError naming the file and line)
      for number, record in json_objects(path):
        if not isinstance(record.get("text"), str):
          raise DocumentError(f'{path}:{number}: expected an object with a "text" string (and an optional "id"), '
                              f"got the keys {sorted(record)}")
        documents.append(Document(str(record.get("id", f"{path.name}:{number}")), record["text"],
                                  f"{path}:{number}"))
      continue
    try:
      documents.append(Document(path.name, path.read_text(encoding="utf-8"), str(path)))
    except UnicodeDecodeError as e:
      raise DocumentError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  return documents


def corpus_documents(name: str, split: str = "train") -> list[Document]:
  """A bundled corpus as documents: the KJV Bible's chapters ("Genesis 1", its verses joined), or one document per
  record of a corpus with a "text" field (imdb_sentiment). `split="all"`: every split's, one after another."""
  from combinax.data import corpora
  if split == "all":
    return [d for s in corpora.info(name)["splits"] for d in corpus_documents(name, s)]
  records = corpora.load(name, split)
  if name == "kjv":
    chapters: dict[str, list[str]] = {}
    for record in records:
      chapters.setdefault(f"{record['book']} {record['chapter']}", []).append(record["text"])
    return [Document(reference, " ".join(verses), f"corpus {name} ({split}): {reference}")
            for reference, verses in chapters.items()]
  if not records or "text" not in records[0]:
    raise DocumentError(f"corpus {name!r} has no \"text\" field to make documents of (its fields: "
                        f"{sorted(records[0]) if records else 'none'})")
  return [Document(f"{name}:{split}:{i}", r["text"], f"corpus {name} ({split}), record {i}")
          for i, r in enumerate(records)]


def check_unique(documents: Sequence[Document]) -> None:
  seen = set()
  for document in documents:
    if document.id in seen:
      raise DocumentError(f"document id {document.id!r} is given twice: ids name documents in a knowledge base")
    seen.add(document.id)
