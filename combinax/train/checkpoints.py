"""Checkpoints of any pytree (a train state), written atomically, verified on load, never pickled.

A checkpoint is a directory `step_00000042/` holding `arrays.npz` (one entry per leaf, keyed by its path, loaded with
`allow_pickle=False`) and `manifest.json` (step, each leaf's path, shape and dtype, the archive's sha256, and free
JSON metadata such as the data pipeline's position or metrics). It is written to a temporary directory and renamed
into place only when complete, so a run killed mid-save leaves the previous checkpoints as they were. Loading checks
the sha256 and every path, shape and dtype against a *template* tree (e.g. a freshly initialised train state), and
places each array with the template leaf's sharding. PRNG keys are stored as their raw key data.

`CheckpointManager` keeps the last `keep` checkpoints, plus the best one by a metric if asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from combinax.paths import leaves_with_paths

_NAME = re.compile(r"^step_(\d{8,})$")
FORMAT = "combinax-checkpoint-v1"


class CheckpointError(ValueError):
  """A checkpoint is missing, damaged, or does not fit the tree it is restored into."""


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _is_key(leaf) -> bool:
  return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _fsync_dir(path: Path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def save(directory: str | os.PathLike, step: int, tree: Any, metadata: dict | None = None) -> Path:
  """Writes `tree` as checkpoint `step` under `directory` (atomically); returns its path."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  final = directory / f"step_{int(step):08d}"
  leaves = leaves_with_paths(tree)
  arrays, entries = {}, []
  for index, (path, leaf) in enumerate(leaves):
    key = _is_key(leaf)
    value = np.asarray(jax.random.key_data(leaf) if key else jax.device_get(leaf))
    arrays[f"leaf_{index:06d}"] = value
    entries.append({"path": path, "shape": list(value.shape), "dtype": value.dtype.name,
                    "prng_key": str(jax.random.key_impl(leaf)) if key else None})
  tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=directory))
  try:
    with open(tmp / "arrays.npz", "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    manifest = {"format": FORMAT, "step": int(step), "leaves": entries, "sha256": _sha256(tmp / "arrays.npz"),
                "metadata": metadata or {}}
    with open(tmp / "manifest.json", "w") as f:
      json.dump(manifest, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    if final.exists():  # re-saving a step (e.g. after a restart): replace it whole
      shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


def read_manifest(checkpoint: str | os.PathLike) -> dict:
  """The manifest of one checkpoint directory (step, leaves, metadata)."""
  path = Path(checkpoint) / "manifest.json"
  try:
    manifest = json.loads(path.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{checkpoint}: no manifest.json; not a complete combinax checkpoint") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: the manifest is damaged ({e})") from None
  if manifest.get("format") != FORMAT:
    raise CheckpointError(f"{path}: unknown format {manifest.get('format')!r}, expected {FORMAT!r}")
  return manifest


def restore(checkpoint: str | os.PathLike, template: Any, prefix: str = "") -> tuple[Any, dict]:
  """Loads a checkpoint into the structure of `template`; returns (tree, metadata).

  Every path, shape and dtype must match the template's; arrays take the template leaves' shardings. With
  `prefix` (e.g. "params"), only the saved subtree under it is loaded (e.g. a model's params from a train state).
  """
  tree, metadata, _ = _restore(checkpoint, template, prefix, partial=False)
  return tree, metadata


def restore_matching(checkpoint: str | os.PathLike, template: Any, prefix: str = "") -> tuple[Any, list[str]]:
  """Loads the leaves of `template` that the checkpoint has; the others keep the template's (concrete) values.

  For fine-tuning: a pretrained body into a model with a new head or adapters. Every saved leaf under `prefix` must
  exist in the template with its shape and dtype. Returns (tree, the paths that kept their template values).
  """
  tree, _, kept = _restore(checkpoint, template, prefix, partial=True)
  return tree, kept


def _restore(checkpoint, template, prefix: str, partial: bool):
  checkpoint = Path(checkpoint)
  manifest = read_manifest(checkpoint)
  archive = checkpoint / "arrays.npz"
  if not archive.exists() or _sha256(archive) != manifest["sha256"]:
    raise CheckpointError(f"{archive}: missing, truncated or corrupted (its sha256 differs from the manifest's); "
                          "restore an older checkpoint instead")
  template_leaves = leaves_with_paths(template)
  indexed = list(enumerate(manifest["leaves"]))
  if prefix:
    start = prefix.rstrip("/") + "/"
    indexed = [(i, {**e, "path": e["path"][len(start):]}) for i, e in indexed if e["path"].startswith(start)]
  saved = {entry["path"]: (index, entry) for index, entry in indexed}
  wanted_paths = [path for path, _ in template_leaves]
  missing, extra = sorted(set(wanted_paths) - set(saved)), sorted(set(saved) - set(wanted_paths))
  if extra or (missing and not partial) or (not partial and list(saved) != wanted_paths):
    raise CheckpointError(f"{checkpoint}: the checkpoint does not fit this model/optimizer: missing {missing[:5]}, "
                          f"unexpected {extra[:5]}")
  values = []
  with np.load(archive, allow_pickle=False) as data:
    for path, like in template_leaves:
      if path not in saved:
        values.append(like)
        continue
      index, entry = saved[path]
      value = data[f"leaf_{index:06d}"]
      if entry["prng_key"]:
        value = jax.random.wrap_key_data(value, impl=entry["prng_key"])
      expected_shape = tuple(like.shape)
      expected_dtype = like.dtype
      if tuple(value.shape) != expected_shape or value.dtype != expected_dtype:
        raise CheckpointError(f"{checkpoint}: {path} is {value.dtype}{list(value.shape)} in the checkpoint but "
                              f"{expected_dtype}{list(expected_shape)} in the model")
      sharding = getattr(like, "sharding", None)
      values.append(jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value))
  treedef = jax.tree_util.tree_structure(template)
  return jax.tree_util.tree_unflatten(treedef, values), manifest["metadata"], missing


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
  """Complete checkpoints under `directory`, oldest first (temporary directories of unfinished saves are skipped)."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  found = [p for p in directory.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "manifest.json").exists()]
  return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(directory: str | os.PathLike) -> Path | None:
  """The newest complete checkpoint under `directory`, or None."""
  found = list_checkpoints(directory)
  return found[-1] if found else None


class CheckpointManager:
  """Saves checkpoints under `directory`, keeping the last `keep` and (with `best_metric`) the best one.

  `mode="min"` keeps the lowest value of `metadata["metrics"][best_metric]`, `"max"` the highest.
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 3, best_metric: str | None = None,
               mode: str = "min"):
    if keep < 1:
      raise ValueError(f"CheckpointManager: keep must be >= 1, got {keep}")
    if mode not in ("min", "max"):
      raise ValueError(f"CheckpointManager: mode must be 'min' or 'max', got {mode!r}")
    self.directory, self.keep, self.best_metric, self.mode = Path(directory), keep, best_metric, mode

  def _score(self, checkpoint: Path):
    value = read_manifest(checkpoint)["metadata"].get("metrics", {}).get(self.best_metric)
    if value is None:
      return None
    return value if self.mode == "min" else -value

  def best(self) -> Path | None:
    """The best checkpoint by `best_metric`, or None."""
    if self.best_metric is None:
      return None
    scored = [(s, p) for p in list_checkpoints(self.directory) if (s := self._score(p)) is not None]
    return min(scored, key=lambda sp: sp[0])[1] if scored else None

  def save(self, step: int, tree: Any, metadata: dict | None = None) -> Path:
    path = save(self.directory, step, tree, metadata)
    keep = set(list_checkpoints(self.directory)[-self.keep:])
    best = self.best()
    if best is not None:
      keep.add(best)
    for old in list_checkpoints(self.directory):
      if old not in keep:
        shutil.rmtree(old)
    return path

  def latest(self) -> Path | None:
    return latest(self.directory)
