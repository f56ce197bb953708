"""Data on several hosts: every host reads the same global order, keeps its own rows of each global batch.

On a multi-host run (several JAX processes, `jax.distributed`), every process builds the same pipeline, and:
- a `Source` (anything read by index: `TFDS`, `TextLines`, `JSONL`, `Corpus`, `FromList`, ...) reads all of each
  epoch's order on every host, and every stage after it (shuffle buffer, tokenizer, packer, masking) runs the same
  on every host, so every host holds the same stream;
- `Batch(batch_size)` (and `BucketByLength`) makes the *global* batch from that stream and keeps this host's rows
  of it: host i of n the i-th of n equal parts. The Trainer assembles the hosts' rows into the global batch.
So the global batches are the one-host run's, row for row, on any number of hosts (2 processes x 4 devices train
as 1 process x 8), and the pipeline's position is the same on every host: the Trainer saves it once, and a run
stopped on 2 hosts resumes on 1 (or 4) at the exact data position. What it costs: each host reads and prepares
every example (tokenising is cheap next to a training step; an expensive per-example stage is paid n times).

A pipeline whose examples differ between hosts is *per host*: a source given its own `shard=(index, count)` (e.g.
per-host files), or a plain Python iterator (each host supplies its own). There `Batch` makes `batch_size / n`
rows from the host's own stream, as each host's position is its own: it is saved per host and resumes only on the
same host of the same number. Such a job trains on other global batches than one host would.

`as_host(index, count)` builds a pipeline as host `index` of `count` would, in any process (tests; reproducing what
one host of a job read), and `SimulatedHosts(pipeline, hosts)` makes, on one process, the very global batches a job
of `hosts` processes reads (for a per-host pipeline, the only way to see them on one machine).
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
  [2, 3]
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


def own_rows(examples: list, host: tuple[int, int]) -> tuple[list, int]:
  """(the rows of the global batch `examples` that `host` = (i, n) makes, how many examples no host gets): host i
  of n takes the i-th of n equal parts. Only a stream's last, smaller batch can leave some over: its last `len % n`
  examples, which the caller counts as dropped (one host cannot make a row more than the others)."""
  index, count = host
  rows = len(examples) // count
  return examples[index * rows:(index + 1) * rows], len(examples) - rows * count


def sharded_position(position: list) -> bool:
  """Whether a saved pipeline position (`stream.get_state()`) is of a source read per shard: a per-host position,
  which fits only the same host of the same number of hosts."""
  return any(isinstance(own, dict) and isinstance(own.get("state"), dict) and own["state"].get("shard") is not None
             for own in position)


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

  def reads_per_host(self):
    return False   # (what it makes is the job's global batches)

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
  >>> next(data.SimulatedHosts(pipeline, hosts=2)())[0].tolist()   # a global order: one host's batch
  [0, 1, 2, 3]
  >>> per_host = data.Serial(data.FromList([(i,) for i in range(8)], shard=(0, 1)), data.Batch(4))
  >>> with data.as_host(1, 2):   # (shard=(0, 1) stands for the host's own files: here host 1 reads them all)
  ...   next(per_host())[0].tolist()
  [0, 1]
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
