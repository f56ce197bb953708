"""Combinators on the data stack: `Serial`, `Parallel`, `Select`, `Fn`, and what is derived from them.

`Branch`, `Residual`, `Dup`, `Swap` and `Drop` are written with `Serial`, `Select`, `Parallel` and `Fn`; the
plumbing they build is marked hidden, so printing and error paths show the layers the user gave.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import jax.numpy as jnp

from combinax import shapes
from combinax.layers.base import Layer, LayerError, child_rng, init_and_signature
from combinax.layers.scopes import Combinator


def to_stack(items, n: int) -> list:
  """The stack items of a layer's inputs/outputs (or their signatures) as a list, top first."""
  return [items] if n == 1 else list(items)


def from_stack(stack: Sequence, n: int):
  """The top `n` stack items as a layer receives them: a bare item when n == 1, else a tuple."""
  return stack[0] if n == 1 else tuple(stack[:n])


def init_on_one_stack(combinator: Combinator, rng, input_signature):
  """(params, state) of a combinator whose children each read the top of the same stack, not one another's outputs
  (`Cond`'s condition and branches, `Interleave`'s blocks and inserted layers): each child's kept at its key."""
  stack, params, state = to_stack(input_signature, combinator.n_in), {}, {}
  for i, layer in enumerate(combinator.sublayers):
    p, s = layer.init(child_rng(rng, i), from_stack(stack, layer.n_in))
    combinator.store_child(params, i, p, overwrite=False)
    combinator.store_child(state, i, s, overwrite=False)
  return params, state


def _flatten(layers) -> list:
  """Trax's convenience: lists and tuples of layers are spliced in place; None is dropped."""
  out = []
  for layer in layers:
    if layer is None:
      continue
    if isinstance(layer, (list, tuple)):
      out.extend(_flatten(layer))
    else:
      out.append(layer)
  return out


def _as_branch(arg) -> Layer:
  """One argument of `Parallel`/`Branch`: a layer; None or [] for the identity; a list of layers for their Serial."""
  if isinstance(arg, Layer):
    return arg
  if arg is None or (isinstance(arg, (list, tuple)) and not arg):
    return _identity()
  if isinstance(arg, (list, tuple)):
    return mark_hidden(Serial(*arg))
  raise TypeError(f"expected a layer, None or a list of layers, got {type(arg).__name__} ({arg!r})")


def _identity() -> Layer:
  """The 1 -> 1 identity that None, [] and an empty `Serial` stand for (hidden: it prints as nothing)."""
  return mark_hidden(Select([0], name="Identity"))


def mark_hidden(layer: Layer) -> Layer:
  """Marks `layer` as plumbing built inside a derived combinator and returns it: `str(model)` and error paths show
  what it holds instead of it (see `visible_children`). Call it on a layer you have just built, before anyone else
  holds it (it sets an attribute of a layer that is otherwise frozen).

  >>> body = mark_hidden(Serial(Dup(), Add()))
  >>> print(Serial(cl.Relu(), body, name="Doubled"))  # no line for the hidden Serial
  Doubled[
    Relu
    Dup_out2
    Add_in2
  ]
  """
  object.__setattr__(layer, "hidden", True)
  return layer


