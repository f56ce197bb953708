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
