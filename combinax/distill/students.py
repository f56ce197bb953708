"""Students that start from their teacher (DistilBERT: every other layer of the teacher, same width)."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import gin
import numpy as np

from combinax.data.tokenizers import cache_root
from combinax.paths import unflatten
from combinax.store import checkpoints, rundir


class StudentError(ValueError):
  """A student cannot be cut from this teacher: the layers asked for are not there."""


def take_layers(params: Any, layers: Sequence[int], *, prefix: str = "blocks") -> Any:
  """`params` with every stacked block leaf (under `prefix/`, the layer axis first) cut to `layers`, e.g.
  `range(0, 30, 2)` for every other layer: the params of the same model with `len(layers)` layers. Other params
  (embeddings, final norm, head) are kept as they are."""
  layers = [int(i) for i in layers]
  if not layers:
    raise StudentError("take_layers: no layers asked for")
  found = {}

  def cut(path: str, leaf):
    if not path.startswith(prefix + "/"):
      return leaf
    n = np.shape(leaf)[0]
    found[path] = n
    if max(layers) >= n or min(layers) < -n:
      raise StudentError(f"take_layers: {path} has {n} layers, asked for layers {layers}")
    return np.asarray(leaf)[layers]

  from combinax.paths import leaves_with_paths
  flat = {path: cut(path, leaf) for path, leaf in leaves_with_paths(params)}
  if not found:
    raise StudentError(f"take_layers: no params under {prefix}/ (stacked blocks); the paths are like "
                       f"{list(flat)[:4]}")
  return unflatten(flat)


@gin.configurable(module="combinax.distill")
def student_checkpoint(teacher_checkpoint: str = gin.REQUIRED, layers: Sequence[int] = gin.REQUIRED) -> str:
  """A checkpoint of the teacher's params cut to `layers` (`take_layers`), for `Trainer.init_checkpoint`: the
  student (the teacher's model with `len(layers)` layers) starts from them. `teacher_checkpoint` is a checkpoint or
  a run directory (its newest checkpoint); the cut is written once to the cache
  (`$COMBINAX_CACHE/students/<hash>`), atomically, and reused."""
  source = checkpoints.checkpoint_or_latest(teacher_checkpoint)
  if source is None:
    raise StudentError(f"student_checkpoint: no checkpoint in {teacher_checkpoint}")
  manifest = checkpoints.read_manifest(source)
  # The leaves' checksums name the teacher's weights: another teacher (or a retrained one) gets another cut.
  key = hashlib.sha256(repr((manifest["leaves"], [int(i) for i in layers])).encode()).hexdigest()[:16]
  folder = cache_root() / "students" / key
  found = checkpoints.latest(folder)
  if found is not None:
    return str(found)
  params = take_layers(unflatten(checkpoints.read_arrays(source, prefix="params")), layers)
  with rundir.replaced_atomically(folder) as tmp:
    checkpoints.save(tmp, 0, {"params": params, "state": {}},
                     {"teacher_checkpoint": str(source), "layers": [int(i) for i in layers]})
  return str(checkpoints.latest(folder))
