"""Batching: fixed-size batches padded to the batch's longest example, and batches bucketed by length.

A batch is a tuple of numpy arrays (one per example position), ready for `jax.device_put`. Positions holding
sequences of different lengths are padded with `pad_value` along their first axis.
"""

from __future__ import annotations

import bisect

import numpy as np

from combinax.data.base import DataError, Stage, Stream, as_keys, check_tuple
from combinax.data.hosts import current_host, host_batch_size
from combinax.data.transforms import length_of


def stack_examples(examples: list, pad_value=0, length: int | None = None) -> tuple:
  """Stacks examples (tuples) position by position into numpy arrays.

  Sequences are padded along their first axis to the longest one, or to `length` when given (positions whose
  arrays are longer than `length` keep their own maximum).

  >>> from combinax import data
  >>> data.stack_examples([(np.array([1, 2]), 0), (np.array([3]), 1)])
  (array([[1, 2],
         [3, 0]]), array([0, 1]))
  """
  if not examples:
    raise DataError("cannot make a batch of no examples")
  size = len(check_tuple(examples[0], "Batch"))
  if any(not isinstance(e, tuple) or len(e) != size for e in examples):
    bad = next(e for e in examples if not isinstance(e, tuple) or len(e) != size)
    raise DataError(f"Batch: examples differ in structure: {size} positions, then {bad!r:.80}")
  columns = []
  for k in range(size):
    values = [e[k] for e in examples]
    if isinstance(values[0], (str, bytes)) or np.ndim(values[0]) == 0:
      columns.append(np.asarray(values))
      continue
    arrays = [np.asarray(v) for v in values]
    if any(a.ndim != arrays[0].ndim for a in arrays):
      raise DataError(f"Batch: position {k} mixes ranks {sorted({a.ndim for a in arrays})}")
    shape = tuple(np.max([a.shape for a in arrays], axis=0))
    if length is not None:
      shape = (max(shape[0], length),) + shape[1:]
    dtype = np.result_type(*arrays)
    if all(a.shape == shape for a in arrays):
      columns.append(np.stack(arrays).astype(dtype, copy=False))
      continue
    out = np.full((len(arrays),) + shape, pad_value, dtype)
    for i, a in enumerate(arrays):
      out[(i,) + tuple(slice(0, d) for d in a.shape)] = a
    columns.append(out)
  return tuple(columns)


class _BatchStream(Stream):

  def __init__(self, stage, upstream):
    super().__init__(stage, upstream)
    self.size = host_batch_size(stage.batch_size, stage.name)
    self.dropped = 0

  def next(self):
    examples = []
    for _ in range(self.size):
      try:
        examples.append(next(self.upstream))
      except StopIteration:
        break
    if not examples:
      raise StopIteration
    if len(examples) < self.size and self.stage.drop_remainder:
      self.dropped += len(examples)
      raise StopIteration
    return stack_examples(examples, self.stage.pad_value)

  def state(self):
    return {"dropped": self.dropped}

  def restore(self, state):
    self.dropped = int(state["dropped"])

  def stats(self):
    return {"dropped": self.dropped} if self.stage.drop_remainder else {}


class Batch(Stage):
  """Groups `batch_size` examples into a batch, padding sequences to the longest in the batch.

  `batch_size` is global: on a job of n hosts each host makes `batch_size / n` rows (`combinax.data.hosts`).

  The last, smaller batch is kept unless `drop_remainder` (its examples are then counted as dropped).

  >>> from combinax import data
  >>> pipeline = data.Serial(data.FromList([(np.array([1, 2, 3]),), (np.array([4]),)]), data.Batch(2))
  >>> next(pipeline())
  (array([[1, 2, 3],
         [4, 0, 0]]),)
  """

  def __init__(self, batch_size: int, drop_remainder: bool = False, pad_value=0):
    if batch_size < 1:
      raise DataError(f"Batch: batch_size must be >= 1, got {batch_size}")
    self.batch_size = batch_size
    self.drop_remainder = drop_remainder
    self.pad_value = pad_value

  def stream(self, upstream):
    return _BatchStream(self, upstream)


