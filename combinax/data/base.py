"""Pipeline plumbing: `Stage` (a step's settings), `Stream` (a resumable iterator), `Serial` (composition).

A stage is called on the stream above it and returns a new `Stream`; a source is called with nothing. Every stream
knows its own position, so `stream.get_state()` returns the positions of all stages, source first, as a list of
small JSON-able dicts, and `stream.set_state(state)` on a freshly built stream of the same pipeline puts it exactly
where the first one was (see `combinax.data` for the whole design).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable



class DataError(ValueError):
  """Bad input data or a misused stage; the message names the file, line, field or stage concerned."""


class Stage:
  """A pipeline step: its settings only. `stage(upstream)` returns a fresh `Stream` running it.

  Subclasses set `is_source = True` (called with no upstream) or not, and implement `stream(upstream)`.
  """

  is_source = False

  @property
  def name(self) -> str:
    return type(self).__name__

  def __call__(self, upstream: Iterable | None = None) -> "Stream":
    if self.is_source:
      if upstream is not None:
        raise DataError(f"{self.name} is a source: it reads its own data and takes no upstream stream")
      return self.stream(None)
    if upstream is None:
      raise DataError(f"{self.name} transforms a stream: put a source before it in data.Serial(...)")
    return self.stream(as_stream(upstream))

  def stream(self, upstream: "Stream | None") -> "Stream":
    raise NotImplementedError

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
    return f"{self.name}({args})"


class Stream:
  """A resumable iterator of examples (tuples) or batches (tuples of numpy arrays).

  Subclasses implement `next()`, and `state()`/`restore(state)` when they keep anything between two calls
  (a buffer, a random generator, a position, a counter). Stateless streams keep the defaults.
  """

  def __init__(self, stage: Stage, upstream: "Stream | None"):
    self.stage = stage
    self.upstream = upstream

  def __iter__(self) -> "Stream":
    return self

  def __next__(self):
    return self.next()

  def next(self):
    raise NotImplementedError

  def state(self) -> Any:
    """This stage's own position (JSON-able, or numpy arrays); None when it keeps nothing."""
    return None

  def restore(self, state: Any) -> None:
    """Puts this stage back at a position `state()` returned."""
    if state is not None:
      raise DataError(f"{self.stage.name} keeps no state, but was given {state!r}")

  def reads_per_host(self) -> bool:
    """Whether this stream holds only this host's examples (a source with its own `shard=`, a plain iterator each
    host supplies), rather than the global order every host reads alike (`combinax.data.hosts`)."""
    return self.upstream.reads_per_host() if self.upstream is not None else True

  def stats(self) -> dict:
    """This stage's own counters (e.g. examples dropped); {} when it counts nothing."""
    return {}

  def get_state(self) -> list:
    """Positions of every stage from the source to this one: `[{"stage": name, "state": ...}, ...]`."""
    above = self.upstream.get_state() if self.upstream is not None else []
    return above + [{"stage": self.stage.name, "state": self.state()}]

  def set_state(self, state: list) -> None:
    """Restores positions saved by `get_state()` of a stream built from the same pipeline."""
    if not isinstance(state, (list, tuple)) or not state:
      raise DataError(f"a pipeline state is a non-empty list of stage states, got {type(state).__name__}")
    own = state[-1]
    if not isinstance(own, dict) or own.get("stage") != self.stage.name:
      found = own.get("stage") if isinstance(own, dict) else own
      raise DataError(f"pipeline state does not match the pipeline: stage {self.stage.name} was given the state "
                      f"of {found!r}; restore into a stream built from the same data.Serial(...)")
    if self.upstream is None:
      if len(state) != 1:
        raise DataError(f"pipeline state has {len(state)} stages, but this pipeline ends its chain at "
                        f"{self.stage.name}; restore into a stream built from the same data.Serial(...)")
    else:
      if len(state) < 2:
        raise DataError(f"pipeline state has too few stages for the pipeline above {self.stage.name}")
      self.upstream.set_state(list(state[:-1]))
    self.restore(own["state"])

  def get_stats(self) -> dict:
    """Counters of every stage, keyed `"Stage[position]/counter"` (position 0 is the source)."""
    chain = []
    stream = self
    while stream is not None:
      chain.append(stream)
      stream = stream.upstream
    chain.reverse()
    return {f"{s.stage.name}[{i}]/{k}": v for i, s in enumerate(chain) for k, v in s.stats().items()}

  def close(self) -> None:
    """Stops background work (see `Prefetch`) in this stream and those above it."""
    if self.upstream is not None:
      self.upstream.close()


