"""Sources: TFDS datasets (array_record, random access, no TensorFlow), bundled corpora, lists; the `Source` base.

Every source reads examples by index, so its position is just `(epoch, index)`: it resumes instantly. Each
example comes out as a tuple of the fields named in `keys` (Trax style). Options common to all sources:
`shuffle` (a fresh seeded permutation of the examples each epoch), `seed`, `repeat` (loop over epochs for ever),
and `shard=(index, count)`: read examples `index, index + count, ...` of each epoch's order. By default a source
reads all of each epoch's order on every host of a multi-host job, and `Batch` keeps each host's rows of the global
batches (`combinax.data.hosts`): the batches are the same on any number of hosts. A source given a `shard` is read
per host (e.g. `shard=(jax.process_index(), jax.process_count())` over per-host files).
Local files (`TextLines`, `CSV`, `TSV`, `JSONL`) are in `combinax.data.files`.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np

from combinax.data.base import DataError, Stage, Stream

_BLOCK = 64   # examples fetched at once from a random-access store (a cache, not part of the state)


class Source(Stage):
  """A source over examples read by index; subclasses implement `load()` -> a sequence of examples."""

  is_source = True

  def __init__(self, keys=None, shuffle: bool = False, seed: int = 0, repeat: bool = False,
               shard: tuple[int, int] | None = None):
    self.keys = None if keys is None else tuple(keys) if isinstance(keys, (list, tuple)) else (keys,)
    self.shuffle = shuffle
    self.seed = seed
    self.repeat = repeat
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
      raise DataError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    self.shard = None if shard is None else tuple(shard)
    self._data = None

  def load(self) -> Sequence:
    raise NotImplementedError

  def describe(self) -> str:
    """What this source reads, for error messages."""
    return self.name

  def where(self, index: int) -> str:
    """Where example `index` comes from, for error messages."""
    return f"{self.describe()} example {index}"

  def data(self) -> Sequence:
    if self._data is None:
      data = self.load()
      if len(data) == 0:
        raise DataError(f"{self.describe()}: no examples")
      self._data = data
    return self._data

  def select(self, example: Any, index: int) -> tuple:
    """The tuple of fields `keys` of one example (dicts by name, tuples and lists by position)."""
    if self.keys is None:
      if isinstance(example, dict):
        raise DataError(f"{self.where(index)} is a dict: choose fields with keys=(...); available: "
                        f"{sorted(example)}")
      return example if isinstance(example, tuple) else tuple(example) if isinstance(example, list) else (example,)
    try:
      return tuple(example[k] for k in self.keys)
    except (KeyError, IndexError, TypeError):
      available = sorted(example) if isinstance(example, dict) else list(range(len(example))) \
          if isinstance(example, (tuple, list)) else type(example).__name__
      missing = [k for k in self.keys if not _has(example, k)]
      raise DataError(f"{self.where(index)}: no field {missing[0]!r} (keys={self.keys}); "
                      f"available: {available}") from None

  def stream(self, upstream) -> "SourceStream":
    return SourceStream(self)


def _has(example, key) -> bool:
  try:
    example[key]
    return True
  except (KeyError, IndexError, TypeError):
    return False


class SourceStream(Stream):
  """Reads a `Source` in each epoch's order; its state is `{"epoch", "index", "size"}`."""

  def __init__(self, source: Source):
    super().__init__(source, None)
    self._data = source.data()
    self._shard = source.shard
    self.epoch, self.index = 0, 0
    self._order = self._epoch_order(0)
    self._block, self._block_start = [], 0

  def _epoch_order(self, epoch: int) -> np.ndarray:
    source = self.stage
    n = len(self._data)
    order = np.random.default_rng([source.seed, epoch]).permutation(n) if source.shuffle else np.arange(n)
    if self._shard is not None:
      index, count = self._shard
      order = order[index::count]
      if len(order) == 0:
        raise DataError(f"{source.describe()}: shard {index} of {count} holds none of its {n} examples; use fewer "
                        f"shards or more data")
    return order

  def next(self):
    if self.index >= len(self._order):
      if not self.stage.repeat:
        raise StopIteration
      self.epoch, self.index = self.epoch + 1, 0
      self._order = self._epoch_order(self.epoch)
      self._block = []
    offset = self.index - self._block_start
    if not 0 <= offset < len(self._block):
      indices = [int(i) for i in self._order[self.index:self.index + _BLOCK]]
      fetch = getattr(self._data, "__getitems__", None)
      self._block = list(fetch(indices)) if fetch is not None else [self._data[i] for i in indices]
      self._block_start, offset = self.index, 0
    i = int(self._order[self.index])
    self.index += 1
    return self.stage.select(self._block[offset], i)

  def reads_per_host(self):
    return self._shard is not None

  def state(self):
    return {"epoch": self.epoch, "index": self.index, "size": len(self._data),
            "shard": list(self._shard) if self._shard is not None else None}

  def restore(self, state):
    saved = tuple(state["shard"]) if state.get("shard") is not None else None
    if "shard" in state and saved != self._shard:   # (positions saved by combinax 0.1 have no shard)
      raise DataError(f"{self.stage.name}: the saved position is for shard {saved} (index, count), but this stream "
                      f"reads shard {self._shard}; a shard's position only fits the same shard")
    if state["size"] != len(self._data):
      raise DataError(f"{self.stage.name}: the saved position is for {state['size']} examples, but the data now "
                      f"has {len(self._data)}; the data changed since the state was saved")
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
    self._order = self._epoch_order(self.epoch)
    self._block, self._block_start = [], 0


