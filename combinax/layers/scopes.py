"""Where each layer's parameters live: readable, stable paths, and weight sharing.

Rules (see the README's design section):
- A layer with parameters gets a key in its scope: its name and a per-name counter (`Dense_0`, `Dense_1`), or its
  explicit `name=` as given. Counters are per name, so inserting a `Relu` renames no `Dense`.
- A combinator opens a scope of its own only when it was given a `name=`; an unnamed `Serial`, `Branch`, `Residual`,
  ... is transparent, and its children's keys live in the enclosing scope.
- A transparent combinator with state of its own (a predict-mode `Scan`'s carries, a `Cache`'s outputs) keeps that
  state under a key of its own in the enclosing scope (`Scan_0`), so its params still merge into the scope.
- The same layer object met twice gets one key (shared weights). Across scopes, the root keeps the first
  occurrence's parameters and lends them to the later ones at `apply` (`plan`, `fold`, `unfold`).
"""

from __future__ import annotations

from typing import Any

from combinax.layers.base import Layer


class Combinator(Layer):
  """A layer made of sublayers; stores each child's params/state at the child's key in its scope."""

  def __init__(self, sublayers, n_in: int, n_out: int, name: str | None = None, own_state: bool = False):
    super().__init__(n_in, n_out, name)
    self.sublayers = tuple(sublayers)
    for child in self.sublayers:
      if not isinstance(child, Layer):
        raise TypeError(f"{self.name}: sublayers must be layers, got {type(child).__name__} ({child!r})")
    self.member_keys, self.child_slots = _plan_scope(self.sublayers, self if own_state else None)
    # Where this combinator keeps state of its own (not its children's) inside its state dict, if it has any.
    self.own_key = self.member_keys[0][1] if own_state else None

  @property
  def transparent(self) -> bool:
    """Unnamed combinators keep their children's parameters in the enclosing scope."""
    return not self.explicit_name

  @property
  def rewindable(self) -> bool:
    return all(child.rewindable for child in self.sublayers)

  def rewind_state(self, state, index):
    """Each child's state rewound where it lives in ours; a combinator with state of its own rewinds that too."""
    return self._each_childs_state(state, lambda child, child_state: child.rewind(child_state, index))

  def shorten_state(self, state, positions: int):
    """Each child's state shortened where it lives in ours."""
    return self._each_childs_state(state, lambda child, child_state: child.shorten(child_state, positions))

  def _each_childs_state(self, state, fn):
    """`state` with each child's part replaced by `fn(child, that part)`; our own part kept."""
    state = dict(state)
    for i, child in enumerate(self.sublayers):
      self.store_child(state, i, fn(child, self.child_view(state, i)), overwrite=True)
    return state

  def child_view(self, tree: dict, index: int):
    """The params (or state) of child `index`, taken from this combinator's params (or state)."""
    slot = self.child_slots[index]
    if isinstance(slot, str):
      return tree.get(slot, {})
    return {local: tree[key] for local, key in slot.items() if key in tree}

  def store_child(self, tree: dict, index: int, child_tree, *, overwrite: bool):
    """Writes child `index`'s params (or state) into `tree`, a dict being built; shared keys are kept once."""
    slot = self.child_slots[index]
    items = [(slot, child_tree)] if isinstance(slot, str) else [(slot[k], v) for k, v in child_tree.items()]
    for key, value in items:
      if _is_empty(value) or (key in tree and not overwrite):
        continue
      tree[key] = value


def _is_empty(tree) -> bool:
  return isinstance(tree, dict) and not tree


def _plan_scope(children, owner: Layer | None = None) -> tuple[tuple, tuple]:
  """Keys for the members of one scope, and for each child its key (str) or, if transparent, {its key: ours}.
  An `owner` with state of its own is the scope's first member."""
  members, key_of, used, counters = [], {}, set(), {}

  def key_for(layer: Layer) -> str:
    if id(layer) in key_of:
      return key_of[id(layer)]
    if layer.explicit_name and layer.name not in used:
      key = layer.name
    else:
      n = counters.get(layer.name, 0)
      while f"{layer.name}_{n}" in used:
        n += 1
      key, counters[layer.name] = f"{layer.name}_{n}", n + 1
    used.add(key)
    key_of[id(layer)] = key
    members.append((layer, key))
    return key

  if owner is not None:
    key_for(owner)
  slots = []
  for child in children:
    if isinstance(child, Combinator) and child.transparent:
      slots.append({local: key_for(member) for member, local in child.member_keys})
    else:
      slots.append(key_for(child))
  return tuple(members), tuple(slots)


# --- Sharing across scopes, resolved once at the root --------------------------------------------------------------

def plan(root: Combinator) -> list[tuple[tuple, tuple]]:
  """(alias path, canonical path) for every layer object that sits in more than one scope."""
  first, aliases = {}, []

  def visit(layer: Combinator, prefix: tuple):
    for member, key in layer.member_keys:
      if member is layer:  # a combinator's own state: not a separate layer
        continue
      path = prefix + (key,)
      if any(path[:len(alias)] == alias for alias, _ in aliases):
        continue
      if id(member) in first:
        aliases.append((path, first[id(member)]))
        continue
      first[id(member)] = path
      if isinstance(member, Combinator) and not member.transparent:  # transparent: only its own state is here
        visit(member, path)

  visit(root, ())
  return aliases


def _get(tree, path):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _with(tree: dict, path: tuple, value) -> dict:
  """A copy of `tree` with `path` set to `value` (or removed when value is None); empty dicts are pruned."""
  out = dict(tree)
  if len(path) == 1:
    if value is None:
      out.pop(path[0], None)
    else:
      out[path[0]] = value
    return out
  inner = _with(out.get(path[0], {}), path[1:], value)
  if inner:
    out[path[0]] = inner
  else:
    out.pop(path[0], None)
  return out


def fold(root: Combinator, params: Any, state: Any):
  """After init: drop the later copies of shared layers, so each weight is stored (and trained) once."""
  for alias, _ in plan(root):
    if _get(params, alias) is not None:
      params = _with(params, alias, None)
    if _get(state, alias) is not None:
      state = _with(state, alias, None)
  return params, state


def unfold(aliases, tree):
  """Before apply: lend each shared layer's parameters (or state) to its later occurrences."""
  for alias, canonical in aliases:
    value = _get(tree, canonical)
    if value is not None:
      tree = _with(tree, alias, value)
  return tree


def fold_state(aliases, state):
  """After apply: a shared layer's state is the one its last occurrence wrote."""
  for alias, canonical in aliases:
    value = _get(state, alias)
    if value is not None:
      state = _with(_with(state, canonical, value), alias, None)
  return state
