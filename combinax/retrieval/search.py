"""Maximum-inner-product search: `search(queries, k) -> (scores, ids)`, best first.

`ExactSearch` is the reference every approximate index is scored against: `queries @ table.T` and `top_k` in JAX,
the table's rows split over all devices (each device keeps the top k of its rows, then the k best of those are
taken), optionally stored as int8 with a scale per row (4x less memory, scores within half a quantisation step
per coordinate). `FaissSearch` (faiss-cpu's HNSW) and `USearchSearch` (usearch's HNSW) are approximate, behind the
same call; `recall_at_k` scores one against another.

>>> import numpy as np
>>> table = np.eye(4, dtype=np.float32)
>>> scores, ids = ExactSearch(table).search(np.array([[0.1, 0.9, 0.3, 0.0]], np.float32), k=2)
>>> ids.tolist(), [[round(float(x), 2) for x in row] for row in scores]
([[1, 2]], [[0.9, 0.3]])
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from combinax.sharding import DATA, make_mesh


class SearchError(ValueError):
  """A search that cannot be made as asked (an empty table, k larger than the table, queries of another size)."""


def _check(name: str, size: int, dim: int, queries, k: int) -> np.ndarray:
  queries = np.asarray(queries, np.float32)
  if queries.ndim == 1:
    queries = queries[None]
  if queries.ndim != 2 or queries.shape[1] != dim:
    raise SearchError(f"{name}.search: queries must be (n, {dim}) (the table's width), got {queries.shape}")
  if not 1 <= k <= size:
    raise SearchError(f"{name}.search: k must be between 1 and the {size} rows of the table, got {k}")
  return queries


def _table(embeddings) -> np.ndarray:
  embeddings = np.asarray(embeddings, np.float32)
  if embeddings.ndim != 2 or embeddings.shape[0] == 0:
    raise SearchError(f"a search table must be (rows >= 1, dim), got {embeddings.shape}: is the knowledge base "
                      "empty?")
  return embeddings


class ExactSearch:
  """Exact maximum-inner-product search over `embeddings` (rows, dim), sharded over `mesh`'s `data` axis (default:
  every device); `int8=True` stores each row as int8 times its own scale."""

  def __init__(self, embeddings, *, int8: bool = False, mesh=None):
    table = _table(embeddings)
    self.size, self.dim = table.shape
    self.int8 = int8
    self.mesh = mesh if mesh is not None else make_mesh()
    shards = self.mesh.shape[DATA]
    rows = -(-self.size // shards) * shards
    padded = np.zeros((rows, self.dim), np.float32)
    padded[:self.size] = table
    if int8:   # symmetric, per row: the row's largest |value| is 127
      scale = np.abs(padded).max(axis=1) / 127.0
      scale[scale == 0] = 1.0
      stored = np.round(padded / scale[:, None]).astype(np.int8)
    else:
      scale, stored = np.ones(rows, np.float32), padded
    split = NamedSharding(self.mesh, P(DATA))
    self._table = jax.device_put(stored, split)
    self._scale = jax.device_put(scale.astype(np.float32), split)
    self._valid = jax.device_put(np.arange(rows) < self.size, split)
    self.nbytes = stored.nbytes + (scale.nbytes if int8 else 0)
    self._compiled: dict = {}   # k -> the jitted search

  def _search(self, k: int):
    if k in self._compiled:
      return self._compiled[k]
    local_rows = self._table.shape[0] // self.mesh.shape[DATA]
    local_k = min(k, local_rows)

    def local(table, scale, valid, queries):
      scores = (queries @ table.astype(jnp.float32).T) * scale[None]
      scores = jnp.where(valid[None], scores, -jnp.inf)   # the rows added to split the table evenly
      values, index = jax.lax.top_k(scores, local_k)
      return values, index + jax.lax.axis_index(DATA) * local_rows

    def search(table, scale, valid, queries):
      values, index = jax.shard_map(local, mesh=self.mesh, in_specs=(P(DATA), P(DATA), P(DATA), P()),
                                    out_specs=(P(None, DATA), P(None, DATA)))(table, scale, valid, queries)
      best, position = jax.lax.top_k(values, k)
      return best, jnp.take_along_axis(index, position, axis=1)

    self._compiled[k] = jax.jit(search)
    return self._compiled[k]

  def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (n, k), row ids (n, k)) of each query's k best rows, best first."""
    queries = _check("ExactSearch", self.size, self.dim, queries, k)
    scores, ids = self._search(k)(self._table, self._scale, self._valid, jnp.asarray(queries))
    return np.asarray(scores), np.asarray(ids)


def _optional(module: str, package: str):
  try:
    return importlib.import_module(module)
  except ImportError:
    raise SearchError(f"this index needs {package}: pip install {package} (or combinax[retrieval])") from None


class FaissSearch:
  """Approximate search with faiss-cpu's HNSW graph (inner product): `connectivity` links per node,
  `expansion_add` / `expansion_search` candidates kept while building / searching (more: better recall, slower)."""

  def __init__(self, embeddings, *, connectivity: int = 32, expansion_add: int = 128, expansion_search: int = 64):
    faiss = _optional("faiss", "faiss-cpu")
    table = _table(embeddings)
    self.size, self.dim = table.shape
    self._index = faiss.IndexHNSWFlat(self.dim, connectivity, faiss.METRIC_INNER_PRODUCT)
    self._index.hnsw.efConstruction = expansion_add
    self._index.hnsw.efSearch = expansion_search
    self._index.add(np.ascontiguousarray(table))

  def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = _check("FaissSearch", self.size, self.dim, queries, k)
    self._index.hnsw.efSearch = max(self._index.hnsw.efSearch, k)
    scores, ids = self._index.search(np.ascontiguousarray(queries), k)
    return scores, ids.astype(np.int64)


class USearchSearch:
  """Approximate search with usearch's HNSW graph (inner product), same knobs as `FaissSearch`."""

  def __init__(self, embeddings, *, connectivity: int = 32, expansion_add: int = 128, expansion_search: int = 64):
    index_module = _optional("usearch.index", "usearch")
    table = _table(embeddings)
    self.size, self.dim = table.shape
    self._index = index_module.Index(ndim=self.dim, metric="ip", dtype="f32", connectivity=connectivity,
                                     expansion_add=expansion_add, expansion_search=expansion_search)
    self._index.add(np.arange(self.size), np.ascontiguousarray(table), threads=1)   # one thread: the same graph
    self._expansion_search = expansion_search

  def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = _check("USearchSearch", self.size, self.dim, queries, k)
    found = self._index.search(np.ascontiguousarray(queries), k, threads=1)
    keys, distances = np.atleast_2d(found.keys), np.atleast_2d(found.distances)
    return (1.0 - distances).astype(np.float32), keys.astype(np.int64)   # usearch's "ip" distance is 1 - dot


INDEXES = {"exact": ExactSearch, "exact-int8": functools.partial(ExactSearch, int8=True), "faiss": FaissSearch,
           "usearch": USearchSearch}


def make_index(kind: str, embeddings):
  """One of `INDEXES` over `embeddings`."""
  if kind not in INDEXES:
    raise SearchError(f"unknown index {kind!r}: expected one of {sorted(INDEXES)}")
  return INDEXES[kind](embeddings)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
  """The fraction of the exact top k (`exact`, (n, k) ids) that `found` ((n, k) ids) holds too."""
  found, exact = np.asarray(found), np.asarray(exact)
  return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))
