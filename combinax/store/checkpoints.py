"""Checkpoints of any pytree (a train state) on Orbax: each process writes only its own shards, saves can run while
training goes on, commits are atomic, and nothing damaged is ever loaded as if it were whole. Nothing is pickled.

A checkpoint is a directory `step_00000042/`, written by Orbax in a temporary directory and renamed into place once
every process has finished its part. It holds:

    state/     the arrays (Orbax PyTree, OCDBT), as nested dicts by readable path (`params/blocks/attention/q/kernel`);
               every process writes the shards it holds, so a sharded model is never gathered on one host.
    manifest/  manifest.json: the step, the number of processes, every leaf's path, shape, dtype and checksum (see
               `integrity`), free JSON metadata (metrics, ...), and a sha256 of all of it.
    hosts/     process_<i>-of-<n>.json: what belongs to one process, e.g. its data pipeline's position (every host
               reads its own shard of the data), with a sha256.

Loading checks the manifest's digest, every path, shape and dtype against a *template* tree (e.g. a freshly
initialised train state), places each array with the template leaf's sharding (any mesh, any number of processes:
a checkpoint of 2 processes on 8 devices loads in 1 process on 2), and compares every array's checksum with the
manifest's. A checkpoint that fails any check raises a `CheckpointError` naming what is wrong; `CheckpointManager`
then sets it aside and the Trainer falls back to the previous one. PRNG keys are stored as their raw key data.

Checkpoints written by combinax 0.1 (`arrays.npz` + `manifest.json`, see `checkpoint_v1`) load through the same
functions: old runs resume, fine-tune (`init_checkpoint`) and serve as pretrained caches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from combinax.paths import leaves_with_paths, unflatten
from combinax.store import checkpoint_v1, integrity

_NAME = re.compile(r"^step_(\d{8,})$")
FORMAT = "combinax-checkpoint-v2"
_STATE, _MANIFEST, _HOSTS = "state", "manifest", "hosts"
# Leftovers of a process killed mid-save or mid-delete: never checkpoints, removed when a manager starts.
_LEFTOVER = re.compile(r"^(step_\d{8,}\.orbax-checkpoint-tmp.*|\.step_\d{8,}\.tmp-.*|\.deleting-step_\d{8,})$")


class CheckpointError(ValueError):
  """A checkpoint is missing, damaged, or does not fit the tree it is restored into."""


class CheckpointMismatchError(CheckpointError):
  """A whole checkpoint of another model or optimizer: its paths, shapes or dtypes differ from the template's."""


def _ocp():
  import orbax.checkpoint as ocp   # imported when first needed: `import combinax` stays light
  return ocp


def _host_file(index: int, count: int) -> str:
  return f"process_{index}-of-{count}.json"


_handler_types: dict = {}


def _handler():
  """The composite handler of a checkpoint's three items (its classes made once, on first use)."""
  ocp = _ocp()
  if not _handler_types:

    class HostsHandler(ocp.handlers.JsonCheckpointHandler):
      """Every process writes its own JSON file (Orbax's JSON handler writes on the primary host only)."""

      async def _save_fn(self, x, directory):
        (directory / _host_file(jax.process_index(), jax.process_count())).write_text(json.dumps(x))

    @ocp.args.register_with_handler(HostsHandler, for_save=True)
    @dataclasses.dataclass
    class HostsSave(ocp.args.CheckpointArgs):
      item: dict

    @ocp.args.register_with_handler(HostsHandler, for_restore=True)
    @dataclasses.dataclass
    class HostsRestore(ocp.args.CheckpointArgs):   # unused (read_host_metadata reads the file), but Orbax wants one
      item: dict | None = None

    _handler_types.update(handler=HostsHandler, save=HostsSave)
  return ocp.handlers.CompositeCheckpointHandler(**{
      # Uncompressed: zstd took most of a save's CPU time and saved little on float weights (benchmarks/RESULTS.md).
      _STATE: ocp.handlers.PyTreeCheckpointHandler(use_compression=False),
      _MANIFEST: ocp.handlers.JsonCheckpointHandler(filename="manifest.json"),
      _HOSTS: _handler_types["handler"]()})


