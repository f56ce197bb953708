"""Batching: fixed-size batches padded to the batch's longest example, and batches bucketed by length.

A batch is a tuple of numpy arrays (one per example position), ready for `jax.device_put`. Positions holding
sequences of different lengths are padded with `pad_value` along their first axis.
"""

from __future__ import annotations

import bisect

import numpy as np

from combinax.data.base import DataError, Stage, Stream, as_keys, check_tuple
from combinax.data.hosts import current_host, host_batch_size, own_rows
from combinax.data.transforms import length_of


def stack_examples(examples: list, pad_value=0, length: int | None = None, *, like: list | None = None) -> tuple:
  """Stacks examples (tuples) position by position into numpy arrays.

  Sequences are padded along their first axis to the longest one, or to `length` when given (positions whose
  arrays are longer than `length` keep their own maximum). With `like`, to the longest of `like` instead: a host's
  rows of a global batch are padded as the whole batch is, so every host's rows have one shape.

  >>> from combinax import data
  >>> data.stack_examples([(np.array([1, 2]), 0), (np.array([3]), 1)])
  (array([[1, 2],
         [3, 0]]), array([0, 1]))
  """
  like = examples if like is None else like
  if not examples:
    raise DataError("cannot make a batch of no examples")
  size = len(check_tuple(like[0], "Batch"))
  if any(not isinstance(e, tuple) or len(e) != size for e in like):
    bad = next(e for e in like if not isinstance(e, tuple) or len(e) != size)
    raise DataError(f"Batch: examples differ in structure: {size} positions, then {bad!r:.80}")
  columns = []
  for k in range(size):
    values = [e[k] for e in examples]
    if isinstance(values[0], (str, bytes)) or np.ndim(values[0]) == 0:
      columns.append(np.asarray(values))
      continue
    arrays = [np.asarray(v) for v in values]
    everyone = arrays if like is examples else [np.asarray(e[k]) for e in like]
    if any(a.ndim != everyone[0].ndim for a in everyone):
      raise DataError(f"Batch: position {k} mixes ranks {sorted({a.ndim for a in everyone})}")
    shape = tuple(np.max([a.shape for a in everyone], axis=0))
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
    size = host_batch_size(stage.batch_size, stage.name)   # (checks that the hosts divide the global batch)
    self.host = current_host()   # (the host it is built for: `as_host` may have ended when it runs)
    # A global order (every host reads the same stream): the whole global batch, of which this host keeps its rows.
    # A per-host stream: this host's rows are its own next examples.
    self.global_order = not upstream.reads_per_host()
    self.size = stage.batch_size if self.global_order else size
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
    if not self.global_order:
      return stack_examples(examples, self.stage.pad_value)
    rows, left_over = own_rows(examples, self.host)
    self.dropped += left_over
    if not rows:
      raise StopIteration
    whole = examples[:len(examples) - left_over]
    return stack_examples(rows, self.stage.pad_value, like=None if len(rows) == len(whole) else whole)

  def state(self):
    return {"dropped": self.dropped}

  def restore(self, state):
    self.dropped = int(state["dropped"])

  def stats(self):
    return {"dropped": self.dropped} if self.stage.drop_remainder or self.dropped else {}


class Batch(Stage):
  """Groups `batch_size` examples into a batch, padding sequences to the longest in the batch.

  `batch_size` is global: on a job of n hosts each host makes `batch_size / n` rows of it (`combinax.data.hosts`).

  The last, smaller batch is kept unless `drop_remainder` (its examples are then counted as dropped); on n hosts,
  its last `len % n` examples are dropped and counted (every host makes as many rows).

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
    self.host = current_host()   # (the host it is built for: `as_host` may have ended when it runs)
    hosts = self.host[1]
    if hosts > 1 and upstream.reads_per_host():
      raise DataError("BucketByLength: its batch shapes depend on the data, so on hosts that read their own shards "
                      "(a source's shard=, a plain iterator) they would differ, and a multi-host step needs one shape "
                      "on all; read a global order (no shard=) or pad to fixed lengths (PadToLength + Batch)")
    if any(size % hosts for size in stage.batch_sizes):
      raise DataError(f"BucketByLength: batch_sizes {stage.batch_sizes} are global batch sizes, each a multiple of "
                      f"the {hosts} hosts (processes)")
    self._buckets = [[] for _ in stage.boundaries]
    self._exhausted = False
    self.dropped_long = 0
    self.dropped_remainder = 0

  def _emit(self, b: int) -> tuple | None:
    """Bucket b's batch (this host's rows of it), or None when it leaves this host no row."""
    examples, self._buckets[b] = self._buckets[b], []
    length = self.stage.boundaries[b] if self.stage.pad_to_boundary else None
    rows, left_over = own_rows(examples, self.host)
    self.dropped_remainder += left_over
    whole = examples[:len(examples) - left_over]
    return stack_examples(rows, self.stage.pad_value, length, like=None if len(rows) == len(whole) else whole) \
        if rows else None

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
        batch = self._emit(b)
        if batch is not None:
          return batch
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
  (or are dropped and counted with `drop_remainder=True`). On n hosts reading a global order, `batch_sizes` are
  global (each a multiple of n) and each host keeps its rows of every batch, as with `Batch`.

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
