"""RETRO's data: windows of a language model's tokens and, for each chunk of a window, the knowledge base's
neighbours of that chunk as the LM's tokens.

Chunk c of a window (its tokens `[c * chunk_size, (c + 1) * chunk_size)`, decoded to text) is the query; its `k`
best knowledge-base chunks, each followed by the next chunk of its document (RETRO's "neighbour and continuation"),
are its neighbours, cut or padded to `neighbour_length` tokens. A hit from the window's own document, or whose text
occurs in that document, is never a neighbour: the model would read its own chunk and continuation. The model reads
chunk c's neighbours from chunk c + 1 on (`layers.ChunkedAttention`), so retrieval may read the whole chunk.

Searching is the slow part (each chunk is embedded by the knowledge base's encoder), so the hits are kept in the
knowledge base's folder (`neighbours/<key>.npy`, written atomically under its lock), keyed by the knowledge base's
index, the queries and `k`: a second run, or a resumed one, reads them back.
"""

from __future__ import annotations

import hashlib
import io
import json
import string
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from combinax.data.base import Serial
from combinax.data.batching import Batch
from combinax.data.sources import FromList
from combinax.data.tokenizers import CharTokenizer, Tokenizer, cache_root
from combinax.retrieval import facts
from combinax.retrieval.documents import Document
from combinax.retrieval.knowledge_base import INDEX, KnowledgeBase, KnowledgeBaseError, build
from combinax.store import rundir

NEIGHBOURS = "neighbours"
_QUERY_BATCH = 1024   # queries embedded and searched at once (and the progress bar's step)


def windows(documents: Sequence[Document], tokenizer: Tokenizer, length: int) -> tuple[np.ndarray, list[int]]:
  """Each document's tokens and an EOS, cut into windows of `length` (the last padded with 0): (windows (n, length)
  int32, the index of each window's document)."""
  rows, owners = [], []
  for d, document in enumerate(documents):
    ids = np.append(tokenizer.encode(document.text), tokenizer.eos_id).astype(np.int32)
    for start in range(0, len(ids), length):
      rows.append(np.pad(ids[start:start + length], (0, max(0, start + length - len(ids)))))
      owners.append(d)
  return np.stack(rows) if rows else np.zeros((0, length), np.int32), owners


def _key(kb: KnowledgeBase, queries: list[str], owners: list[str], k: int) -> str:
  digest = hashlib.sha256((kb.folder / INDEX).read_bytes())
  digest.update(json.dumps([queries, owners, k]).encode())
  return digest.hexdigest()[:32]


def search_neighbours(kb: KnowledgeBase, queries: list[str], owners: Sequence[Document], k: int, *,
                      progress: bool | None = None) -> np.ndarray:
  """(len(queries), k) knowledge-base rows: each query's `k` best chunks that are not from `owners[i]` (by id or by
  text), -1 where there are fewer or the query is empty. Read back from the knowledge base's folder if kept."""
  path = kb.folder / NEIGHBOURS / f"{_key(kb, queries, [o.id for o in owners], k)}.npy"
  if path.exists():
    hits = np.load(path, allow_pickle=False)
    if hits.shape == (len(queries), k):
      return hits
  hits = np.full((len(queries), k), -1, np.int32)
  asked = [i for i, query in enumerate(queries) if query.strip()]
  bar = None
  if asked and (progress if progress is not None else sys.stdout.isatty()):
    from tqdm import tqdm
    bar = tqdm(total=len(asked), unit="chunk", desc="retrieving neighbours", dynamic_ncols=True)
  extra = 4   # room for the hits of the query's own document (a document rarely has more chunks that match)
  for start in range(0, len(asked), _QUERY_BATCH):
    batch = asked[start:start + _QUERY_BATCH]
    found = kb.search([queries[i] for i in batch], k=k + extra)
    for i, row in zip(batch, found):
      owner = owners[i]
      kept = [h.id for h in row if h.document != owner.id and h.text not in owner.text][:k]
      hits[i, :len(kept)] = kept
    if bar is not None:
      bar.update(len(batch))
  if bar is not None:
    bar.close()
  with rundir.locked(kb.folder, ".neighbours.lock"):
    path.parent.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, hits, allow_pickle=False)
    rundir.write_atomically(path, buffer.getvalue())
  return hits


def neighbour_tokens(kb: KnowledgeBase, hits: np.ndarray, tokenizer: Tokenizer, length: int) -> np.ndarray:
  """hits (..., k) of knowledge-base rows -> (..., k, length) token ids: each chunk's text and the next chunk of
  its document (if any), cut or padded with 0; -1 gives padding only."""
  def tokens(row: int) -> np.ndarray:
    if row < 0:
      return np.zeros(length, np.int32)
    text = kb.records[row]["text"]
    following = kb.records[row + 1] if row + 1 < len(kb.records) else None
    if following is not None and following["document"] == kb.records[row]["document"]:
      text += " " + following["text"]
    ids = tokenizer.encode(text)[:length].astype(np.int32)
    return np.pad(ids, (0, length - len(ids)))
  flat = hits.reshape(-1)
  return np.stack([tokens(int(row)) for row in flat]).reshape(hits.shape + (length,)) if flat.size else \
      np.zeros(hits.shape + (length,), np.int32)


