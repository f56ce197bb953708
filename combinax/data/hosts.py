"""Data on several hosts: each process reads its own shard, and batch sizes are global.

On a multi-host run (several JAX processes, `jax.distributed`), every process builds the same pipeline, and:
- every `Source` reads examples `i, i + n, i + 2n, ...` of each epoch's order, i being the process index and n the
  process count (unless it was given its own `shard=(index, count)`), so no two hosts read the same example;
- `Batch(batch_size)` means the *global* batch: each host makes `batch_size / n` rows, and the Trainer assembles the
  hosts' rows into one global batch (host 0's rows first). A recipe therefore trains the same model, with the same
  global batch, on one host or on many.
Each host's position in its shard is saved in the checkpoint, per host.

`as_host(index, count)` builds a pipeline as host `index` of `count` would, in any process (tests; reproducing what
one host of a job read), and `SimulatedHosts(pipeline, hosts)` makes, on one process, the very global batches a job
of `hosts` processes reads: run a multi-host recipe's data on one machine, or compare a multi-host run with one.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from combinax.data.base import DataError, Stage, Stream

_HOST: contextvars.ContextVar = contextvars.ContextVar("combinax_data_host", default=None)


def current_host() -> tuple[int, int]:
  """(index, count) of the host a pipeline is built for: `as_host`'s, else this JAX process's."""
  override = _HOST.get()
  if override is not None:
    return override
  import jax
  return jax.process_index(), jax.process_count()


@contextlib.contextmanager
def as_host(index: int, count: int):
  """Pipelines built (called) inside read and batch as host `index` of `count`.

  >>> from combinax import data
  >>> pipeline = data.Serial(data.FromList([(i,) for i in range(8)]), data.Batch(4))
  >>> with data.as_host(1, 2):
  ...   next(pipeline())[0].tolist()
  [1, 3]
  """
  if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
    raise DataError(f"as_host: need 0 <= index < count, got index={index!r}, count={count!r}")
  token = _HOST.set((index, count))
  try:
    yield
  finally:
    _HOST.reset(token)


def host_batch_size(global_size: int, stage: str) -> int:
  """The rows of a global batch of `global_size` that this host makes."""
  count = current_host()[1]
  if global_size % count:
    raise DataError(f"{stage}: the global batch size {global_size} is not a multiple of the {count} hosts "
                    f"(processes); each host makes batch_size / {count} rows")
  return global_size // count


class _SimulatedStream(Stream):

  def __init__(self, stage: "SimulatedHosts"):
    super().__init__(stage, None)
    self.streams = []
    for index in range(stage.hosts):
      with as_host(index, stage.hosts):
        self.streams.append(stage.pipeline())

  def next(self):
    parts = [next(stream) for stream in self.streams]
    if not all(isinstance(p, tuple) and len(p) == len(parts[0]) for p in parts):
      raise DataError("SimulatedHosts: the pipeline must yield batches (tuples of arrays) of the same arity")
    for position, arrays in enumerate(zip(*parts)):
      shapes = {np.shape(a)[1:] for a in arrays}
      if len(shapes) > 1:
        raise DataError(f"SimulatedHosts: the hosts' batches differ in shape at position {position} ({shapes}); a "
                        "multi-host job needs the same batch shape on every host")
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))

  def state(self):
    return [stream.get_state() for stream in self.streams]

  def restore(self, state):
    if not isinstance(state, list) or len(state) != len(self.streams):
      raise DataError(f"SimulatedHosts: the saved state is not one of {len(self.streams)} hosts")
    for stream, own in zip(self.streams, state):
      stream.set_state(own)

  def close(self):
    for stream in self.streams:
      stream.close()


class SimulatedHosts(Stage):
  """The global batches a job of `hosts` processes reads, made on one process: `pipeline` built as each host would
  build it (`as_host`), their batches concatenated in host order.

  >>> from combinax import data
  >>> pipeline = data.Serial(data.FromList([(i,) for i in range(8)]), data.Batch(4))
  >>> next(data.SimulatedHosts(pipeline, hosts=2)())[0].tolist()
  [0, 2, 1, 3]
  """

  is_source = True

  def __init__(self, pipeline: Stage, hosts: int = 2):
    if not callable(pipeline):
      raise DataError(f"SimulatedHosts: pipeline must be a data pipeline (e.g. data.Serial(...)), got {pipeline!r}")
    if not isinstance(hosts, int) or hosts < 1:
      raise DataError(f"SimulatedHosts: hosts must be an int >= 1, got {hosts!r}")
    self.pipeline, self.hosts = pipeline, hosts

  def stream(self, upstream):
    return _SimulatedStream(self)
