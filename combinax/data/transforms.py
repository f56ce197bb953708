"""Per-example transforms (map, tokenize, filter, truncate, pad, loss weights) and the seeded shuffle buffer.

Examples are tuples; `keys` name the tuple positions a transform works on. Only `Shuffle` (its buffer and random
generator) and `FilterByLength` (its count of dropped examples) keep state between examples.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from combinax.data.base import DataError, Stage, Stream, as_keys, check_tuple, replace_at


def length_of(example: tuple, keys: Sequence[int], stage: str) -> int:
  """The largest length (first axis) among the positions `keys` of an example."""
  check_tuple(example, stage, keys)
  try:
    return max(len(example[k]) for k in keys)
  except TypeError:
    bad = next(k for k in keys if not hasattr(example[k], "__len__"))
    raise DataError(f"{stage}: position {bad} has no length ({type(example[bad]).__name__})") from None


class _MapStream(Stream):

  def __init__(self, stage, upstream, fn):
    super().__init__(stage, upstream)
    self._fn = fn

  def next(self):
    return self._fn(next(self.upstream))


class MapStage(Stage):
  """A stage applying `self.map(example)` to every example (stateless)."""

  def map(self, example):
    raise NotImplementedError

  def stream(self, upstream):
    return _MapStream(self, upstream, self.map)


class Map(MapStage):
  """Applies `fn` to each example, or to the positions `keys` of it when given.

  >>> from combinax import data
  >>> list(data.Serial(data.FromList([("a", 1)]), data.Map(str.upper, keys=0))())
  [('A', 1)]
  """

  def __init__(self, fn: Callable, keys=None):
    self.fn = fn
    self.keys = as_keys(keys)

  def map(self, example):
    if self.keys is None:
      return self.fn(example)
    check_tuple(example, self.name, self.keys)
    for k in self.keys:
      example = replace_at(example, k, self.fn(example[k]))
    return example


class Tokenize(MapStage):
  """Encodes the strings at positions `keys` (all string positions if None) to int32 ids with `tokenizer`.

  >>> from combinax import data
  >>> tok = data.CharTokenizer("abc")
  >>> next(data.Serial(data.FromList([("cab", 1)]), data.Tokenize(tok, keys=0))())
  (array([5, 3, 4], dtype=int32), 1)
  """

  def __init__(self, tokenizer, keys=None, append_eos: bool = False):
    self.tokenizer = tokenizer
    self.keys = as_keys(keys)
    self.append_eos = append_eos

  def _encode(self, text):
    ids = self.tokenizer.encode(text)
    if not self.append_eos:
      return ids
    out = np.empty(len(ids) + 1, np.int32)
    out[:-1] = ids
    out[-1] = self.tokenizer.eos_id
    return out

  def map(self, example):
    check_tuple(example, self.name, self.keys or ())
    keys = self.keys if self.keys is not None else [k for k, v in enumerate(example) if isinstance(v, str)]
    for k in keys:
      value = example[k]
      if isinstance(value, bytes):
        value = value.decode("utf-8")
      if not isinstance(value, str):
        raise DataError(f"Tokenize: position {k} holds {type(value).__name__}, not a string to encode")
      example = replace_at(example, k, self._encode(value))
    return example


class Detokenize(MapStage):
  """Decodes the id arrays at positions `keys` back to strings with `tokenizer` (padding and EOS dropped).

  >>> from combinax import data
  >>> tok = data.CharTokenizer("abc")
  >>> next(data.Serial(data.FromList([(np.array([5, 3, 4, 0]),)]), data.Detokenize(tok))())
  ('cab',)
  """

  def __init__(self, tokenizer, keys=(0,)):
    self.tokenizer = tokenizer
    self.keys = as_keys(keys)

  def map(self, example):
    check_tuple(example, self.name, self.keys)
    for k in self.keys:
      example = replace_at(example, k, self.tokenizer.decode(example[k]))
    return example


class _FilterStream(Stream):

  def __init__(self, stage, upstream):
    super().__init__(stage, upstream)
    self.dropped = 0

  def next(self):
    stage = self.stage
    while True:
      example = next(self.upstream)
      length = length_of(example, stage.length_keys, stage.name)
      if stage.min_length <= length <= stage.max_length:
        return example
      self.dropped += 1

  def state(self):
    return {"dropped": self.dropped}

  def restore(self, state):
    self.dropped = int(state["dropped"])

  def stats(self):
    return {"dropped": self.dropped}


class FilterByLength(Stage):
  """Keeps examples whose length (max over `length_keys`) is in [min_length, max_length]; counts the others.

  The count is in `stream.get_stats()` (`"FilterByLength[i]/dropped"`).

  >>> from combinax import data
  >>> stream = data.Serial(data.FromList([("ab",), ("abcd",)]), data.FilterByLength(3))()
  >>> list(stream), stream.get_stats()
  ([('ab',)], {'FilterByLength[1]/dropped': 1})
  """

  def __init__(self, max_length: int, min_length: int = 0, length_keys=(0,)):
    if max_length < min_length:
      raise DataError(f"FilterByLength: max_length {max_length} < min_length {min_length}")
    self.max_length = max_length
    self.min_length = min_length
    self.length_keys = as_keys(length_keys)

  def stream(self, upstream):
    return _FilterStream(self, upstream)


class TruncateToLength(MapStage):
  """Cuts the arrays (or strings) at positions `keys` to at most `length` items (along the first axis).

  >>> from combinax import data
  >>> next(data.Serial(data.FromList([(np.arange(5), 7)]), data.TruncateToLength(3))())
  (array([0, 1, 2]), 7)
  """

  def __init__(self, length: int, keys=(0,)):
    self.length = length
    self.keys = as_keys(keys)

  def map(self, example):
    check_tuple(example, self.name, self.keys)
    for k in self.keys:
      example = replace_at(example, k, example[k][:self.length])
    return example


def pad_to(array: np.ndarray, length: int, pad_value=0) -> np.ndarray:
  """`array` padded with `pad_value` along its first axis to `length` (which must not be shorter)."""
  array = np.asarray(array)
  extra = length - array.shape[0]
  if extra == 0:
    return array
  return np.concatenate([array, np.full((extra,) + array.shape[1:], pad_value, array.dtype)])


class PadToLength(MapStage):
  """Pads the arrays at positions `keys` with `pad_value` to exactly `length`; longer ones raise a DataError.

  >>> from combinax import data
  >>> next(data.Serial(data.FromList([(np.array([4, 5]),)]), data.PadToLength(4))())
  (array([4, 5, 0, 0]),)
  """

  def __init__(self, length: int, keys=(0,), pad_value=0):
    self.length = length
    self.keys = as_keys(keys)
    self.pad_value = pad_value

  def map(self, example):
    check_tuple(example, self.name, self.keys)
    for k in self.keys:
      value = np.asarray(example[k])
      if value.ndim == 0 or value.shape[0] > self.length:
        raise DataError(f"PadToLength: position {k} has shape {value.shape}, longer than length {self.length}; "
                        f"use TruncateToLength or FilterByLength before it")
      example = replace_at(example, k, pad_to(value, self.length, self.pad_value))
    return example


class AddLossWeights(MapStage):
  """Appends float32 loss weights: 0 where the targets (position `key`) equal `id_to_mask`, 1 elsewhere.

  Works on single examples and on batches alike.

  >>> from combinax import data
  >>> next(data.Serial(data.FromList([(np.array([3, 4, 0]), np.array([4, 5, 0]))]), data.AddLossWeights())())[2]
  array([1., 1., 0.], dtype=float32)
  """

  def __init__(self, id_to_mask=0, key: int = -1):
    self.id_to_mask = id_to_mask
    self.key = key

  def map(self, example):
    check_tuple(example, self.name, (self.key,))
    targets = np.asarray(example[self.key])
    if self.id_to_mask is None:
      return example + (np.ones(targets.shape, np.float32),)
    return example + ((targets != self.id_to_mask).astype(np.float32),)


class _ShuffleStream(Stream):

  def __init__(self, stage, upstream):
    super().__init__(stage, upstream)
    self._rng = np.random.Generator(np.random.PCG64(stage.seed))
    self._buffer: list = []
    self._exhausted = False

  def _pull(self):
    try:
      return True, next(self.upstream)
    except StopIteration:
      self._exhausted = True
      return False, None

  def next(self):
    buffer = self._buffer
    while not self._exhausted and len(buffer) < self.stage.buffer_size:
      got, example = self._pull()
      if got:
        buffer.append(example)
    if not buffer:
      raise StopIteration
    j = int(self._rng.random() * len(buffer))
    out = buffer[j]
    got, example = self._pull() if not self._exhausted else (False, None)
    if got:
      buffer[j] = example
    else:
      buffer[j] = buffer[-1]
      buffer.pop()
    return out

  def state(self):
    return {"rng": self._rng.bit_generator.state, "buffer": list(self._buffer), "exhausted": self._exhausted}

  def restore(self, state):
    self._rng.bit_generator.state = state["rng"]
    self._buffer = list(state["buffer"])
    self._exhausted = bool(state["exhausted"])


class Shuffle(Stage):
  """Shuffles through a buffer of `buffer_size` examples with a seeded generator (same seed, same order).

  The buffer and the generator are part of the pipeline state, so a restored stream continues the same order.

  >>> from combinax import data
  >>> [x for (x,) in data.Serial(data.FromList([(i,) for i in range(6)]), data.Shuffle(4, seed=1))()]
  [2, 3, 0, 4, 5, 1]
  """

  def __init__(self, buffer_size: int = 1024, seed: int = 0):
    if buffer_size < 1:
      raise DataError(f"Shuffle: buffer_size must be >= 1, got {buffer_size}")
    self.buffer_size = buffer_size
    self.seed = seed

  def stream(self, upstream):
    return _ShuffleStream(self, upstream)