def retro_examples(kb: KnowledgeBase, documents: Sequence[Document], tokenizer: Tokenizer, *, length: int,
                   chunk_size: int, k: int, neighbour_length: int,
                   progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(windows (n, length), neighbours (n, length // chunk_size, k, neighbour_length)): the documents' token windows
  and each chunk's neighbours as token ids (module docstring)."""
  if length % chunk_size:
    raise KnowledgeBaseError(f"retro_examples: length {length} must be a multiple of chunk_size {chunk_size} "
                             "(the model reads one set of neighbours per chunk)")
  rows, owners = windows(documents, tokenizer, length)
  chunks = length // chunk_size
  pieces = rows.reshape(len(rows), chunks, chunk_size)
  queries = [tokenizer.decode(piece) for row in pieces for piece in row]
  hits = search_neighbours(kb, queries, [documents[o] for o in owners for _ in range(chunks)], k, progress=progress)
  return rows, neighbour_tokens(kb, hits.reshape(len(rows), chunks, k), tokenizer, neighbour_length)


def retro_pipeline(knowledge_base, documents: Sequence[Document], *, tokenizer: Tokenizer, length: int = 192,
                   chunk_size: int = 64, neighbours: int = 2, neighbour_length: int = 176, batch_size: int = 16,
                   retrieve: bool = True, shuffle: bool = True, seed: int = 0, repeat: bool = True) -> Serial:
  """RETRO batches `(tokens, neighbour tokens, tokens, weights)` from `documents` and the knowledge base in the folder
  `knowledge_base` (`retro_examples`); weights are 0 on padding. `retrieve=False` gives every chunk padding for
  neighbours: the same model, parameters and steps without retrieval (the baseline a RETRO figure compares with)."""
  if retrieve:
    rows, near = retro_examples(KnowledgeBase.open(knowledge_base), documents, tokenizer, length=length,
                                chunk_size=chunk_size, k=neighbours, neighbour_length=neighbour_length)
  else:   # nothing to search: every chunk's neighbours are padding
    rows, _ = windows(documents, tokenizer, length)
    near = np.zeros((len(rows), length // chunk_size, neighbours, neighbour_length), np.int32)
  examples = [(row, n, row, (row != 0).astype(np.float32)) for row, n in zip(rows, near)]
  return Serial(FromList(examples, shuffle=shuffle, seed=seed, repeat=repeat), Batch(batch_size, drop_remainder=True))


# --- The fictional world's corpus, for the RETRO recipe and benchmark ------------------------------------------------

def facts_tokenizer() -> CharTokenizer:
  """One id per printable ASCII character (the world's names, towns and facts are ASCII)."""
  return CharTokenizer(" " + string.ascii_letters + string.digits + string.punctuation)


def facts_corpus(split: str = "train", *, seed: int = 0, people: int = 500, paraphrases: int = 3) -> list[Document]:
  """`facts.paraphrased_corpus` of `facts.make_world(seed, people)`: "train", "test" or "knowledge_base"."""
  corpus = facts.paraphrased_corpus(facts.make_world(seed=seed, people=people), paraphrases=paraphrases, seed=seed)
  if split not in corpus:
    raise KnowledgeBaseError(f"facts_corpus: unknown split {split!r}; available: {sorted(corpus)}")
  return corpus[split]


def facts_knowledge_base(*, corpus: str = "paraphrases", seed: int = 0, people: int = 500, paraphrases: int = 3,
                         chunk_tokens: int = 96, folder: str | None = None) -> str:
  """The folder of a knowledge base over the fictional world, built there if it is not yet (default: in combinax's
  cache, named by the arguments; a build resumes after a kill): `corpus="paraphrases"` holds
  `facts_corpus("knowledge_base", ...)` (RETRO's), `"biographies"` the world's one biography per person (RAG's)."""
  if corpus not in ("paraphrases", "biographies"):
    raise KnowledgeBaseError(f"facts_knowledge_base: corpus must be 'paraphrases' or 'biographies', got {corpus!r}")
  name = f"facts-{corpus}-seed{seed}-people{people}" + (f"-x{paraphrases}" if corpus == "paraphrases" else "")
  path = Path(folder) if folder else cache_root() / "knowledge_bases" / f"{name}-tokens{chunk_tokens}"
  documents = facts_corpus("knowledge_base", seed=seed, people=people, paraphrases=paraphrases) \
      if corpus == "paraphrases" else facts.make_world(seed=seed, people=people).documents
  build(path, documents, chunk_tokens=chunk_tokens, overlap=0)
  return str(path)
