"""The layer contract: a layer is an immutable object with pure `init` and `apply`.

`params, state = layer.init(rng, input_signature)` and
`outputs, state = layer.apply(params, state, inputs, rng=None, train=False)` never change the layer object.
Layers work on a data stack as Trax's do: a layer takes the top `n_in` items (index 0 is the top), given as a bare
array when `n_in == 1` and as a tuple otherwise, and puts `n_out` items back in their place.

A new leaf layer subclasses `Layer` and overrides `init_params_and_state` (if it has parameters) and `forward`.
A new combinator subclasses `Combinator` (see `combinators.py`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any

import gin
import jax

from combinax import shapes

_LAYERS_DIR = os.path.dirname(os.path.abspath(__file__))
_GIN_DIR = os.path.dirname(os.path.abspath(gin.__file__))  # gin's wrappers of configurable layers
_local = threading.local()


def _frames() -> list:
  """The layers now being initialised or applied, outermost first (one list per thread)."""
  frames = getattr(_local, "frames", None)
  if frames is None:
    frames = _local.frames = []
  return frames


def _construction_site() -> str:
  """`file:line` of the first caller outside `combinax/layers` (and gin): where the user built the layer."""
  frame = sys._getframe(1)
  while frame is not None and (os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _LAYERS_DIR or
                               os.path.abspath(frame.f_code.co_filename).startswith(_GIN_DIR)):
    frame = frame.f_back
  if frame is None:
    return "<unknown>"
  return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def visible_children(layer: "Layer") -> list:
  """The children a reader sees: plumbing that derived combinators build is replaced by what it holds."""
  out = []
  for child in layer.display_sublayers:
    out.extend(visible_children(child) if child.hidden else [child])
  return out


def _path_of(frames: list) -> str:
  """`Serial/Residual[2]/Attention`: each visible layer, with its index among its parent's visible children."""
  visible = [f for f in frames if not f.hidden]
  parts = []
  for depth, layer in enumerate(visible):
    part = layer.name
    if depth:
      siblings = visible_children(visible[depth - 1])
      index = next((i for i, s in enumerate(siblings) if s is layer), None)
      if index is not None and len(siblings) > 1:
        part += f"[{index}]"
    parts.append(part)
  return "/".join(parts)


class LayerError(ValueError):
  """A layer was built or called wrongly. The message names the layer's path in the model, where the layer was
  constructed, and the expected and actual signature or value."""

  def __init__(self, layer: "Layer", message: str, *, expected: Any = None, actual: Any = None):
    frames = _frames()
    self.layer = layer
    self.path = _path_of(frames) if frames and frames[-1] is layer else layer.name
    self.expected, self.actual = expected, actual
    lines = [f"{self.path}: {message}"]
    if expected is not None:
      lines.append(f"  expected: {expected}")
    if actual is not None:
      lines.append(f"  actual:   {actual}")
    lines.append(f"  layer constructed at {layer.constructed_at}")
    super().__init__("\n".join(lines))


@contextlib.contextmanager
def _frame(layer: "Layer", inputs: Any):
  """Enter `layer` for the length of one init/apply; any failure inside becomes a LayerError naming it."""
  frames = _frames()
  frames.append(layer)
  try:
    yield len(frames) == 1
  except LayerError:
    raise
  except Exception as e:  # Name the innermost layer that failed; keep the original as the cause.
    raise LayerError(layer, f"{type(e).__name__}: {e}", actual=shapes.describe(inputs)) from e
  finally:
    frames.pop()


class _Immutable(type):
  """Freezes every layer once its constructor has returned."""

  def __call__(cls, *args, **kwargs):
    layer = super().__call__(*args, **kwargs)
    object.__setattr__(layer, "_frozen", True)
    return layer


