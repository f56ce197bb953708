"""The `>>>` examples in every module's docstrings and in the README run and print what they say."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(cx.__path__, "combinax."))
GLOBS = {"jax": jax, "jnp": jnp, "np": np, "cx": cx, "cl": cl, "ShapeDtype": cx.ShapeDtype}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, extraglobs=GLOBS, optionflags=FLAGS, verbose=False)
  assert result.failed == 0


def test_readme_examples():
  result = doctest.testfile(str(ROOT / "README.md"), module_relative=False, globs=dict(GLOBS), optionflags=FLAGS)
  assert result.attempted > 0 and result.failed == 0


def test_the_readme_cites_only_files_the_repository_has():
  """A path the README names in backticks (`docs/design.md`, `benchmarks/compare.py`, a top-level `X.md`) exists."""
  import re
  text = (ROOT / "README.md").read_text()
  cited = set(re.findall(r"`([\w./-]+\.(?:md|py|gin|ipynb|sh))`", text))
  top = {p.name for p in ROOT.iterdir() if p.is_dir()}
  checked = [c for c in cited if c.split("/")[0] in top or ("/" not in c and c.endswith(".md"))]
  assert "docs/design.md" in checked
  assert [c for c in checked if not (ROOT / c).exists()] == []