def _is_key(leaf) -> bool:
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _stored_form(leaf) -> tuple[tuple, str]:
  """(shape, dtype name) of what a leaf is stored as (a PRNG key as its key data)."""
  if _is_key(leaf):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
  return tuple(np.shape(leaf)), np.dtype(dtype).name


def _nest(flat: dict[str, Any]) -> dict:
  """{"a/b/c": x} -> {"a": {"b": {"c": x}}}: the stored tree reads as the params' paths."""
  try:
    nested = unflatten(flat)
  except ValueError as e:
    raise CheckpointError(f"cannot store this tree: {e}") from None
  if len(jax.tree_util.tree_leaves(nested, is_leaf=lambda x: x is None)) != len(flat):
    raise CheckpointError("cannot store this tree: a leaf's path is also another's subtree")
  return nested


def _lookup(nested: dict, path: str):
  for part in path.split("/"):
    nested = nested[part]
  return nested


def all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (each process reads its own shards, so one may fail alone)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.array([int(ok)], np.int32))))


def _barrier(name: str):
  if jax.process_count() > 1:
    _ocp().multihost.sync_global_processes(f"combinax:{name}")


# --- Saving -----------------------------------------------------------------------------------------------------


def _save_args(step: int, tree: Any, metadata: dict | None, host_metadata: dict | None):
  """Orbax's arguments for one checkpoint: the arrays by path, the sealed manifest and this process's host record."""
  ocp = _ocp()
  flat, entries = {}, []
  for path, leaf in leaves_with_paths(tree):
    key = _is_key(leaf)
    value = jax.random.key_data(leaf) if key else leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
    flat[path] = value
    entries.append({"path": path, "shape": list(value.shape), "dtype": np.dtype(value.dtype).name,
                    "prng_key": str(jax.random.key_impl(leaf)) if key else None})
  for entry, checksum in zip(entries, integrity.checksums(list(flat.values()))):
    entry["checksum"] = checksum
  try:
    manifest = integrity.sealed({"format": FORMAT, "step": int(step), "processes": jax.process_count(),
                                 "leaves": entries, "metadata": metadata or {}})
    host = integrity.sealed({"process_index": jax.process_index(), "process_count": jax.process_count(),
                             "metadata": host_metadata or {}})
  except TypeError as e:
    raise CheckpointError(f"checkpoint metadata must be JSON (numbers, strings, lists, dicts): {e}") from None
  items = {_MANIFEST: ocp.args.JsonSave(manifest), _HOSTS: _handler_types["save"](host)}
  if flat:
    items[_STATE] = ocp.args.PyTreeSave(_nest(flat))
  return ocp.args.Composite(**items)


def _step_path(directory: Path, step: int) -> Path:
  return directory / f"step_{int(step):08d}"


def _remove(checkpoint: Path):
  """Deletes a checkpoint so that no half-deleted directory ever looks like one: renamed first, then removed."""
  doomed = checkpoint.with_name(f".deleting-{checkpoint.name}")
  os.rename(checkpoint, doomed)
  shutil.rmtree(doomed)


def save(directory: str | os.PathLike, step: int, tree: Any, metadata: dict | None = None, *,
         host_metadata: dict | None = None) -> Path:
  """Writes `tree` as checkpoint `step` under `directory` and waits until it is committed; returns its path.

  `metadata` (JSON) is shared by all processes (process 0's is written); `host_metadata` (JSON) is kept per process.
  A checkpoint already at `step` is replaced.
  """
  directory = Path(directory)
  manager = CheckpointManager(directory, keep=1 << 30, asynchronous=False, clean_up=False)
  try:
    return manager.save(step, tree, metadata, host_metadata=host_metadata)
  finally:
    manager.close()


# --- Reading ----------------------------------------------------------------------------------------------------


