"""Readable paths into params/state pytrees, and selection of leaves by glob pattern.

A path joins dict keys (and sequence indices) with "/": `encoder/block_0/attention/q/kernel`.
Patterns are shell-style globs matched against the whole path (`fnmatch`), where `*` also crosses "/":
`"encoder/*/attention/*"` selects every attention weight of every encoder block.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

import jax
import numpy as np


def _segment(key) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _join(keys) -> str:
  return "/".join(_segment(k) for k in keys)


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
  """(path, leaf) for every leaf, in the pytree's order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(_join(keys), leaf) for keys, leaf in flat]


def paths(tree: Any) -> list[str]:
  """Every leaf's path.

  >>> paths({"Dense_0": {"bias": 0, "kernel": 0}})
  ['Dense_0/bias', 'Dense_0/kernel']
  """
  return [path for path, _ in leaves_with_paths(tree)]


def _patterns(patterns: str | Iterable[str]) -> list[str]:
  return [patterns] if isinstance(patterns, str) else list(patterns)


def matches(path: str, patterns: str | Iterable[str]) -> bool:
  """True if `path` matches any of the glob `patterns`."""
  return any(fnmatch.fnmatchcase(path, p) for p in _patterns(patterns))


def select(tree: Any, patterns: str | Iterable[str]) -> dict[str, Any]:
  """{path: leaf} for the leaves whose path matches any pattern.

  >>> list(select({"a": {"kernel": 1, "bias": 2}}, "*/kernel"))
  ['a/kernel']
  """
  return {path: leaf for path, leaf in leaves_with_paths(tree) if matches(path, patterns)}


def mask(tree: Any, patterns: str | Iterable[str]) -> Any:
  """A pytree like `tree` with True where the leaf's path matches (e.g. for `optax.masked`)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return jax.tree_util.tree_unflatten(treedef, [matches(_join(keys), patterns) for keys, _ in flat])


def count_params(tree: Any) -> int:
  """The number of scalars in all leaves of `tree`."""
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def unflatten(flat: dict[str, Any]) -> dict:
  """The nested dicts that `{path: leaf}` describes (the inverse of `dict(leaves_with_paths(tree))` for dicts).

  >>> unflatten({"a/kernel": 1, "a/bias": 2, "b": 3})
  {'a': {'kernel': 1, 'bias': 2}, 'b': 3}
  """
  out: dict = {}
  for path, leaf in flat.items():
    node = out
    *parents, name = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise ValueError(f"unflatten: {path!r} goes through a leaf")
    node[name] = leaf
  return out


def subtree(tree: dict, path: str):
  """The nested dict at `path` ("image" or "image/projector") of a tree of dicts, or None if it has none.

  >>> subtree({"image": {"projector": {"kernel": 1}}}, "image/projector")
  {'kernel': 1}
  """
  node = tree
  for part in path.split("/"):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def with_subtree(tree: dict, path: str, value) -> dict:
  """A copy of the dicts down to `path` with `value` there (the rest shared, not copied).

  >>> with_subtree({"a": {"b": 1, "c": 2}, "d": 3}, "a/b", 5)
  {'a': {'b': 5, 'c': 2}, 'd': 3}
  """
  part, _, rest = path.partition("/")
  return {**tree, part: with_subtree(tree[part], rest, value) if rest else value}
