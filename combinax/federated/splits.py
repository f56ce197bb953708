"""Client data for federated training: any combinax data pipeline read into arrays, split into K client shards (IID,
Dirichlet(alpha) label skew, or McMahan et al.'s pathological 2-shards-per-client), and packed into fixed shapes.

Every split is a pure function of the labels and a seed (numpy's `default_rng(seed)`, never global state), and
covers every example exactly once. `pack_clients` pads every client to the same number of examples and marks the
real ones with weight 1 (padding 0), so that one compiled round serves every sample of clients.

>>> labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
>>> shards = split_clients(labels, 2, scheme="pathological", shards_per_client=2, seed=0)
>>> [labels[s].tolist() for s in shards]     # 4 label-sorted shards, 2 to each client
[[0, 0, 1, 1], [2, 2, 3, 3]]
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import gin
import numpy as np

from combinax.data.base import DataError, Serial, Stage
from combinax.data.sources import Corpus
from combinax.data.transforms import Map

SCHEMES = ("iid", "dirichlet", "pathological")
_DIRICHLET_TRIES = 100   # redraws before giving up on every client getting `min_size` examples


class SplitError(ValueError):
  """Client data cannot be made as asked (bad counts, an infinite pipeline, ...); the message says what and where."""


def read_examples(pipeline: Stage) -> tuple[np.ndarray, ...]:
  """Every example of a finite pipeline (a source or `data.Serial` yielding examples, not batches), stacked per
  field: a tuple of arrays with the examples on axis 0."""
  first = pipeline.stages[0] if isinstance(pipeline, Serial) else pipeline
  if getattr(first, "repeat", False):   # reading a repeating source would never end
    raise SplitError(f"read_examples: {first.describe() if hasattr(first, 'describe') else first.name} repeats "
                     "for ever (repeat=True); federated splits read the data once: set repeat=False")
  examples = list(pipeline())
  if not examples:
    raise SplitError(f"read_examples: {pipeline!r} yields no examples")
  width = len(examples[0])
  for i, example in enumerate(examples):
    if not isinstance(example, tuple) or len(example) != width:
      raise SplitError(f"read_examples: example {i} is {type(example).__name__} of "
                       f"{len(example) if isinstance(example, tuple) else '?'} field(s), expected a tuple of {width} "
                       "like example 0 (select fields with keys=(...) on the source)")
  try:
    return tuple(np.stack([np.asarray(e[j]) for e in examples]) for j in range(width))
  except ValueError as e:
    raise SplitError(f"read_examples: field values differ in shape across examples ({e}); pad or cut them to "
                     "one length in the pipeline first") from None


@gin.configurable(module="combinax.federated")
def image_examples(corpus: str = "digits", split: str = "train", image_key: str = "image",
                   label_key: str = "label", shape: Sequence[int] = (8, 8, 1), scale: float = 1 / 16) -> Serial:
  """Examples `(image float32 shape, label int32)` of a corpus of flat pixel lists (the bundled 8x8 `digits`), in
  the corpus's order, read once: what `read_examples` turns into client data (`image_pipeline` without batches)."""
  shape = tuple(shape)

  def to_arrays(example):
    return np.asarray(example[0], np.float32).reshape(shape) * np.float32(scale), np.int32(example[1])

  return Serial(Corpus(corpus, keys=(image_key, label_key), split=split, repeat=False), Map(to_arrays))


# --- Splits -----------------------------------------------------------------------------------------------------


def _check_counts(n_examples: int, n_clients: int, per_client: int = 1):
  if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
    raise SplitError(f"split_clients: n_clients must be an integer >= 1, got {n_clients!r}")
  if n_examples < n_clients * per_client:
    raise SplitError(f"split_clients: {n_examples} examples cannot give {n_clients} clients {per_client} "
                     f"example(s) or shard(s) each; use at most {n_examples // per_client} clients")


def split_iid(n_examples: int, n_clients: int, seed: int = 0) -> list[np.ndarray]:
  """A seeded permutation of the examples cut into `n_clients` parts whose sizes differ by at most one."""
  _check_counts(n_examples, n_clients)
  order = np.random.default_rng(seed).permutation(n_examples)
  return [np.sort(part) for part in np.array_split(order, n_clients)]