def read_manifest(checkpoint: str | os.PathLike) -> dict:
  """The manifest of one checkpoint directory (step, leaves, metadata), checked against its digest."""
  checkpoint = Path(checkpoint)
  if checkpoint_v1.is_v1(checkpoint):
    return checkpoint_v1.read_manifest(checkpoint, CheckpointError)
  path = checkpoint / _MANIFEST / "manifest.json"
  try:
    manifest = json.loads(path.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{checkpoint}: no {_MANIFEST}/manifest.json; not a complete combinax checkpoint") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: the manifest is damaged ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise CheckpointError(f"{path}: unknown format {found!r}, expected {FORMAT!r}")
  if not integrity.is_intact(manifest):
    raise CheckpointError(f"{path}: the manifest was changed or damaged after it was written (its sha256 does not "
                          "match its contents)")
  _check_leaf_paths(manifest, path)
  return manifest


def _check_leaf_paths(manifest: dict, path: Path):
  """Every leaf's path is one a tree gives (names joined by "/"): a manifest with another ("../x", "", "a//b")
  was not written by combinax, and Orbax, asked for it, hands back no array but a placeholder (a bare TypeError
  further on, naming neither the checkpoint nor the path)."""
  leaves = manifest.get("leaves")
  if not isinstance(leaves, list):
    raise CheckpointError(f"{path}: the manifest lists no leaves (expected a list, got {type(leaves).__name__})")
  for entry in leaves:
    leaf = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(leaf, str) or any(part in ("", ".", "..") for part in leaf.split("/")):
      raise CheckpointError(f"{path}: the leaf path {leaf!r} is not a path in a tree (expected names joined by "
                            "'/', none of them empty, '.' or '..'); this manifest was not written by combinax")


def read_host_metadata(checkpoint: str | os.PathLike) -> dict | None:
  """What this process saved in `checkpoint` (`host_metadata` of `save`), or None when the checkpoint was written by
  a different number of processes (e.g. a data position of host 1 of 2 means nothing to a run of 1 host)."""
  checkpoint = Path(checkpoint)
  index, count = jax.process_index(), jax.process_count()
  if checkpoint_v1.is_v1(checkpoint):   # 0.1 ran on one process and kept the data position in the manifest
    metadata = checkpoint_v1.read_manifest(checkpoint, CheckpointError)["metadata"]
    return {"data": metadata["data"]} if count == 1 and "data" in metadata else None
  path = checkpoint / _HOSTS / _host_file(index, count)
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: damaged ({e})") from None
  if not integrity.is_intact(record):
    raise CheckpointError(f"{path}: changed or damaged after it was written (its sha256 does not match its contents)")
  return record["metadata"]


def restore(checkpoint: str | os.PathLike, template: Any, prefix: str = "") -> tuple[Any, dict]:
  """Loads a checkpoint into the structure of `template`; returns (tree, metadata).

  Every path, shape and dtype must match the template's; arrays take the template leaves' shardings (leaves without
  one load as ordinary, uncommitted arrays). With `prefix` (e.g. "params"), only the saved subtree under it is loaded
  (e.g. a model's params from a train state).
  """
  tree, metadata, _ = _restore(checkpoint, template, prefix, partial=False)
  return tree, metadata


def restore_matching(checkpoint: str | os.PathLike, template: Any, prefix: str = "", *,
                     skip_unused: bool = False) -> tuple[Any, list[str]]:
  """Loads the leaves of `template` that the checkpoint has; the others keep the template's (concrete) values.

  For fine-tuning: a pretrained body into a model with a new head or adapters. Every saved leaf under `prefix` must
  exist in the template with its shape and dtype, unless `skip_unused` (a pretrained tower whose own head the new
  model does not have). Returns (tree, the paths that kept their template values).
  """
  tree, _, kept = _restore(checkpoint, template, prefix, partial=True, skip_unused=skip_unused)
  return tree, kept


def _restore(checkpoint, template, prefix: str, partial: bool, skip_unused: bool = False):
  checkpoint = Path(checkpoint)
  manifest = read_manifest(checkpoint)
  template_leaves = leaves_with_paths(template)
  start = prefix.rstrip("/") + "/" if prefix else ""
  saved = {e["path"][len(start):]: (i, e) for i, e in enumerate(manifest["leaves"]) if e["path"].startswith(start)}
  wanted_paths = [path for path, _ in template_leaves]
  missing, extra = sorted(set(wanted_paths) - set(saved)), sorted(set(saved) - set(wanted_paths))
  if (extra and not skip_unused) or (missing and not partial):
    raise CheckpointMismatchError(f"{checkpoint}: the checkpoint does not fit this model/optimizer: missing "
                                  f"{missing[:5]}, unexpected {extra[:5]}")
  wanted = [(path, like) for path, like in template_leaves if path in saved]
  for path, like in wanted:
    entry = saved[path][1]
    shape, dtype = _stored_form(like)
    if tuple(entry["shape"]) != shape or entry["dtype"] != dtype:
      raise CheckpointMismatchError(f"{checkpoint}: {path} is {entry['dtype']}{list(entry['shape'])} in the "
                                    f"checkpoint but {dtype}{list(shape)} in the model")
  if checkpoint_v1.is_v1(checkpoint):
    values = checkpoint_v1.read_leaves(checkpoint, manifest, {p: saved[p][0] for p, _ in wanted}, CheckpointError)
    loaded = {p: _place(values[p], like) for p, like in wanted}
  else:
    loaded = _read_arrays(checkpoint, [(start + path, saved[path][1], like) for path, like in wanted])
    loaded = {path[len(start):]: value for path, value in loaded.items()}
  values = [loaded.get(path, like) for path, like in template_leaves]
  treedef = jax.tree_util.tree_structure(template)
  return jax.tree_util.tree_unflatten(treedef, values), manifest["metadata"], missing


def read_arrays(checkpoint: str | os.PathLike, prefix: str = "") -> dict[str, np.ndarray]:
  """{path: numpy array} of every saved leaf under `prefix` (paths relative to it; PRNG keys as their key data),
  checked like `restore`: for looking into a checkpoint without building its model."""
  checkpoint = Path(checkpoint)
  manifest = read_manifest(checkpoint)
  start = prefix.rstrip("/") + "/" if prefix else ""
  entries = [(i, e) for i, e in enumerate(manifest["leaves"]) if e["path"].startswith(start)]
  if checkpoint_v1.is_v1(checkpoint):
    values = checkpoint_v1.read_leaves(checkpoint, manifest, {e["path"]: i for i, e in entries}, CheckpointError)
    values = {p: np.asarray(jax.random.key_data(v) if _is_key(v) else v) for p, v in values.items()}
  else:
    like = lambda e: jax.ShapeDtypeStruct(tuple(e["shape"]), np.dtype(e["dtype"]))
    values = _read_arrays(checkpoint, [(e["path"], {**e, "prng_key": None}, like(e)) for _, e in entries])
    values = {p: np.asarray(v) for p, v in values.items()}
  return {p[len(start):]: v for p, v in values.items()}


def _place(value, like):
  sharding = getattr(like, "sharding", None)
  return jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)


