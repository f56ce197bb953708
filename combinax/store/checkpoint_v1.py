"""Reading checkpoints written by combinax 0.1 (format `combinax-checkpoint-v1`), so old runs resume, fine-tune and
serve as pretrained caches: a directory holding `arrays.npz` (one entry per leaf, loaded with `allow_pickle=False`)
and `manifest.json` (step, each leaf's path, shape and dtype, the archive's sha256, free JSON metadata)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import numpy as np

FORMAT = "combinax-checkpoint-v1"


def is_v1(checkpoint: Path) -> bool:
  return (checkpoint / "manifest.json").is_file()


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_manifest(checkpoint: Path, error) -> dict:
  path = checkpoint / "manifest.json"
  try:
    manifest = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise error(f"{path}: the manifest is damaged ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise error(f"{path}: unknown format {found!r}, expected {FORMAT!r}")
  if not isinstance(manifest.get("sha256"), str):
    raise error(f"{path}: the manifest has no sha256 of arrays.npz, so the arrays cannot be checked")
  return manifest


def read_leaves(checkpoint: Path, manifest: dict, wanted: dict, error) -> dict:
  """{path: numpy value (or PRNG key)} for the saved leaves named in `wanted` ({path: index in the archive})."""
  archive = checkpoint / "arrays.npz"
  if not archive.exists() or _sha256(archive) != manifest["sha256"]:
    raise error(f"{archive}: missing, truncated or corrupted (its sha256 differs from the manifest's)")
  values = {}
  with np.load(archive, allow_pickle=False) as data:
    for path, index in wanted.items():
      entry = manifest["leaves"][index]
      value = data[f"leaf_{index:06d}"]
      values[path] = jax.random.wrap_key_data(value, impl=entry["prng_key"]) if entry["prng_key"] else value
  return values