class _IterableStream(Stream):
  """A plain Python iterable used as a stream: it runs, but cannot be saved and restored."""

  def __init__(self, iterable: Iterable, label: str):
    super().__init__(_Label(label), None)
    self._it = iter(iterable)

  def next(self):
    return next(self._it)

  def state(self):
    raise DataError(f"{self.stage.name} is a plain Python iterator, so the pipeline's position cannot be saved; "
                    f"use data sources and stages (data.TextLines, data.FromList, ...) for a resumable pipeline")


class _Label(Stage):

  def __init__(self, label: str):
    self._label = label

  @property
  def name(self) -> str:
    return self._label


def as_stream(upstream: Iterable) -> Stream:
  """A `Stream` as it is, or a plain iterable wrapped (not resumable)."""
  if isinstance(upstream, Stream):
    return upstream
  return _IterableStream(upstream, f"Iterable({type(upstream).__name__})")


class FnStage(Stage):
  """A plain function `iterator -> iterator` (Trax style) used as a stage; it runs but cannot be resumed."""

  def __init__(self, fn: Callable):
    self.fn = fn

  @property
  def name(self) -> str:
    return f"Fn({getattr(self.fn, '__name__', type(self.fn).__name__)})"

  def __call__(self, upstream=None) -> Stream:
    upstream = None if upstream is None else as_stream(upstream)
    stream = _IterableStream(self.fn(upstream), self.name)
    stream.upstream = upstream   # for close() and get_stats(); get_state() stops at this stage
    return stream


def _as_stage(item) -> Stage:
  if isinstance(item, Stage):
    return item
  if callable(item):
    return FnStage(item)
  raise DataError(f"data.Serial takes stages or functions iterator -> iterator, got {item!r}")


class Serial(Stage):
  """Composes stages: a source first, then transforms, each fed by the one before (nested Serials flatten).

  `Serial(...)()` returns the resumable `Stream` of the last stage; `Serial(...)(iterable)` feeds a pipeline
  without a source from `iterable` (not resumable then).

  >>> from combinax import data
  >>> pipeline = data.Serial(data.FromList([(1,), (2,), (3,)]), data.Batch(2))
  >>> [b[0].tolist() for b in pipeline()]
  [[1, 2], [3]]
  """

  def __init__(self, *stages):
    flat = []
    for item in stages:
      if isinstance(item, (list, tuple)):
        flat.extend(_as_stage(s) for s in item)
      elif isinstance(item, Serial):
        flat.extend(item.stages)
      else:
        flat.append(_as_stage(item))
    if not flat:
      raise DataError("data.Serial needs at least one stage")
    self.stages = tuple(flat)

  @property
  def is_source(self) -> bool:
    return self.stages[0].is_source

  def __call__(self, upstream: Iterable | None = None) -> Stream:
    first = self.stages[0]
    if upstream is None and not first.is_source and not isinstance(first, FnStage):
      raise DataError(f"this pipeline starts with {first.name}, which is not a source: put a source first "
                      f"(data.TFDS, data.TextLines, data.Corpus, ...) or call the pipeline on an iterable")
    stream = first(upstream)
    for stage in self.stages[1:]:
      stream = stage(stream)
    return stream

  def __repr__(self) -> str:
    return "Serial(" + ", ".join(repr(s) for s in self.stages) + ")"


def as_keys(keys) -> tuple[int, ...] | None:
  """The example positions a stage's `keys=` argument names, as a tuple: one position or a list/tuple of them;
  None (every position, where the stage allows it) stays None.

  >>> as_keys(0), as_keys([0, 2]), as_keys(None)
  ((0,), (0, 2), None)
  """
  if keys is None:
    return None
  return tuple(keys) if isinstance(keys, (list, tuple)) else (keys,)


def replace_at(example: tuple, key: int, value) -> tuple:
  """`example` with position `key` replaced by `value`."""
  items = list(example)
  items[key] = value
  return tuple(items)


def check_tuple(example, stage: str, keys: Iterable[int] = ()) -> tuple:
  """`example` if it is a tuple holding every position in `keys`, else a DataError naming the stage."""
  if not isinstance(example, tuple):
    raise DataError(f"{stage} expects examples as tuples (select fields with keys=(...) on the source), "
                    f"got {type(example).__name__}")
  for k in keys:
    if not -len(example) <= k < len(example):
      raise DataError(f"{stage}: example has {len(example)} position(s), no position {k}")
  return example