class Serial(Combinator):
  """Runs layers one after another on the stack; its arity follows from theirs.

  >>> Serial(Dup(), Dup()).n_out  # 1 item in, 3 out
  3
  >>> Serial().n_in, Serial().n_out, Branch(Serial(), Dup()).n_out  # empty: the identity, as in Trax
  (1, 1, 3)
  """

  def __init__(self, *layers, name: str | None = None):
    layers = _flatten(layers) or [_identity()]   # as in Trax: `Branch([], PaddingMask())` keeps its input
    n_in = height = 0
    for layer in layers:
      if height < layer.n_in:
        n_in, height = n_in + layer.n_in - height, layer.n_in
      height += layer.n_out - layer.n_in
    super().__init__(layers, n_in, height, name)

  def init_params_and_state(self, rng, input_signature):
    stack, params, state = to_stack(input_signature, self.n_in), {}, {}
    for i, layer in enumerate(self.sublayers):
      p, s, out = init_and_signature(layer, child_rng(rng, i), from_stack(stack, layer.n_in))
      self.store_child(params, i, p, overwrite=False)
      self.store_child(state, i, s, overwrite=False)
      stack = to_stack(out, layer.n_out) + stack[layer.n_in:]
    return params, state

  def forward(self, params, state, inputs, *, rng, train):
    stack, state = to_stack(inputs, self.n_in), dict(state)
    for i, layer in enumerate(self.sublayers):
      outputs, s = layer.apply(self.child_view(params, i), self.child_view(state, i),
                               from_stack(stack, layer.n_in), rng=child_rng(rng, i), train=train)
      self.store_child(state, i, s, overwrite=True)
      stack = to_stack(outputs, layer.n_out) + stack[layer.n_in:]
    return from_stack(stack, self.n_out), state


class Parallel(Combinator):
  """Runs layers side by side: each takes its own span of the stack, in order, and the outputs are concatenated.
  An argument that is None (or []) passes its item through; a list of layers runs as their `Serial`.

  >>> Parallel(Dup(), Drop()).n_in, Parallel(Dup(), Drop()).n_out
  (2, 2)
  """

  def __init__(self, *layers, name: str | None = None):
    layers = [_as_branch(arg) for arg in layers]
    super().__init__(layers, sum(l.n_in for l in layers), sum(l.n_out for l in layers), name)

  def _spans(self, items):
    stack, start = to_stack(items, self.n_in), 0
    for layer in self.sublayers:
      yield from_stack(stack[start:start + layer.n_in], layer.n_in)
      start += layer.n_in

  def init_params_and_state(self, rng, input_signature):
    params, state = {}, {}
    for i, (layer, sig) in enumerate(zip(self.sublayers, self._spans(input_signature))):
      p, s = layer.init(child_rng(rng, i), sig)
      self.store_child(params, i, p, overwrite=False)
      self.store_child(state, i, s, overwrite=False)
    return params, state

  def forward(self, params, state, inputs, *, rng, train):
    outputs, new_state = [], dict(state)
    for i, (layer, x) in enumerate(zip(self.sublayers, self._spans(inputs))):
      y, s = layer.apply(self.child_view(params, i), self.child_view(new_state, i), x, rng=child_rng(rng, i),
                         train=train)
      self.store_child(new_state, i, s, overwrite=True)
      outputs.extend(to_stack(y, layer.n_out))
    return from_stack(outputs, self.n_out), new_state


class Select(Layer):
  """Copies, reorders or drops stack items: outputs are the inputs at `indices` (0 is the top).

  >>> Select([2, 0]).n_in
  3
  """

  def __init__(self, indices: Sequence[int], n_in: int | None = None, name: str | None = None):
    indices = tuple(int(i) for i in indices)
    if n_in is None:
      n_in = max(indices) + 1 if indices else 0
    super().__init__(n_in, len(indices), name)
    self.indices = indices
    if any(i < 0 or i >= n_in for i in indices):
      raise LayerError(self, "indices must lie within the layer's inputs", expected=f"0 <= index < {n_in}",
                       actual=indices)

  def forward(self, params, state, inputs, *, rng, train):
    stack = to_stack(inputs, self.n_in)
    return from_stack([stack[i] for i in self.indices], self.n_out), state