class Layer(metaclass=_Immutable):
  """Base class of all layers: hyperparameters and sublayers only, immutable and hashable."""

  def __init__(self, n_in: int = 1, n_out: int = 1, name: str | None = None):
    self.n_in = int(n_in)
    self.n_out = int(n_out)
    self.name = name or type(self).__name__
    self.explicit_name = name is not None
    self.hidden = False  # True for plumbing that derived combinators build; see `visible_children`.
    self.sublayers: tuple = ()
    self.constructed_at = _construction_site()

  def __setattr__(self, key, value):
    if getattr(self, "_frozen", False):
      raise AttributeError(f"{self.name}: layers are immutable; build a new layer instead of setting '{key}'")
    object.__setattr__(self, key, value)

  # --- What subclasses override -------------------------------------------------------------------------------

  @property
  def display_sublayers(self) -> tuple:
    """Children shown by `str(layer)` and used in error paths."""
    return self.sublayers

  @property
  def decodes(self) -> bool:
    """True when the layer keeps decoding state (built with `mode="predict"`), itself or in a sublayer: each call
    then continues the sequence of the calls before it. Layers that keep such state override this."""
    return any(child.decodes for child in self.sublayers)

  @property
  def rewindable(self) -> bool:
    """True when `rewind` can take this layer's decoding state back to an earlier position. A layer that keeps
    decoding state of its own overrides this and `rewind_state`; one that cannot go back (an RNN's carry, which
    holds the whole past in one vector) says False."""
    return not self.decodes

  @property
  def max_positions(self) -> int | None:
    """The most positions of one sequence this layer takes (a KV cache's or a learned position table's `max_len`),
    or None where it sets no bound; decoding checks a model's layers against it."""
    return None

  def prefilled_positions(self, model_inputs) -> int:
    """The positions this layer's first predict-mode call puts in the caches before the tokens' own, for a model
    whose inputs have the signature `model_inputs` (an `ImagePrefixLM`'s image tokens: its `Prefill`); 0 for
    layers that add none. Decoding sums them over a model's layers, beside `max_positions`."""
    return 0

  def rewind_state(self, state, index):
    """This layer's `state` as it was when `index` positions had been fed (see `rewind`). The default keeps the
    state of a rewindable layer as it is: it holds no decoding state (batch-norm statistics are not: decoding leaves
    them alone), or nothing that depends on the position."""
    if not self.rewindable:
      kept = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
      raise LayerError(self, "this layer keeps decoding state that it cannot rewind to an earlier position",
                       expected="a layer that overrides rewindable and rewind_state (as attention caches and "
                       "positional encodings do)", actual=f"{type(self).__name__} keeping {', '.join(kept)}")
    return state

  def shorten_state(self, state, positions: int):
    """This layer's decoding `state` with room for only its first `positions` positions (see `shorten`). The default
    keeps the state as it is: it holds nothing sized by the positions (an index, a carry, no state at all)."""
    del positions
    return state

  def init_params_and_state(self, rng: jax.Array, input_signature) -> tuple[Any, Any]:
    """Returns `(params, state)` for this signature; leaves without parameters keep the default `({}, {})`."""
    del rng, input_signature
    return {}, {}

  def forward(self, params, state, inputs, *, rng, train):
    """Returns `(outputs, new_state)`; must be a pure function of its arguments."""
    raise NotImplementedError(f"{type(self).__name__}.forward")

  # --- The contract -------------------------------------------------------------------------------------------

  def init(self, rng: jax.Array, input_signature) -> tuple[Any, Any]:
    """Creates `(params, state)` for inputs of `input_signature` (arrays are accepted as their own signature).

    >>> from combinax import layers as cl
    >>> params, state = cl.Dense(3).init(jax.random.key(0), shapes.ShapeDtype((2, 4)))
    >>> params["kernel"].shape
    (4, 3)
    """
    with _frame(self, input_signature) as is_root:
      if rng is None:
        raise LayerError(self, "init needs an rng, e.g. jax.random.key(0)")
      sig = self._check_signature(input_signature)
      params, state = self.init_params_and_state(rng, sig)
      if is_root and self.sublayers:
        from combinax.layers import scopes  # Imported here: scopes builds on this module.
        params, state = scopes.fold(self, params, state)
    return params, state

  def apply(self, params, state, inputs, *, rng: jax.Array | None = None, train: bool = False):
    """Runs the layer: returns `(outputs, new_state)`. `rng` is needed only by random layers when `train=True`."""
    with _frame(self, inputs) as is_root:
      self._check_inputs(inputs)
      if is_root and self.sublayers:
        from combinax.layers import scopes
        aliases = scopes.plan(self)
        params, state = scopes.unfold(aliases, params), scopes.unfold(aliases, state)
      outputs, new_state = self.forward(params, state, inputs, rng=rng, train=train)
      self._check_outputs(outputs)
      if is_root and self.sublayers:
        new_state = scopes.fold_state(aliases, new_state)
    return outputs, new_state

  def rewind(self, state, index):
    """The decoding `state` (from `init`, then `apply` in predict mode) taken back to what it was when the first
    `index` positions of the sequence had been fed, so decoding can go on from there (speculative decoding drops
    rejected tokens this way). A KV cache keeps its entries and moves its `index`: those past it are masked, and
    overwritten when fed again. `index` may be traced; it must not exceed the positions fed. Raises a `LayerError`
    naming the layer whose state cannot go back (see `rewindable`).

    >>> from combinax import layers as cl
    >>> encoding = cl.PositionalEncoding(mode="predict")
    >>> _, state = encoding.init(jax.random.key(0), shapes.ShapeDtype((1, 1, 4)))
    >>> _, state = encoding.apply({}, state, jnp.zeros((1, 5, 4)))
    >>> int(state["index"]), int(encoding.rewind(state, 2)["index"])
    (5, 2)
    """
    return self._map_state(state, lambda layer_state: self.rewind_state(layer_state, index))

  def shorten(self, state, positions: int):
    """The decoding `state` before its first call (from `init`) with room for only the first `positions` positions:
    each KV cache keeps `positions` of its `max_len` entries, so a decoding step reads and writes that many
    (decoding sizes the caches to what a call will fill this way: its speed then depends on that, not on
    `max_len`). `positions` is a Python int, at most each cache's length; the caller feeds no more positions than
    that (their writes past the end would be dropped).

    >>> from combinax import layers as cl
    >>> attention = cl.DotProductAttention(2, causal=True, mode="predict", max_len=64)
    >>> _, state = attention.init(jax.random.key(0), (shapes.ShapeDtype((1, 1, 8)),) * 3)
    >>> attention.shorten(state, 16)["k"].shape
    (1, 16, 2, 4)
    """
    return self._map_state(state, lambda layer_state: self.shorten_state(layer_state, positions))

  def _map_state(self, state, fn):
    """`fn` of this layer's state, framed like `apply`: at the root, shared layers' state is lent out to each user
    first and folded back after."""
    with _frame(self, state) as is_root:
      if is_root and self.sublayers:
        from combinax.layers import scopes
        aliases = scopes.plan(self)
        state = scopes.unfold(aliases, state)
      state = fn(state)
      if is_root and self.sublayers:
        state = scopes.fold_state(aliases, state)
    return state

  def output_signature(self, input_signature):
    """The signature of the outputs for inputs of `input_signature`, computed without running anything."""
    sig = self._check_signature(input_signature)

    def run(inputs):
      params, state = self.init(jax.random.key(0), sig)
      return self.apply(params, state, inputs)[0]

    return shapes.signature(jax.eval_shape(run, shapes.as_structs(sig)))

  # --- Checks and printing ------------------------------------------------------------------------------------

  def _check_signature(self, input_signature):
    try:
      sig = shapes.signature(input_signature)
    except TypeError:
      raise LayerError(self, "input signature must be arrays or ShapeDtypes",
                       actual=shapes.describe(input_signature)) from None
    self._check_arity(sig, "input signature")
    return sig

  def _check_inputs(self, inputs):
    self._check_arity(inputs, "inputs")
    for item in (inputs,) if self.n_in == 1 else inputs:
      if not shapes.is_array(item):
        raise LayerError(self, "stack items must be arrays", expected=self._expected_arity(),
                         actual=shapes.describe(inputs))

  def _check_outputs(self, outputs):
    ok = shapes.is_array(outputs) if self.n_out == 1 else (
        isinstance(outputs, tuple) and len(outputs) == self.n_out)
    if not ok:
      raise LayerError(self, "forward returned the wrong number of outputs",
                       expected=f"{self.n_out} output(s)", actual=shapes.describe(outputs))

  def _expected_arity(self) -> str:
    if self.n_in == 1:
      return "one array"
    return f"a tuple of {self.n_in} arrays"

  def _check_arity(self, items, what: str):
    if self.n_in == 1:
      ok = not isinstance(items, (tuple, list))
    else:
      ok = isinstance(items, (tuple, list)) and len(items) == self.n_in
    if not ok:
      raise LayerError(self, f"wrong number of stack items in {what}", expected=self._expected_arity(),
                       actual=shapes.describe(items))

  def arity_suffix(self) -> str:
    """Trax's `_in{n}_out{m}` decoration, shown where the arity is not 1."""
    return (f"_in{self.n_in}" if self.n_in != 1 else "") + (f"_out{self.n_out}" if self.n_out != 1 else "")

  def summary(self) -> str:
    """The line `str(model)` shows for this layer: its name, with Trax's arity decoration."""
    return self.name + self.arity_suffix()

  def _lines(self, indent: int) -> list:
    pad = "  " * indent
    head = pad + self.summary()
    children = visible_children(self)
    if not children:
      return [head]
    lines = [head + "["]
    for child in children:
      lines.extend(child._lines(indent + 1))
    return lines + [pad + "]"]

  def __str__(self) -> str:
    return "\n".join(self._lines(0))

  def __repr__(self) -> str:
    return f"<{self.name}{self.arity_suffix()} layer>"


