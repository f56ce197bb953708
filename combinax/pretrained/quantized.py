"""Quantized weights of the bundled LMs, kept in the pretrained cache: the first `load_quantized(name, kind)` makes
them (the float32 import quantized by `quant.for_decoding`, or, for "gguf", the GGUF file's own packed blocks) and
writes them beside the float32 cache, in `$COMBINAX_CACHE/pretrained/<name>/quantized-<kind>/`; later loads restore
them as they are and never build the float32 weights.

Why: `combinax-decode --pretrained=smollm2-135m-instruct --quantize=int8` spent 6.0 s of its 22 s restoring the
float32 weights and 8.3 s quantizing them, op by op, at every start; --quantize=gguf spent 6.3 s of its 15 s reading
the GGUF file, 4.8 s of it the gguf package parsing the tokenizer's 49,152 strings (cProfile, 2 cores shared with
another job).

The cache is a combinax checkpoint (a checksum of every array, a sealed manifest: a damaged file never loads as if
it were whole) whose metadata says what it holds: `FORMAT`, the combinax version, the kind, what it was made from
(the float32 checkpoint's manifest digest, or the package carrying the GGUF file) and every quantized weight's
layout (`QuantizedArray`'s kind, axis and dtype: static fields, which a checkpoint's arrays do not hold). It is
restored into the tree its manifest and layout describe, so every leaf keeps its dtype and shape (int8 stays int8),
once the weights they stand for are found to be the float32 checkpoint's, path for path, in shape and dtype: read
from the manifests alone, since tracing the model to know its params' shapes (`jax.eval_shape`) took 0.9 s of the
few seconds a start may take. A cache that differs in any of these, or fails a check, is rebuilt with a warning
saying why. It is written in a temporary folder renamed into place, under a lock, so a write that fails or meets
another process's never leaves a cache that a later load trusts. Re-importing the float32 weights
(`registry.import_to_cache`) replaces `pretrained/<name>/` whole, these with it.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from combinax import quant
from combinax.layers.base import Layer
from combinax.paths import leaves_with_paths, unflatten
from combinax.pretrained import registry
from combinax.pretrained.families import PretrainedError
from combinax.store import checkpoints, rundir

# What a cache written by this module holds; raise it when quant's arithmetic or layout changes, so that caches
# written before are rebuilt (the combinax version is recorded too, but stays the same between releases).
FORMAT = "combinax-quantized-v1"
KINDS = (*quant.DECODING_KINDS, "gguf")


def _is_quantized(leaf) -> bool:
  return isinstance(leaf, quant.QuantizedArray)


def cache_folder(name: str, kind: str) -> Path:
  """Where the `kind` weights of `name` are cached: `$COMBINAX_CACHE/pretrained/<name>/quantized-<kind>`."""
  return registry.cache_path(name) / f"quantized-{kind}"


def load_quantized(name: str, kind: str) -> tuple[Layer, Any, Any]:
  """`(model, params, tokenizer)` of the bundled LM `name` with `kind` weights: "int8", "q4", "q4_1" (the float32
  weights through `quant.for_decoding`) or "gguf" (the GGUF file's packed blocks, as `load(name, packed=True)`).

  The model is the plain one (`model(name)`); `model(name, mode="predict", max_len=n)` takes the same params. The
  first load makes the weights and caches them (`cache_folder`); later ones restore them. A cache that cannot be
  used is made again (with a warning naming why), and one that cannot be written is only warned of; where the
  weights cannot be made (the float32 cache damaged and the package not installed) a `PretrainedError` says how to
  get them.

  >>> model, params, tokenizer = load_quantized("smollm2-135m-instruct", "int8")   # doctest: +SKIP
  """
  if kind not in KINDS:
    raise PretrainedError(f"load_quantized: kind must be one of {', '.join(KINDS)}, got {kind!r}")
  model = registry.model(name)   # (its configuration: the float32 cache's manifest, imported first if missing)
  found = checkpoints.latest(cache_folder(name, kind))
  if found is not None:
    try:
      return model, _restore(name, kind, found), registry.tokenizer(name)
    except checkpoints.CheckpointError as e:   # said before they are made again, which may fail in its turn
      warnings.warn(f"pretrained model {name!r}: the {kind} weights cached in {found} cannot be used, {e}; they are "
                    "made again")
  params = _made(name, kind, model)
  _write(name, kind, params)
  return model, params, registry.tokenizer(name)


def layout(params: Any) -> dict[str, str]:
  """{path: "kind axis dtype"} of every `QuantizedArray` in `params`: its static fields, which are not arrays."""
  described = jax.tree_util.tree_map(lambda leaf: f"{leaf.kind} {leaf.axis} {leaf.dtype}" if _is_quantized(leaf)
                                     else None, params, is_leaf=_is_quantized)
  return dict(leaves_with_paths(described))


def _version() -> str:
  try:
    return importlib.metadata.version("combinax")
  except importlib.metadata.PackageNotFoundError:   # run from a source tree that was never installed
    return "unknown"


def _float_manifest(name: str) -> dict | None:
  found = checkpoints.latest(registry.cache_path(name))
  return None if found is None else checkpoints.read_manifest(found)


def _source(name: str, kind: str, float_manifest: dict | None) -> str:
  """What the `kind` weights of `name` are made from: the package carrying its GGUF file, or the float32 cache
  (its manifest's digest: a re-imported cache is another source)."""
  entry = registry.info(name)
  if kind == "gguf":
    return f"{entry.package}=={entry.version}: {entry.files}"
  digest = "(none cached)" if float_manifest is None else float_manifest["sha256"]
  return f"the float32 weights of checkpoint sha256 {digest}"


def _expected(name: str, kind: str, float_manifest: dict | None) -> dict:
  return {"format": FORMAT, "combinax": _version(), "kind": kind, "source": _source(name, kind, float_manifest)}


def _restore(name: str, kind: str, found: Path):
  """The params of the cache checkpoint `found`, or a CheckpointError saying why they cannot be used."""
  manifest = checkpoints.read_manifest(found)   # (a damaged manifest raises here)
  float_manifest = _float_manifest(name)
  metadata = manifest["metadata"]
  for key, wanted in _expected(name, kind, float_manifest).items():
    if metadata.get(key) != wanted:
      raise checkpoints.CheckpointError(f"its {key} is {metadata.get(key)!r}, where {wanted!r} is needed")
  stored = metadata.get("layout")
  kinds = (kind, "int8") if kind != "gguf" else quant.KINDS   # (for_decoding's tables are int8 whatever the kind)
  if not isinstance(stored, dict) or not all(_describes(v, kinds) for v in stored.values()):
    raise checkpoints.CheckpointError(f"its layout of the quantized weights is not one of {kind} weights (of kinds "
                                      f"{kinds}, each 'kind axis dtype'): {stored!r}"[:500])
  template = _recorded(manifest, stored)
  have = _weights(template)
  want = {entry["path"][len("params/"):]: (tuple(entry["shape"]), entry["dtype"])
          for entry in (float_manifest or {"leaves": []})["leaves"] if entry["path"].startswith("params/")}
  if have != want:
    differ = sorted(path for path in set(have) | set(want) if have.get(path) != want.get(path))
    raise checkpoints.CheckpointError(
        f"the weights it stands for are not the float32 checkpoint's: {len(differ)} differ (" +
        "; ".join(f"{p}: {have.get(p, 'missing')} here, {want.get(p, 'missing')} there" for p in differ[:3]) + ")")
  return checkpoints.restore(found, template, prefix="params")[0]


def _describes(description, kinds) -> bool:
  """Whether `description` is a `layout` entry ("kind axis dtype") of one of `kinds`."""
  parts = description.split() if isinstance(description, str) else ()
  if len(parts) != 3 or parts[0] not in kinds or not parts[1].lstrip("-").isdigit():
    return False
  try:
    return np.dtype(parts[2]).kind == "f"
  except TypeError:
    return False


def _weights(params) -> dict[str, tuple[tuple, str]]:
  """{path: (shape, dtype name)} of the weights `params` stand for (a `QuantizedArray`: the array it dequantizes
  to), known without computing anything."""
  stand = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, np.dtype(leaf.dtype)), params,
                                 is_leaf=_is_quantized)
  return {path: (tuple(leaf.shape), np.dtype(leaf.dtype).name) for path, leaf in leaves_with_paths(stand)}


