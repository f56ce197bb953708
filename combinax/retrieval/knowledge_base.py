"""A knowledge base: documents cut into chunks, each chunk's embedding by a bundled encoder, in a folder that
resumes after a kill and grows with new documents without embedding the old ones again.

    kb = build("runs/kb_kjv", corpus_documents("kjv"))          # or read_documents(["notes/", "faq.jsonl"])
    hits = KnowledgeBase.open("runs/kb_kjv").search(["Who built the ark?"], k=5)[0]
    hits[0].text, hits[0].document, hits[0].score

The folder holds `knowledge_base.json` (the encoder, by name and by the checksums of its weights and vocabulary,
and the chunking), `index.json` (the parts made so far, with each file's sha256, and the documents each holds) and
`parts/part_NNNNN.{jsonl,npy}` (the chunks' texts and provenance; their float32 embeddings). A part holds whole
documents and is written before the index names it, each file replaced whole, all under the folder's lock: a kill
loses at most the part being made, and the next `build` makes it again, batch for batch as an uninterrupted build
would. Parts that fail their checksums are made again, with every part after them (the longest verified prefix is
kept). A document given again with the same text is skipped; with another text, refused by id.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from combinax.retrieval.documents import Document, check_unique, chunk
from combinax.retrieval.encoder import Encoder
from combinax.retrieval.search import make_index
from combinax.store import rundir

FORMAT = "combinax-knowledge-base/1"
HEADER, INDEX, PARTS = "knowledge_base.json", "index.json", "parts"


class KnowledgeBaseError(ValueError):
  """A knowledge base that cannot be built, extended or read as asked; the message says what to do."""


class Hit(NamedTuple):
  score: float      # the inner product of the query's and the chunk's embeddings (a cosine: both are unit vectors)
  id: int           # the chunk's row in the knowledge base
  document: str
  chunk: int        # its position among its document's chunks
  text: str
  source: str       # where its document came from


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_json(path: Path, what: str) -> dict:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise KnowledgeBaseError(f"{path}: the {what} cannot be read ({e}); the knowledge base is damaged: build it "
                             "again in a new folder") from None


def _verified_parts(folder: Path, index: dict) -> tuple[list[dict], str | None]:
  """(the longest prefix of the index's parts whose files are whole, why the next one is not, or None)."""
  kept = []
  for part in index["parts"]:
    for suffix, key in ((".jsonl", "records_sha256"), (".npy", "embeddings_sha256")):
      file = folder / PARTS / f"{part['name']}{suffix}"
      if not file.is_file():
        return kept, f"{file.name} is missing"
      if _sha256(file) != part[key]:
        return kept, f"{file.name} was changed or damaged after it was written (its sha256 differs)"
    kept.append(part)
  return kept, None


def _header(encoder: Encoder, chunk_tokens: int, overlap: int) -> dict:
  return {"format": FORMAT, "encoder": encoder.fingerprint, "chunk_tokens": chunk_tokens, "overlap": overlap}


def _check_header(folder: Path, saved: dict, wanted: dict) -> None:
  if saved.get("format") != FORMAT:
    raise KnowledgeBaseError(f"{folder}: not a combinax knowledge base of this version (format "
                             f"{saved.get('format')!r}, expected {FORMAT!r})")
  if saved["encoder"] != wanted["encoder"]:
    what = "weights" if saved["encoder"]["name"] == wanted["encoder"]["name"] else "name"
    raise KnowledgeBaseError(
        f"{folder} was built with encoder {saved['encoder']['name']} and this is {wanted['encoder']['name']} (their "
        f"{what} differ{'' if what == 'name' else ' by checksum'}): vectors of two encoders are not comparable. "
        "Build with the knowledge base's own encoder, or into a new folder")
  for key in ("chunk_tokens", "overlap"):
    if saved[key] != wanted[key]:
      raise KnowledgeBaseError(f"{folder} cuts documents with {key}={saved[key]}, not {wanted[key]}: extend it with "
                               "its own chunking, or build a new knowledge base")


def build(folder, documents: Sequence[Document], *, encoder: Encoder | str = "all-minilm-l6-v2",
          chunk_tokens: int = 128, overlap: int = 32, part_chunks: int = 2048, progress: bool | None = None) -> dict:
  """Adds `documents` to the knowledge base in `folder` (made if new) and returns what it did: {"documents": added,
  "chunks": added, "skipped": documents it already held, "total_chunks": ...}.

  Args:
    encoder: a bundled sentence encoder (name) or an `Encoder`; a folder built with another is refused.
    chunk_tokens, overlap: the chunking (encoder tokens; the encoder adds [CLS] and [SEP]).
    part_chunks: documents are written in parts of at least this many chunks (whole documents): what a kill can
      cost, and how often the index is written.
    progress: a tqdm bar over the chunks to embed (default: when stdout is a terminal).
  """
  folder = Path(folder)
  check_unique(documents)
  if part_chunks < 1:
    raise KnowledgeBaseError(f"build: part_chunks must be at least 1, got {part_chunks}")
  if not 0 <= overlap < chunk_tokens:
    raise KnowledgeBaseError(f"build: overlap must be at least 0 and less than chunk_tokens (got chunk_tokens="
                             f"{chunk_tokens}, overlap={overlap})")
  encoder = Encoder(encoder) if isinstance(encoder, str) else encoder
  if chunk_tokens + 2 > encoder.window:
    raise KnowledgeBaseError(f"build: chunks of {chunk_tokens} tokens and [CLS], [SEP] do not fit encoder "
                             f"{encoder.name}'s window of {encoder.window} tokens")
  wanted = _header(encoder, chunk_tokens, overlap)
  with rundir.locked(folder) as folder:
    rundir.clear_leftovers(folder)
    rundir.clear_leftovers(folder / PARTS)
    if (folder / HEADER).exists():
      _check_header(folder, _read_json(folder / HEADER, "header"), wanted)
    else:
      rundir.write_atomically(folder / HEADER, json.dumps(wanted, indent=1))
    index = _read_json(folder / INDEX, "index") if (folder / INDEX).exists() else {"parts": [], "documents": {}}
    parts, damage = _verified_parts(folder, index)
    if damage is not None:   # the documents of the dropped parts are pending again
      dropped = {p["name"] for p in index["parts"][len(parts):]}
      index = {"parts": parts, "documents": {d: r for d, r in index["documents"].items() if r["part"] not in dropped}}
      print(f"knowledge base {folder}: {damage}: {len(dropped)} part(s) from there on are made again", flush=True)
    named = {f"{p['name']}{s}" for p in index["parts"] for s in (".jsonl", ".npy")}
    for leftover in (folder / PARTS).glob("part_*"):   # a part a kill cut off before the index named it
      if leftover.name not in named:
        leftover.unlink()
    pending, skipped = [], 0
    for document in documents:
      held = index["documents"].get(document.id)
      if held is None:
        pending.append(document)
      elif held["digest"] == document.digest():
        skipped += 1
      else:
        raise KnowledgeBaseError(f"{folder}: document {document.id!r} is in the knowledge base with another text "
                                 f"(added from {held['source']}; now from {document.source}): give the new text "
                                 "another id, or build a new knowledge base")
    total = sum(p["chunks"] for p in index["parts"])
    added = _add_parts(folder, index, pending, encoder, chunk_tokens, overlap, part_chunks, progress, total)
    return {"documents": len(pending), "chunks": added, "skipped": skipped, "total_chunks": total + added}


def _add_parts(folder: Path, index: dict, pending: list[Document], encoder: Encoder, chunk_tokens: int, overlap: int,
               part_chunks: int, progress: bool | None, first: int) -> int:
  """Chunks and embeds `pending` into new parts of at least `part_chunks` chunks (whole documents), their rows
  numbered from `first`; returns how many chunks it added."""
  chunked = [(document, chunk(document, encoder.tokenizer, size=chunk_tokens, overlap=overlap))
             for document in pending]
  count = sum(len(c) for _, c in chunked)
  bar = None
  if count and (progress if progress is not None else sys.stdout.isatty()):
    from tqdm import tqdm
    bar = tqdm(total=count, unit="chunk", desc=f"embedding with {encoder.name}", dynamic_ncols=True)
  group, in_group = [], 0
  try:
    for position, (document, chunks) in enumerate(chunked):
      group.append((document, chunks))
      in_group += len(chunks)
      if in_group >= part_chunks or position == len(chunked) - 1:
        first = _write_part(folder, index, group, encoder, chunk_tokens, first, bar)
        group, in_group = [], 0
  finally:
    if bar is not None:
      bar.close()
  return count


def _write_part(folder: Path, index: dict, group: list, encoder: Encoder, chunk_tokens: int, first: int,
                bar) -> int:
  """Embeds `group`'s chunks, writes the part's two files, then the index that names it; returns the next row."""
  name = f"part_{len(index['parts']):05d}"
  chunks = [c for _, cs in group for c in cs]
  embeddings = encoder.embed_ids([encoder.with_specials(c.ids) for c in chunks], length=chunk_tokens + 2,
                                 progress=bar.update if bar is not None else None)
  records = "".join(json.dumps(c.record(), ensure_ascii=False) + "\n" for c in chunks).encode("utf-8")
  buffer = io.BytesIO()
  np.save(buffer, embeddings, allow_pickle=False)
  rundir.write_atomically(folder / PARTS / f"{name}.jsonl", records)
  rundir.write_atomically(folder / PARTS / f"{name}.npy", buffer.getvalue())
  index["parts"].append({"name": name, "chunks": len(chunks), "records_sha256": hashlib.sha256(records).hexdigest(),
                         "embeddings_sha256": hashlib.sha256(buffer.getvalue()).hexdigest()})
  for document, cs in group:
    index["documents"][document.id] = {"digest": document.digest(), "source": document.source, "part": name,
                                       "first": first, "chunks": len(cs)}
    first += len(cs)
  rundir.write_atomically(folder / INDEX, json.dumps(index, ensure_ascii=False))
  return first


class KnowledgeBase:
  """A built knowledge base, read whole (every part checked against its sha256): its chunks, their embeddings, and
  `search` over them with its own encoder. `index`: "exact" (default), "exact-int8", "faiss" or "usearch"."""

  def __init__(self, folder: Path, header: dict, records: list[dict], embeddings: np.ndarray,
               sources: dict[str, str], *, index: str = "exact", encoder: Encoder | None = None):
    self.folder = folder
    self.header = header
    self.records = records
    self.embeddings = embeddings
    self.sources = sources
    self.index_kind = index
    self._index = make_index(index, embeddings) if len(records) else None
    if encoder is not None and encoder.fingerprint != header["encoder"]:
      _check_header(folder, header, {**header, "encoder": encoder.fingerprint})
    self._encoder = [encoder]   # made at the first search of texts (loading it costs seconds)

  @classmethod
  def open(cls, folder, *, index: str = "exact", encoder: Encoder | None = None) -> "KnowledgeBase":
    folder = Path(folder)
    if not (folder / HEADER).exists():
      raise KnowledgeBaseError(f"{folder}: no knowledge base there ({HEADER} is missing); build one with "
                               "combinax.retrieval.build or `python -m combinax.retrieval build`")
    header = _read_json(folder / HEADER, "header")
    _check_header(folder, header, header)
    saved = _read_json(folder / INDEX, "index") if (folder / INDEX).exists() else {"parts": [], "documents": {}}
    parts, damage = _verified_parts(folder, saved)
    if damage is not None:
      raise KnowledgeBaseError(f"{folder}: {damage}; build it again with the same documents to make that part and "
                               "the ones after it again")
    records, blocks = [], []
    for part in parts:
      with open(folder / PARTS / f"{part['name']}.jsonl", encoding="utf-8") as f:
        records += [json.loads(line) for line in f]
      blocks.append(np.load(folder / PARTS / f"{part['name']}.npy", allow_pickle=False))
    dim = header["encoder"]["dim"]
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    sources = {d: r["source"] for d, r in saved["documents"].items()}
    return cls(folder, header, records, embeddings, sources, index=index, encoder=encoder)

  def __len__(self) -> int:
    return len(self.records)

  @property
  def encoder(self) -> Encoder:
    if self._encoder[0] is None:
      encoder = Encoder(self.header["encoder"]["name"])
      _check_header(self.folder, self.header, {**self.header, "encoder": encoder.fingerprint})
      self._encoder[0] = encoder
    return self._encoder[0]

  def search_embeddings(self, queries: np.ndarray, k: int = 5) -> list[list[Hit]]:
    """The `k` best chunks for each query embedding, best first."""
    if self._index is None:
      raise KnowledgeBaseError(f"{self.folder}: the knowledge base holds no chunks: build it from documents first")
    scores, ids = self._index.search(queries, min(k, len(self.records)))
    return [[self.hit(int(i), float(s)) for s, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores, ids)]

  def search(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
    """The `k` best chunks for each query text (embedded by the knowledge base's own encoder), best first."""
    if self._index is None:
      raise KnowledgeBaseError(f"{self.folder}: the knowledge base holds no chunks: build it from documents first")
    return self.search_embeddings(self.encoder.embed_texts(list(queries)), k)

  def hit(self, row: int, score: float = 1.0) -> Hit:
    """Chunk `row` as a `Hit` with `score`."""
    record = self.records[row]
    return Hit(score, row, record["document"], record["chunk"], record["text"], self.sources[record["document"]])