def walk(layer: Layer):
  """Yields `layer` and every sublayer below it, depth first, parents before children and children in order. The
  plumbing that derived combinators build (hidden in `str`) is included, and a layer used twice is met twice.

  >>> from combinax import layers as cl
  >>> [l.name for l in walk(cl.Serial(cl.Dense(2), cl.Serial(cl.Relu(), name="inner")))]
  ['Serial', 'Dense', 'inner', 'Relu']
  """
  yield layer
  for child in layer.sublayers:
    yield from walk(child)


def init_and_signature(layer: Layer, rng: jax.Array, input_signature):
  """`layer.init`, plus the signature of the layer's outputs: what a combinator needs for its next child."""
  params, state = layer.init(rng, input_signature)
  out = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x)[0], params, state, shapes.as_structs(input_signature))
  return params, state, shapes.signature(out)


def child_rng(rng: jax.Array | None, index: int) -> jax.Array | None:
  """The rng of a child, from its position: adding a child at the end changes no other child's rng."""
  return None if rng is None else jax.random.fold_in(rng, index)


MODES = ("train", "eval", "predict")


def check_mode(layer: Layer, mode: str, *, decodes: bool = True) -> str:
  """Trax's modes, with one meaning: "train" and "eval" build the same layer (`apply(train=...)` alone turns dropout
  and batch statistics on); "predict" builds a decoder, which keeps its decoding state (KV caches, positions,
  carries) in `state`. A layer or model with nothing to decode (`decodes=False`) has no "predict"."""
  allowed = MODES if decodes else MODES[:2]
  if mode not in allowed:
    message = "unknown mode" if mode not in MODES else "no 'predict' mode: nothing here keeps decoding state"
    raise LayerError(layer, message, expected=" or ".join(repr(m) for m in allowed), actual=repr(mode))
  return mode


def check_rank(layer: Layer, x, at_least: int, description: str):
  """Raises a LayerError unless `x` (an array or signature) has rank >= `at_least`."""
  if len(x.shape) < at_least:
    raise LayerError(layer, "input has too low a rank", expected=f"rank >= {at_least}: {description}",
                     actual=shapes.describe(x))


def check_last_dim(layer: Layer, x, size: int):
  """Raises a LayerError unless `x`'s last axis has `size` entries, as the layer's parameters were built for."""
  if x.shape[-1] != size:
    raise LayerError(layer, "last dimension differs from the one the layer was initialised for",
                     expected=f"(..., {size})", actual=shapes.describe(x))