class Fn(Layer):
  """A layer from a pure function of arrays; `n_in` is the number of the function's positional parameters.

  >>> Fn("Halve", lambda x: x / 2).n_in
  1
  """

  def __init__(self, name: str, f: Callable, n_out: int = 1):
    kinds = [p.kind for p in inspect.signature(f).parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
      raise ValueError(f"Fn {name!r}: the function may not take *args; its parameters fix the layer's n_in")
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    n_in = sum(1 for p in inspect.signature(f).parameters.values()
               if p.kind in positional and p.default is inspect.Parameter.empty)
    super().__init__(n_in, n_out, name)
    self.f = f

  def forward(self, params, state, inputs, *, rng, train):
    outputs = self.f(*to_stack(inputs, self.n_in))
    return (tuple(outputs) if isinstance(outputs, list) else outputs), state


class Branch(Serial):
  """Each layer sees copies of the same top inputs; their outputs are stacked in order. As in `Parallel`, None (or
  []) is the identity and a list of layers is their `Serial`.

  >>> Branch(Add(), Fn("Halve", lambda x: x / 2)).n_in  # Add takes 2, so the branch takes 2
  2
  >>> Branch(None, Dup()).n_out  # x -> x, x, x
  3
  """

  def __init__(self, *layers, name: str | None = None):
    branches = tuple(_as_branch(arg) for arg in layers)
    n_in = max((l.n_in for l in branches), default=0)
    indices = [i for layer in branches for i in range(layer.n_in)]
    super().__init__(mark_hidden(Select(indices, n_in=n_in)), mark_hidden(Parallel(*branches)), name=name)
    self.branches = branches

  @property
  def display_sublayers(self):
    return self.branches


class Residual(Serial):
  """Adds the output of `layers` to the shortcut (identity unless given), Trax's `Branch(shortcut, layers), Add`."""

  def __init__(self, *layers, shortcut: Layer | None = None, name: str | None = None):
    main = _flatten(layers)
    body = main[0] if len(main) == 1 else mark_hidden(Serial(*main))
    shortcut_layer = shortcut if shortcut is not None else _identity()
    super().__init__(mark_hidden(Branch(shortcut_layer, body)), Add(), name=name)
    self.main, self.shortcut = tuple(main), shortcut

  @property
  def display_sublayers(self):
    return self.main + ((self.shortcut,) if self.shortcut is not None else ())


def Dup(name: str = "Dup") -> Layer:
  """Duplicates the top stack item (1 → 2)."""
  return Select([0, 0], n_in=1, name=name)


def Swap(name: str = "Swap") -> Layer:
  """Swaps the top two stack items."""
  return Select([1, 0], n_in=2, name=name)


def Drop(name: str = "Drop") -> Layer:
  """Drops the top stack item (1 → 0)."""
  return Select([], n_in=1, name=name)


def Add() -> Layer:
  """Adds the top two items."""
  return Fn("Add", lambda x0, x1: x0 + x1)


def SubtractTop() -> Layer:
  """Subtracts the top item from the second: `x1 - x0`."""
  return Fn("SubtractTop", lambda x0, x1: x1 - x0)


def Multiply() -> Layer:
  """Multiplies the top two items."""
  return Fn("Multiply", lambda x0, x1: x0 * x1)


def Gate() -> Layer:
  """Trax's gating on (memory, gate, candidate): `gate * memory + (1 - gate) * candidate`."""
  return Fn("Gate", lambda memory, gate, candidate: gate * memory + (1.0 - gate) * candidate)


class Concatenate(Layer):
  """Concatenates the top `n_items` along `axis` (top item first)."""

  def __init__(self, n_items: int = 2, axis: int = -1, name: str | None = None):
    super().__init__(n_items, 1, name)
    self.axis = axis

  def forward(self, params, state, inputs, *, rng, train):
    items = to_stack(inputs, self.n_in)
    ranks = {x.ndim for x in items}
    if len(ranks) != 1:
      raise LayerError(self, "items must have the same rank", expected="equal ranks",
                       actual=shapes.describe(inputs))
    return jnp.concatenate(items, axis=self.axis), state


class Split(Layer):
  """Splits the top item into `n_items` equal parts along `axis`."""

  def __init__(self, n_items: int = 2, axis: int = -1, name: str | None = None):
    super().__init__(1, n_items, name)
    self.axis = axis

  def forward(self, params, state, inputs, *, rng, train):
    size = inputs.shape[self.axis]
    if size % self.n_out:
      raise LayerError(self, f"axis {self.axis} must divide into {self.n_out} equal parts",
                       expected=f"a multiple of {self.n_out}", actual=shapes.describe(inputs))
    return tuple(jnp.split(inputs, self.n_out, axis=self.axis)), state
