"""Datasets the project makes itself (rendered images, spoken words), written once as shards and read by index.

A shard's examples are made from their own seeds, never from what an earlier shard drew, so a folder is written
shard by shard: `SHARD` examples' arrays in one
.npy and their texts in one .json, each file replaced whole, under the folder's lock; a write that stopped resumes
after the longest prefix of shards that read back whole, and a manifest of every file's sha256 is written last (a
folder without one is unfinished). `ShardedExamples` reads a finished folder by index, memory-mapping the arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from combinax.store import rundir

SHARD = 512


def spec_key(spec, version: int) -> str:
  """A made dataset's folder name: `<kind>-<split>-<hash>` of its spec (a dataclass), the version of how examples are
  made and the shard size, so another spec, drawing or shard size never reads this one's folder."""
  text = json.dumps({**dataclasses.asdict(spec), "version": version, "shard": SHARD}, sort_keys=True)
  return f"{spec.kind}-{spec.split}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def spec_manifest(spec, version: int) -> dict:
  """What a folder's manifest says of its spec (the files' digests are added when the last shard is written)."""
  return {"spec": dataclasses.asdict(spec), "key": spec_key(spec, version), "version": version, "shard": SHARD}


def shard_names(k: int) -> tuple[str, str]:
  return f"shard-{k:05d}.npy", f"shard-{k:05d}.json"


def _reads_back(folder: Path, key: str, size: int, k: int, shape: tuple, dtype) -> bool:
  arrays, texts = (folder / name for name in shard_names(k))
  try:
    record = json.loads(texts.read_text())
    array = np.load(arrays, mmap_mode="r")
  except (OSError, ValueError):
    return False
  count = min(SHARD, size - k * SHARD)
  return (record.get("spec") == key and len(record.get("examples", [])) == count
          and array.shape == (count,) + tuple(shape) and array.dtype == np.dtype(dtype))


def write_shards(folder: Path, *, key: str, size: int, make: Callable[[range], list], shape: tuple, dtype,
                 manifest: dict, lock_name: str, log=None, progress: Callable[[int], str] = str) -> Path:
  """Writes examples 0..size-1 to `folder`, a shard at a time (`make(indices)` -> [(array of `shape` and `dtype`,
  text, ...) for each index]), resuming after the shards already there that read back whole, then `manifest` with
  the files' digests; returns the folder.
  After each shard, `log(progress(examples written))`. A second writer of the folder is refused, naming the first
  (`rundir.locked(folder, lock_name)`)."""
  if (folder / "manifest.json").exists():
    return folder
  n_shards = -(-size // SHARD)
  with rundir.locked(folder, lock_name):
    start = 0
    while start < n_shards and _reads_back(folder, key, size, start, shape, dtype):
      start += 1
    for k in range(start, n_shards):
      indices = range(k * SHARD, min((k + 1) * SHARD, size))
      examples = make(indices)
      arrays = np.stack([np.asarray(e[0], dtype) for e in examples])
      arrays_name, texts_name = shard_names(k)
      with rundir.replaced_atomically(folder / arrays_name) as tmp:
        with open(tmp, "wb") as f:
          np.save(f, arrays)
      record = {"spec": key, "examples": [list(e[1:]) for e in examples]}
      rundir.write_atomically(folder / texts_name, json.dumps(record))
      if log:
        log(progress(indices.stop))
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
               for k in range(n_shards) for name in shard_names(k)}
    rundir.write_atomically(folder / "manifest.json", json.dumps({**manifest, "files": digests}, indent=1))
  return folder


class ShardedExamples:
  """The examples of a written folder by index: (array, text, ...), arrays memory-mapped, shard by shard."""

  def __init__(self, folder: Path, size: int):
    self.folder, self.size = Path(folder), size
    self._arrays, self._texts = {}, {}

  def __len__(self):
    return self.size

  def __getitem__(self, index: int):
    if not 0 <= index < self.size:
      raise IndexError(index)
    k, i = divmod(index, SHARD)
    if k not in self._arrays:
      arrays_name, texts_name = shard_names(k)
      self._arrays[k] = np.load(self.folder / arrays_name, mmap_mode="r")
      self._texts[k] = json.loads((self.folder / texts_name).read_text())["examples"]
    return (np.asarray(self._arrays[k][i]),) + tuple(self._texts[k][i])
