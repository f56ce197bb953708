"""Helpers for the combinax.data tests: a stand-in for the bundled corpora, and pipeline runners."""

import sys
import types

import numpy as np

KJV_LIKE = [
    {"text": "In the beginning God created the heaven and the earth.", "book": "Genesis", "chapter": 1, "verse": 1},
    {"text": "And the earth was without form, and void.", "book": "Genesis", "chapter": 1, "verse": 2},
    {"text": "And God said, Let there be light: and there was light.", "book": "Genesis", "chapter": 1, "verse": 3},
    {"text": "And God saw the light, that it was good.", "book": "Genesis", "chapter": 1, "verse": 4},
    {"text": "And God called the light Day, and the darkness he called Night.", "book": "Genesis", "chapter": 1,
     "verse": 5},
]
PAIRS = [{"en": "In the beginning", "es": "En el principio", "ref": "Gen 1:1"},
         {"en": "the earth", "es": "la tierra", "ref": "Gen 1:2"}]


def install_fake_corpora(monkeypatch, corpora=None):
  """Puts a small module with the corpora API (names/info/load/path) in place of combinax.data.corpora."""
  corpora = corpora if corpora is not None else {"kjv": KJV_LIKE * 8, "bible_en_es": PAIRS * 4}
  module = types.ModuleType("combinax.data.corpora")
  calls = []

  def names():
    return sorted(corpora)

  def info(name):
    if name not in corpora:
      raise KeyError(name)
    return {"name": name, "examples": len(corpora[name])}

  def load(name, split="train"):
    calls.append((name, split))
    if name not in corpora:
      raise KeyError(name)
    return [dict(e) for e in corpora[name]]

  module.names, module.info, module.load, module.calls = names, info, load, calls
  module.path = lambda name: None
  monkeypatch.setitem(sys.modules, "combinax.data.corpora", module)
  return module


def take(stream, n):
  """The next n items of a stream, as a list."""
  return [next(stream) for _ in range(n)]


def assert_same_items(a, b):
  """Two lists of examples or batches (tuples of arrays / values) are equal, array by array."""
  assert len(a) == len(b), (len(a), len(b))
  for x, y in zip(a, b):
    assert isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y)
    for u, v in zip(x, y):
      u, v = np.asarray(u), np.asarray(v)
      assert u.dtype == v.dtype and u.shape == v.shape, (u.dtype, u.shape, v.dtype, v.shape)
      np.testing.assert_array_equal(u, v)