class _BucketStream(Stream):

  def __init__(self, stage, upstream):
    super().__init__(stage, upstream)
    if current_host()[1] > 1:
      raise DataError("BucketByLength: its batch shapes depend on the data, so they would differ between hosts, and "
                      "a multi-host step needs one shape on all; on several hosts pad to fixed lengths "
                      "(TruncateToLength + PadToLength + Batch)")
    self._buckets = [[] for _ in stage.boundaries]
    self._exhausted = False
    self.dropped_long = 0
    self.dropped_remainder = 0

  def _emit(self, b: int) -> tuple:
    examples, self._buckets[b] = self._buckets[b], []
    length = self.stage.boundaries[b] if self.stage.pad_to_boundary else None
    return stack_examples(examples, self.stage.pad_value, length)

  def next(self):
    stage = self.stage
    while not self._exhausted:
      try:
        example = next(self.upstream)
      except StopIteration:
        self._exhausted = True
        break
      length = length_of(example, stage.length_keys, stage.name)
      b = bisect.bisect_left(stage.boundaries, length)
      if b == len(stage.boundaries):
        if stage.drop_long:
          self.dropped_long += 1
          continue
        raise DataError(f"BucketByLength: an example of length {length} (positions {stage.length_keys}) is "
                        f"longer than every bucket (largest boundary {stage.boundaries[-1]}); add a larger "
                        f"boundary, cut it with TruncateToLength, or pass drop_long=True to drop (and count) it")
      self._buckets[b].append(example)
      if len(self._buckets[b]) == stage.batch_sizes[b]:
        return self._emit(b)
    for b, bucket in enumerate(self._buckets):   # the stream ended: what is left, smallest bucket first
      if bucket:
        if stage.drop_remainder:
          self.dropped_remainder += len(bucket)
          self._buckets[b] = []
          continue
        return self._emit(b)
    raise StopIteration

  def state(self):
    return {"buckets": [list(b) for b in self._buckets], "exhausted": self._exhausted,
            "dropped_long": self.dropped_long, "dropped_remainder": self.dropped_remainder}

  def restore(self, state):
    if len(state["buckets"]) != len(self._buckets):
      raise DataError(f"BucketByLength: saved state has {len(state['buckets'])} buckets, this stage "
                      f"{len(self._buckets)}")
    self._buckets = [list(b) for b in state["buckets"]]
    self._exhausted = bool(state["exhausted"])
    self.dropped_long = int(state["dropped_long"])
    self.dropped_remainder = int(state["dropped_remainder"])

  def stats(self):
    return {"dropped_long": self.dropped_long, "dropped_remainder": self.dropped_remainder}


class BucketByLength(Stage):
  """Batches examples of similar length: bucket i takes lengths in (boundaries[i-1], boundaries[i]].

  A bucket is emitted when it holds `batch_sizes[i]` examples, padded to its boundary (`pad_to_boundary`, fixed
  shapes for `jax.jit`) or to its longest example. The length of an example is the largest first-axis length among
  `length_keys`. An example longer than the last boundary raises a DataError, unless `drop_long=True`: then it is
  dropped and counted (`stream.get_stats()`). When the stream ends, partial buckets come out as smaller batches
  (or are dropped and counted with `drop_remainder=True`).

  >>> from combinax import data
  >>> examples = [(np.ones(n, np.int32),) for n in (1, 5, 2, 6)]
  >>> stream = data.Serial(data.FromList(examples), data.BucketByLength([4, 8], [2, 2]))()
  >>> [b[0].shape for b in stream]
  [(2, 4), (2, 8)]
  """

  def __init__(self, boundaries, batch_sizes, length_keys=(0,), drop_long: bool = False,
               pad_to_boundary: bool = True, drop_remainder: bool = False, pad_value=0):
    boundaries, batch_sizes = list(boundaries), list(batch_sizes)
    if not boundaries or boundaries != sorted(set(boundaries)) or boundaries[0] < 1:
      raise DataError(f"BucketByLength: boundaries must be increasing positive lengths, got {boundaries}")
    if len(batch_sizes) != len(boundaries) or min(batch_sizes) < 1:
      raise DataError(f"BucketByLength: one batch size >= 1 per boundary: {len(boundaries)} boundaries, "
                      f"batch_sizes {batch_sizes}")
    self.boundaries = boundaries
    self.batch_sizes = batch_sizes
    self.length_keys = as_keys(length_keys)
    self.drop_long = drop_long
    self.pad_to_boundary = pad_to_boundary
    self.drop_remainder = drop_remainder
    self.pad_value = pad_value

  def stream(self, upstream):
    return _BucketStream(self, upstream)
