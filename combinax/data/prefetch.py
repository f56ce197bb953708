"""Prefetch: run the stages above in a background thread, `buffer_size` items ahead, and stay resumable.

The thread records the upstream pipeline's state right after producing each item and hands it over with the item;
`get_state()` returns the state recorded with the last item the consumer took, so a restored pipeline continues
exactly after it (items fetched ahead but not taken are produced again). Put `Prefetch` last, after `Batch`: then
one state is recorded per batch.
"""

from __future__ import annotations

import queue
import threading

from combinax.data.base import DataError, Stage, Stream

_END = object()


class _PrefetchStream(Stream):

  def __init__(self, stage, upstream):
    super().__init__(stage, upstream)
    self._queue: queue.Queue = queue.Queue(maxsize=stage.buffer_size)
    self._thread = None
    self._stop = threading.Event()
    self._errors: list = []   # a DataError from a non-resumable stage above, raised on get_state()
    self._last_state = None   # upstream state after the last item taken
    self._finished = False

  def _snapshot(self):
    return _snapshot(self.upstream, self._errors)

  def _start(self):
    if self._last_state is None:
      self._last_state = self._snapshot()
    # The thread holds no reference to this stream, so a stream dropped without close() is collected and its
    # __del__ stops the thread.
    self._thread = threading.Thread(target=_produce, args=(self.upstream, self._queue, self._stop, self._errors),
                                    name="combinax-prefetch", daemon=True)
    self._thread.start()

  def next(self):
    if self._finished:
      raise StopIteration
    if self._thread is None:
      self._start()
    item, state = self._queue.get()
    if item is _END:
      self._finished = True
      raise StopIteration
    if isinstance(item, BaseException):
      self._finished = True
      raise item
    self._last_state = state
    return item

  def get_state(self) -> list:
    if self._errors:
      raise self._errors[0]
    above = self._last_state if self._thread is not None else self.upstream.get_state()
    if above is None:
      raise DataError("Prefetch: no upstream state was recorded")
    return list(above) + [{"stage": self.stage.name, "state": None}]

  def set_state(self, state) -> None:
    if self._thread is not None:
      raise DataError("Prefetch: restore the state into a fresh stream, before taking any item from it")
    super().set_state(state)

  def close(self):
    self._stop.set()
    self._finished = True
    if self._thread is not None:
      self._thread.join(timeout=5)
    super().close()

  def __del__(self):
    self._stop.set()


def _snapshot(upstream: Stream, errors: list):
  if errors:
    return None
  try:
    return upstream.get_state()
  except DataError as e:   # a non-resumable stage above: still prefetch, but say why on get_state()
    errors.append(e)
    return None


def _put(q: queue.Queue, stop: threading.Event, entry) -> bool:
  while not stop.is_set():
    try:
      q.put(entry, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def _produce(upstream: Stream, q: queue.Queue, stop: threading.Event, errors: list):
  try:
    while not stop.is_set():
      try:
        item = next(upstream)
      except StopIteration:
        _put(q, stop, (_END, None))
        return
      if not _put(q, stop, (item, _snapshot(upstream, errors))):
        return
  except BaseException as e:  # hand any failure to the consumer, which re-raises it
    _put(q, stop, (e, None))


class Prefetch(Stage):
  """Produces up to `buffer_size` items ahead in a background thread; the state stays exact (see the module).

  >>> from combinax import data
  >>> stream = data.Serial(data.FromList([(i,) for i in range(5)]), data.Batch(2), data.Prefetch(2))()
  >>> [b[0].tolist() for b in stream]
  [[0, 1], [2, 3], [4]]
  """

  def __init__(self, buffer_size: int = 2):
    if buffer_size < 1:
      raise DataError(f"Prefetch: buffer_size must be >= 1, got {buffer_size}")
    self.buffer_size = buffer_size

  def stream(self, upstream):
    return _PrefetchStream(self, upstream)