def _read_arrays(checkpoint: Path, items: list) -> dict:
  """{saved path: array} of `items` ((saved path, manifest entry, template leaf)), each checked against its
  checksum and placed with its template leaf's sharding."""
  if not items:
    return {}
  ocp = _ocp()
  abstract = {}
  for path, entry, like in items:
    sharding = getattr(like, "sharding", None)   # none: restored as numpy, then an uncommitted array
    abstract[path] = jax.ShapeDtypeStruct(tuple(entry["shape"]), np.dtype(entry["dtype"]), sharding=sharding)
  nested = _nest(abstract)
  error = None
  try:
    restored = ocp.Checkpointer(_handler()).restore(checkpoint.absolute(), args=ocp.args.Composite(**{
        _STATE: ocp.args.PyTreeRestore(item=nested, restore_args=ocp.checkpoint_utils.construct_restore_args(nested),
                                       partial_restore=True)}))[_STATE]
    arrays = [_lookup(restored, path) for path, _, _ in items]
  except Exception as e:  # Orbax and TensorStore raise many kinds for a damaged file; say where, keep the cause
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    error = CheckpointError(f"{checkpoint}: its arrays cannot be read ({type(e).__name__}: {first_line[:300]}); "
                            "the checkpoint is damaged or incomplete")
  if not all_processes_agree(error is None):
    raise error or CheckpointError(f"{checkpoint}: another process could not read its part of the arrays")
  bad = [path for (path, entry, _), checksum in zip(items, integrity.checksums(arrays))
         if checksum != entry["checksum"]]
  if bad:
    raise CheckpointError(f"{checkpoint}: {len(bad)} array(s) differ from what was saved (checksum mismatch): "
                          f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; the checkpoint is damaged")
  out = {}
  for (path, entry, like), value in zip(items, arrays):
    if entry["prng_key"]:
      value = jax.random.wrap_key_data(value, impl=entry["prng_key"])
    out[path] = _place(value, like)   # (already in the template's sharding where it has one)
  return out


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
  """Committed checkpoints under `directory`, oldest first (unfinished saves and set-aside ones are skipped)."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  found = [p for p in directory.iterdir() if p.is_dir() and _NAME.match(p.name) and
           ((p / _MANIFEST / "manifest.json").exists() or checkpoint_v1.is_v1(p))]
  return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(directory: str | os.PathLike) -> Path | None:
  """The newest committed checkpoint under `directory`, or None."""
  found = list_checkpoints(directory)
  return found[-1] if found else None


def checkpoint_or_latest(path: str | os.PathLike) -> Path | None:
  """`path` itself if it is a committed checkpoint, else the newest one under it (a run directory), else None."""
  path = Path(path)
  return path if path in list_checkpoints(path.parent) else latest(path)


# --- The manager --------------------------------------------------------------------------------------------------


class CheckpointManager:
  """Saves checkpoints under `directory`, keeping the last `keep` and (with `best_metric`) the best one.

  With `asynchronous` (the default), `save` returns once the arrays are copied off the devices and the files are
  written in the background while training goes on; the next `save` (or `wait`, or `close`) waits for it first.
  A checkpoint counts only once Orbax has committed it, so a process killed mid-save leaves the earlier ones as
  they were. `mode="min"` keeps the lowest value of `metadata["metrics"][best_metric]`, `"max"` the highest.
  Process 0 deletes old checkpoints; a new manager clears the leftovers of killed saves (`clean_up`).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 3, best_metric: str | None = None,
               mode: str = "min", *, asynchronous: bool = True, clean_up: bool = True):
    if keep < 1:
      raise ValueError(f"CheckpointManager: keep must be >= 1, got {keep}")
    if mode not in ("min", "max"):
      raise ValueError(f"CheckpointManager: mode must be 'min' or 'max', got {mode!r}")
    self.directory, self.keep, self.best_metric, self.mode = Path(directory), keep, best_metric, mode
    self.asynchronous = asynchronous
    self._checkpointer = None
    self._pending: Path | None = None
    self._last_saved: Path | None = None   # the newest save started, what a failure in `close` concerns
    if clean_up:
      self.clear_leftovers()

  def clear_leftovers(self):
    """Removes what killed saves and deletes left (process 0; only while no other run uses the directory)."""
    if jax.process_index() == 0 and self.directory.is_dir():
      for leftover in [p for p in self.directory.iterdir() if _LEFTOVER.match(p.name)]:
        shutil.rmtree(leftover, ignore_errors=True)

  def _score(self, checkpoint: Path):
    try:
      value = read_manifest(checkpoint)["metadata"].get("metrics", {}).get(self.best_metric)
    except CheckpointError:   # a damaged checkpoint is never the best
      return None
    if value is None:
      return None
    return value if self.mode == "min" else -value

  def best(self) -> Path | None:
    """The best checkpoint by `best_metric`, or None."""
    if self.best_metric is None:
      return None
    scored = [(s, p) for p in list_checkpoints(self.directory) if (s := self._score(p)) is not None]
    return min(scored, key=lambda sp: sp[0])[1] if scored else None

  def save(self, step: int, tree: Any, metadata: dict | None = None, *, host_metadata: dict | None = None) -> Path:
    """Starts writing checkpoint `step` (see `save`); returns the path it will have once committed."""
    self.wait()
    ocp = _ocp()
    if self._checkpointer is None:
      self._checkpointer = (ocp.AsyncCheckpointer if self.asynchronous else ocp.Checkpointer)(_handler())
    final = _step_path(self.directory, step)
    if final.exists():   # re-saving a step (e.g. after falling back from a damaged newer one): replace it whole
      if jax.process_index() == 0:
        _remove(final)
      _barrier(f"resave-{final.name}")
    self.directory.mkdir(parents=True, exist_ok=True)
    args = _save_args(step, tree, metadata, host_metadata)
    try:
      # (Orbax takes absolute paths only; `--output_dir=runs/lm` is relative)
      self._checkpointer.save(final.absolute(), args=args)
    except Exception as e:   # noqa: BLE001  (Orbax and TensorStore raise many kinds: a full disk, a lost mount, ...)
      raise self._failed(final, e) from e
    self._pending = self._last_saved = final
    if not self.asynchronous:
      self.wait()
    return final

  def wait(self):
    """Blocks until the save in flight (if any) is committed, then deletes checkpoints no longer kept. A save that
    failed raises a `CheckpointError` naming it and the cause; the checkpoints before it are as they were."""
    if self._pending is None:
      return
    pending, self._pending = self._pending, None
    if self.asynchronous:
      try:
        self._checkpointer.wait_until_finished()
      except Exception as e:   # noqa: BLE001  (what failed in Orbax's background threads, e.g. a full disk)
        # Orbax keeps the save's metadata apart and raises its failure (the same cause) at the next wait: it is
        # taken here, so that one failed save is one error.
        with contextlib.suppress(Exception):
          self._checkpointer.wait_until_finished()
        raise self._failed(pending, e) from e
    if jax.process_index() == 0:
      self._retain()

  def _failed(self, checkpoint: Path, error: Exception) -> CheckpointError:
    newest = latest(self.directory)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return CheckpointError(f"{checkpoint}: the save failed ({type(error).__name__}: {first_line[:300]}); the "
                           "checkpoints before it are as they were (the newest: "
                           f"{newest.name if newest is not None else 'none'})")

  def _retain(self):
    found = list_checkpoints(self.directory)
    keep = set(found[-self.keep:])
    best = self.best()
    if best is not None:
      keep.add(best)
    for old in found:
      if old not in keep:
        _remove(old)

  def set_aside(self, checkpoint: Path) -> Path:
    """Renames a damaged checkpoint to `<name>.damaged` (kept for inspection, never loaded); returns the new path."""
    target = checkpoint.with_name(f"{checkpoint.name}.damaged")
    n = 1
    while target.exists():
      n += 1
      target = checkpoint.with_name(f"{checkpoint.name}.damaged-{n}")
    if jax.process_index() == 0:
      os.rename(checkpoint, target)
    _barrier(f"set-aside-{checkpoint.name}")
    return target

  def checkpoints(self) -> list[Path]:
    return list_checkpoints(self.directory)

  def incomplete(self) -> list[Path]:
    """Checkpoint directories without a manifest: never written so by a save (Orbax commits whole, by a rename),
    so something removed it; they are not checkpoints, and `set_aside` moves them out of the way."""
    listed = set(self.checkpoints())
    return sorted(p for p in self.directory.glob("step_*") if p.is_dir() and _NAME.match(p.name) and p not in listed)

  def latest(self) -> Path | None:
    return latest(self.directory)

  def close(self):
    """Waits for the save in flight and releases Orbax's threads; a save that failed raises as in `wait`, once."""
    try:
      self.wait()
    finally:
      checkpointer, self._checkpointer = self._checkpointer, None
      if checkpointer is not None:
        reported = sys.exc_info()[1] is not None
        try:
          checkpointer.close()   # (waits for the save's metadata, which Orbax writes apart and fails apart)
        except Exception as e:   # noqa: BLE001
          if not reported:
            raise self._failed(self._last_saved, e) from e