def split_dirichlet(labels: np.ndarray, n_clients: int, alpha: float = 0.5, *, seed: int = 0,
                    min_size: int = 1) -> list[np.ndarray]:
  """Label skew: each class's examples are shared among the clients in proportions drawn from Dirichlet(alpha, ...,
  alpha) (small alpha: each client sees few classes; large: close to IID). Draws again (from the same seeded
  generator) until every client has `min_size` examples."""
  labels = np.asarray(labels)
  _check_counts(len(labels), n_clients, min_size)
  if not alpha > 0:
    raise SplitError(f"split_dirichlet: alpha must be > 0, got {alpha!r}")
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  for _ in range(_DIRICHLET_TRIES):
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for c in classes:
      members = rng.permutation(np.flatnonzero(labels == c))
      shares = rng.dirichlet(np.full(n_clients, float(alpha)))
      cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
      for client, part in enumerate(np.split(members, cuts)):
        parts[client].append(part)
    shards = [np.sort(np.concatenate(p)) for p in parts]
    if min(len(s) for s in shards) >= min_size:
      return shards
  raise SplitError(f"split_dirichlet: no draw in {_DIRICHLET_TRIES} gave each of {n_clients} clients {min_size} "
                   f"example(s) with alpha={alpha}; use fewer clients or a larger alpha")


def split_pathological(labels: np.ndarray, n_clients: int, shards_per_client: int = 2, *,
                       seed: int = 0) -> list[np.ndarray]:
  """McMahan et al. (2017): sort the examples by label, cut them into `n_clients * shards_per_client` shards of
  (nearly) equal size and give each client `shards_per_client` shards at random, so most clients see only
  `shards_per_client` labels. Within a label the order is a seeded permutation."""
  labels = np.asarray(labels)
  if not isinstance(shards_per_client, (int, np.integer)) or shards_per_client < 1:
    raise SplitError(f"split_pathological: shards_per_client must be an integer >= 1, got {shards_per_client!r}")
  _check_counts(len(labels), n_clients, shards_per_client)
  rng = np.random.default_rng(seed)
  shuffled = rng.permutation(len(labels))
  by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
  shards = np.array_split(by_label, n_clients * shards_per_client)
  owner_of = rng.permutation(len(shards))
  return [np.sort(np.concatenate([shards[s] for s in owner_of[k::n_clients]])) for k in range(n_clients)]


@gin.configurable(module="combinax.federated")
def split_clients(labels: np.ndarray, n_clients: int = 10, *, scheme: str = "iid", alpha: float = 0.5,
                  shards_per_client: int = 2, seed: int = 0) -> list[np.ndarray]:
  """The example indices of each of `n_clients` clients (sorted; together every index exactly once), by `scheme`:
  "iid", "dirichlet" (label skew, `alpha`) or "pathological" (`shards_per_client` label-sorted shards each)."""
  if scheme == "iid":
    return split_iid(len(labels), n_clients, seed)
  if scheme == "dirichlet":
    return split_dirichlet(labels, n_clients, alpha, seed=seed)
  if scheme == "pathological":
    return split_pathological(labels, n_clients, shards_per_client, seed=seed)
  raise SplitError(f"split_clients: scheme must be one of {SCHEMES}, got {scheme!r}")


# --- Packing ----------------------------------------------------------------------------------------------------


class ClientData(NamedTuple):
  """The clients' examples in fixed shapes: `fields[j]` is (n_clients, max_examples, ...) (zeros past a client's
  own examples), `weights` (n_clients, max_examples) float32 is 1 on real examples and 0 on padding. A client's
  batches are `(*fields, weights)`: the model takes the first items, the (weighted) loss the rest."""
  fields: tuple
  weights: np.ndarray

  @property
  def n_clients(self) -> int:
    return int(self.weights.shape[0])

  @property
  def sizes(self) -> np.ndarray:
    """The number of real examples of each client."""
    return np.asarray(self.weights).sum(axis=1).astype(np.int64)


def pack_clients(arrays: Sequence[np.ndarray], shards: Sequence[np.ndarray], *,
                 pad_to: int | None = None) -> ClientData:
  """The examples `arrays[j][shards[k]]` of every client k, padded to `pad_to` (default: the largest client)."""
  arrays = tuple(np.asarray(a) for a in arrays)
  if not arrays or len({len(a) for a in arrays}) != 1:
    raise SplitError(f"pack_clients: expected field arrays of one length, got lengths {[len(a) for a in arrays]}")
  sizes = [len(s) for s in shards]
  if not shards or min(sizes) < 1:
    empty = [k for k, n in enumerate(sizes) if n < 1]
    raise SplitError(f"pack_clients: every client needs at least one example; client(s) {empty[:5]} have none")
  width = max(sizes) if pad_to is None else int(pad_to)
  if width < max(sizes):
    raise SplitError(f"pack_clients: pad_to={pad_to} is smaller than the largest client ({max(sizes)} examples)")
  fields = []
  for a in arrays:
    packed = np.zeros((len(shards), width) + a.shape[1:], a.dtype)
    for k, shard in enumerate(shards):
      packed[k, :len(shard)] = a[np.asarray(shard)]
    fields.append(packed)
  weights = np.zeros((len(shards), width), np.float32)
  for k, n in enumerate(sizes):
    weights[k, :n] = 1.0
  return ClientData(tuple(fields), weights)
