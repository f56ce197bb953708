"""A teacher's top-k logits, computed once over a corpus and stored beside its tokens, then read back as batches for
a distillation run that costs about a student's training (no teacher forward per step).

    python -m combinax.distill topk --config_file=configs/distill_smollm2_kjv.gin --output_dir=runs/smollm2_topk

`teacher_topk` (gin-configurable) runs the teacher in eval mode on `batches` batches of its data pipeline's
`(tokens, targets, weights)` and writes one `topk-NNNNN.npz` per batch (tokens, targets, weights, the
log-probabilities of its k likeliest tokens as float32 `values` and their token `ids`), each file written whole or
not at all, and a `topk.json` saying what made them. Log-probabilities, not logits: with them the loss knows the
probability of the tokens left out (one minus theirs).
Rerun, it goes on after the batches already written (the pipeline is deterministic). `TopKBatches`
reads a folder back as `(tokens, values, ids, targets, weights)` batches for `cl.DistillationLoss(top_k=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import gin
import jax
import numpy as np

from combinax.data.base import DataError
from combinax.data.sources import Source
from combinax.layers.base import Layer
from combinax.store import checkpoints, rundir
from combinax.store.session import RunSession

SHARD = "topk-{:05d}.npz"
VALUES = "log-probabilities"   # what a shard's `values` hold (folders of the first version held raw logits)


def _written(folder: Path) -> int:
  """How many batches are written: shards 0, 1, ... without a gap."""
  n = 0
  while (folder / SHARD.format(n)).exists():
    n += 1
  return n


@gin.configurable(module="combinax.distill")
def teacher_topk(output_dir: str, teacher: Layer | Callable = gin.REQUIRED, teacher_checkpoint: str = gin.REQUIRED,
                 data: Callable = gin.REQUIRED, k: int = 32, batches: int = gin.REQUIRED) -> Path:
  """Writes the teacher's top-`k` logits for the first `batches` batches of `data` (a pipeline of `(tokens, targets,
  weights)` batches) to `output_dir`; returns it. See the module's docstring."""
  folder = Path(output_dir)
  with RunSession(folder).held():   # one writer at a time; what a killed one was writing is cleared
    _write_topk(folder, teacher, teacher_checkpoint, data, k, batches)
  return folder


def _write_topk(folder: Path, teacher, teacher_checkpoint: str, data: Callable, k: int, batches: int):
  teacher = teacher if isinstance(teacher, Layer) else teacher(mode="eval")
  source = checkpoints.checkpoint_or_latest(teacher_checkpoint)
  if source is None:
    raise DataError(f"teacher_topk: no checkpoint in {teacher_checkpoint}")
  about = {"teacher": str(teacher), "teacher_checkpoint": str(source), "k": int(k), "batches": int(batches),
           "values": VALUES}
  meta = folder / "topk.json"
  if meta.exists():
    before = json.loads(meta.read_text())
    same = ("teacher", "k", "values")
    if {key: before.get(key) for key in same} != {key: about[key] for key in same}:
      raise DataError(f"teacher_topk: {folder} holds top-{before.get('k')} {before.get('values', 'logits')} of "
                      "another teacher or another kind; choose another output_dir")
  rundir.write_atomically(meta, json.dumps(about, indent=1))
  done = _written(folder)
  stream = data()
  first = next(stream)
  signature = jax.ShapeDtypeStruct(np.shape(first[0]), np.asarray(first[0]).dtype)
  template = jax.eval_shape(lambda: teacher.init(jax.random.key(0), signature)[0])
  params = checkpoints.restore(source, template, prefix="params")[0]
  log_probs = lambda p, ids: jax.nn.log_softmax(teacher.apply(p, {}, ids)[0].astype(np.float32), axis=-1)
  top = jax.jit(lambda p, ids: jax.lax.top_k(log_probs(p, ids), k))
  for index in range(batches):
    batch = first if index == 0 else next(stream)
    if index < done:
      continue
    tokens, targets, weights = (np.asarray(x) for x in batch)
    values, ids = top(params, tokens)
    with rundir.replaced_atomically(folder / SHARD.format(index)) as tmp, open(tmp, "wb") as f:
      np.savez(f, tokens=tokens, targets=targets, weights=weights, values=np.asarray(values),
               ids=np.asarray(ids, np.int32))


class _Shards:
  """The folder's batches as a sequence (each read when asked for)."""

  def __init__(self, folder: Path, n: int):
    self.folder, self.n = folder, n

  def __len__(self):
    return self.n

  def __getitem__(self, index: int):
    with np.load(self.folder / SHARD.format(index)) as shard:
      return tuple(shard[key] for key in ("tokens", "values", "ids", "targets", "weights"))


@gin.configurable(module="combinax.distill")
class TopKBatches(Source):
  """The batches `teacher_topk` wrote to `folder`, as `(tokens, values, ids, targets, weights)` (values: the teacher's
  log-probabilities of its top-k tokens `ids`): the model's inputs,
  then what `cl.DistillationLoss(top_k=True)` takes after the model's logits. `shuffle` / `repeat` / `shard` as for
  every source (whole batches are the examples)."""

  def __init__(self, folder: str = gin.REQUIRED, **options):
    super().__init__(None, **options)
    self.folder = Path(folder)

  def describe(self) -> str:
    return f"teacher top-k logits in {self.folder}"

  def load(self):
    meta = self.folder / "topk.json"
    if not meta.exists():
      raise DataError(f"{self.folder}: no teacher top-k logits here (topk.json is missing); write them with "
                      "python -m combinax.distill topk")
    held = json.loads(meta.read_text()).get("values", "logits")
    if held != VALUES:
      raise DataError(f"{self.folder}: holds the teacher's top-k {held}, DistillationLoss(top_k=True) takes its "
                      f"{VALUES}; write them again with python -m combinax.distill topk")
    return _Shards(self.folder, _written(self.folder))