class FromList(Source):
  """Examples from a Python list (tuples, or dicts with `keys`).

  >>> from combinax import data
  >>> list(data.FromList([{"x": 1, "y": 2}, {"x": 3, "y": 4}], keys=("y",))())
  [(2,), (4,)]
  """

  def __init__(self, examples: Sequence, keys=None, **options):
    super().__init__(keys, **options)
    self._examples = list(examples)

  def load(self):
    return self._examples


def corpora_module():
  """`combinax.data.corpora`, imported when first needed."""
  try:
    return importlib.import_module("combinax.data.corpora")
  except ImportError as e:
    raise DataError(f"bundled corpora are not available: {e}") from None


def check_corpus(name: str):
  """The corpora module, after checking `name` is one of its corpora."""
  corpora = corpora_module()
  names = list(corpora.names())
  if name not in names:
    raise DataError(f"unknown corpus {name!r}; available: {names}")
  return corpora


class Corpus(Source):
  """A bundled corpus (`combinax.data.corpora`) as tuples of the fields `keys`, e.g. `Corpus("kjv", ("text",))`."""

  def __init__(self, name: str, keys, split: str = "train", **options):
    super().__init__(keys, **options)
    self.corpus = name
    self.split = split

  def describe(self):
    return f"corpus {self.corpus!r} ({self.split})"

  def load(self):
    examples = check_corpus(self.corpus).load(self.corpus, split=self.split)
    for i, example in enumerate(examples):   # fail now, not in the middle of training
      self.select(example, i)
    return examples


class TFDS(Source):
  """A prepared TFDS dataset read through `tfds.data_source` (array_record, random access; no TensorFlow).

  Text features come out as `str`, other features as numpy values. Needs `pip install 'combinax[tfds]'`.
  Pass `download=False` to read only what is already under `data_dir` (what tests and offline machines do).
  """

  def __init__(self, name: str, keys=None, split: str = "train", data_dir=None, download: bool = True,
               **options):
    super().__init__(keys, **options)
    self.dataset = name
    self.split = split
    self.data_dir = None if data_dir is None else str(data_dir)
    self.download = download
    self._text_keys = ()

  def describe(self):
    return f"TFDS {self.dataset!r} ({self.split})"

  def load(self):
    try:
      import tensorflow_datasets as tfds   # lazily: importing combinax.data must not need it
    except ImportError as e:
      raise DataError(f"data.TFDS needs tensorflow-datasets: pip install 'combinax[tfds]' ({e})") from None
    try:
      source = tfds.data_source(self.dataset, split=self.split, data_dir=self.data_dir, download=self.download)
    except Exception as e:  # tfds raises many kinds; say what was asked for, keep the cause
      hint = "" if self.download else " (download=False: only data already prepared under data_dir is read)"
      raise DataError(f"TFDS {self.dataset!r} split {self.split!r} in data_dir={self.data_dir!r} cannot be "
                      f"loaded{hint}: {type(e).__name__}: {e}") from e
    features = source.dataset_info.features
    names = list(features.keys()) if hasattr(features, "keys") else []
    if self.keys is not None and names:
      missing = [k for k in self.keys if k not in names]
      if missing:
        raise DataError(f"TFDS {self.dataset!r}: no feature {missing[0]!r}; available: {sorted(names)}")
    self._text_keys = tuple(k for k in names if type(features[k]).__name__ == "Text")
    return source

  def select(self, example, index):
    if self.keys is None:
      raise DataError(f"TFDS {self.dataset!r}: choose the features with keys=(...); available: {sorted(example)}")
    values = super().select(example, index)
    return tuple(v.decode("utf-8") if k in self._text_keys and isinstance(v, bytes) else v
                 for k, v in zip(self.keys, values))