def _recorded(manifest: dict, stored: dict[str, str]):
  """The abstract params that the manifest's leaves and the recorded layout describe."""
  flat = {entry["path"][len("params/"):]: jax.ShapeDtypeStruct(tuple(entry["shape"]), np.dtype(entry["dtype"]))
          for entry in manifest["leaves"] if entry["path"].startswith("params/")}
  for path, description in stored.items():
    kind, axis, dtype = description.split()
    values, scale, offset = (flat.pop(f"{path}/{field}", None) for field in ("values", "scale", "offset"))
    if values is None or scale is None or (offset is None) != (kind != "q4_1"):
      raise checkpoints.CheckpointError(f"the quantized weight {path} ({kind}) lacks its values, scale or offset, "
                                        "or has an offset it should not")
    flat[path] = quant.QuantizedArray(values, scale, offset, kind, int(axis), dtype)
  return unflatten(flat)


def _made(name: str, kind: str, model: Layer):
  """The `kind` weights of `name`, made from their source (the float32 import, or the GGUF file)."""
  if kind == "gguf":
    return registry.load(name, packed=True)[1]
  return quant.for_decoding(model, registry.load(name)[1], kind)


def _write(name: str, kind: str, params):
  """Caches `params` (whole, or not at all); warns when they cannot be written: the load goes on with them in
  memory."""
  folder, target = registry.cache_path(name), cache_folder(name, kind)
  metadata = {"name": name, **_expected(name, kind, _float_manifest(name)), "layout": layout(params)}
  try:
    # One writer at a time (a second one, refused the lock, keeps its weights in memory); what a killed writer left
    # is cleared first.
    with rundir.locked(folder, lock_file=f".quantized-{kind}.lock"):
      rundir.clear_leftovers(folder, target.name)
      with rundir.replaced_atomically(target) as tmp:
        checkpoints.save(tmp, 0, {"params": params}, metadata)
  except (OSError, checkpoints.CheckpointError, rundir.RunDirectoryError) as e:
    warnings.warn(f"pretrained model {name!r}: its {kind} weights could not be cached in {target} "
                  f"({type(e).__name__}: {e}); they were made in memory for this load")
