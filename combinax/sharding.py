"""Sharding with `jax.sharding`: a (data, model) mesh over all devices, batches split on `data`, parameters placed
by path-pattern rules (replicated by default; FSDP or tensor-parallel where a rule says so). A pipelined model gets a
`stage` axis in front, with its stacked blocks split over it (`pipeline_rules`).

A rule is `(pattern, spec)`: `pattern` a glob over `cx.paths(params)` (as everywhere in combinax), `spec` a
`PartitionSpec` or a function `(shape, mesh) -> PartitionSpec`. The first matching rule wins. A spec whose axes do
not divide the array's dimensions falls back to replication (so small or odd-sized leaves never fail).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from combinax.paths import leaves_with_paths, matches

# The mesh axes every part of combinax names: the batch is split on `data`, tensor-parallel kernels on `model`, a
# pipelined model's stages on `stage` (`combinax.parallel.Pipeline` reads them from here), a federated round's
# clients on `clients` (`combinax.federated`).
DATA, MODEL, STAGE, CLIENTS = "data", "model", "stage", "clients"
Spec = P | Callable[[tuple, Mesh], P]


def make_mesh(model_parallel: int = 1, devices: Sequence | None = None, *, pipeline_stages: int = 1) -> Mesh:
  """A 2-D mesh (`data`, `model`) over `devices` (default: all), `model_parallel` devices on the `model` axis;
  with `pipeline_stages` > 1, a 3-D one with a `stage` axis of that size in front.

  >>> make_mesh().shape["data"] == jax.device_count()
  True
  >>> dict(make_mesh(pipeline_stages=4).shape)
  {'stage': 4, 'data': 2, 'model': 1}
  """
  devices = list(devices if devices is not None else jax.devices())
  if model_parallel < 1 or pipeline_stages < 1 or len(devices) % (model_parallel * pipeline_stages):
    raise ValueError(f"make_mesh: pipeline_stages={pipeline_stages} x model_parallel={model_parallel} must divide "
                     f"the {len(devices)} devices (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                     "simulates 8)")
  if pipeline_stages == 1:
    return Mesh(np.array(devices).reshape(len(devices) // model_parallel, model_parallel), (DATA, MODEL))
  shape = (pipeline_stages, len(devices) // (model_parallel * pipeline_stages), model_parallel)
  return Mesh(np.array(devices).reshape(shape), (STAGE, DATA, MODEL))


def pipeline_rules() -> list:
  """The stacked blocks of a pipelined model (`blocks/...`, leading layer axis) split over the `stage` axis, so the
  layers of stage k, and their optimizer state, live on its devices."""
  return [("*blocks/*", P(STAGE))]


def running_on(mesh: Mesh):
  """The context a step runs in: the mesh itself (`jax.set_mesh`), which layers that place their own work read: a
  `Pipeline` its `stage` axis, a contrastive loss its `data` axis (`layers/contrastive.py`)."""
  return jax.set_mesh(mesh)


def shard_largest_axis(axis: str = DATA, min_size: int = 1024) -> Callable[[tuple, Mesh], P]:
  """FSDP: split the largest dimension that `axis` divides, for leaves with at least `min_size` entries."""
  def spec(shape, mesh):
    size = mesh.shape[axis]
    if int(np.prod(shape)) < min_size:
      return P()
    candidates = [i for i in np.argsort(shape)[::-1] if shape[i] % size == 0]
    if not candidates:
      return P()
    parts = [None] * len(shape)
    parts[candidates[0]] = axis
    return P(*parts)
  return spec


def shard_axis(dim: int = -1, axis: str = MODEL) -> Callable[[tuple, Mesh], P]:
  """Tensor parallelism: split dimension `dim` (e.g. -1, the output features of a kernel) over mesh `axis`."""
  def spec(shape, mesh):
    parts = [None] * len(shape)
    if shape:
      parts[dim % len(shape)] = axis
    return P(*parts)
  return spec


def fsdp_rules(min_size: int = 1024) -> list:
  """Every parameter with at least `min_size` entries split over the `data` axis (ZeRO-3 style)."""
  return [("*", shard_largest_axis(DATA, min_size))]


def tensor_parallel_rules() -> list:
  """Megatron-style splits of attention and feed-forward kernels over the `model` axis: the q/k/v and first
  feed-forward kernels by output features, the attention output and last feed-forward kernels by input features."""
  return [("*attention/[qkv]/kernel", shard_axis(-1)), ("*attention/[qkv]/bias", shard_axis(-1)),
          ("*attention/o/kernel", shard_axis(-2)),
          ("*ff/in/kernel", shard_axis(-1)), ("*ff/in/bias", shard_axis(-1)),
          ("*ff/gate/kernel", shard_axis(-1)), ("*ff/up/kernel", shard_axis(-1)),
          ("*ff/out/kernel", shard_axis(-2)), ("*ff/down/kernel", shard_axis(-2))]


def _fits(spec: P, shape: tuple, mesh: Mesh) -> bool:
  if len(spec) > len(shape):
    return False
  for dim, names in zip(shape, spec):
    names = () if names is None else (names if isinstance(names, tuple) else (names,))
    if dim % int(np.prod([mesh.shape[n] for n in names])):
      return False
  return True


def spec_for(path: str, shape: tuple, mesh: Mesh, rules: Iterable[tuple[str, Spec]] = ()) -> P:
  """The PartitionSpec of one leaf: the first rule whose pattern matches `path`, replicated when none fits."""
  for pattern, spec in rules:
    if matches(path, pattern):
      spec = spec(tuple(shape), mesh) if callable(spec) else spec
      return spec if _fits(spec, tuple(shape), mesh) else P()
  return P()


def tree_shardings(tree, mesh: Mesh, rules: Iterable[tuple[str, Spec]] = ()):
  """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs), by the rules."""
  rules = list(rules)
  flat = leaves_with_paths(tree)
  shardings = [NamedSharding(mesh, spec_for(path, np.shape(leaf) if not hasattr(leaf, "shape") else leaf.shape,
                                            mesh, rules)) for path, leaf in flat]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split along their leading axis over `data` and replicated over `model`."""
  return NamedSharding(mesh, P(DATA))


def shard_batch(batch, mesh: Mesh):
  """Places every array of `batch` on the mesh, split along its leading (batch) axis. On several hosts, each host
  passes its own rows (its data shard: `combinax.data.hosts`) and the hosts' rows, host 0's first, form the global
  batch."""
  size, hosts = mesh.shape[DATA], jax.process_count()
  for leaf in jax.tree_util.tree_leaves(batch):
    if np.ndim(leaf) == 0 or (np.shape(leaf)[0] * hosts) % size:
      rows = f"{hosts} hosts x {np.shape(leaf)[0] if np.ndim(leaf) else 0} rows" if hosts > 1 else \
          f"an array of shape {np.shape(leaf)}"
      raise ValueError(f"shard_batch: the global batch size must be a multiple of the {size} data-parallel "
                       f"devices; got {rows}")
  if hosts > 1:  # each host holds its own part of the global batch
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(x)), batch)
  return jax.device_put(batch, batch_sharding(mesh))
