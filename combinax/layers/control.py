"""Control-flow combinators: `Scan` and `Cond` on `lax`, `Chunk`, `BatchLeadingAxes`, `Bidirectional`, `Remat`,
`Cache` and `Prefill` (what a decoder computes once)."""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
from jax import lax

from combinax import shapes
from combinax.layers.base import Layer, LayerError, check_mode, child_rng, init_and_signature
from combinax.layers.combinators import (Branch, Concatenate, Fn, Select, Serial, from_stack, init_on_one_stack,
                                         mark_hidden, to_stack)
from combinax.layers.scopes import Combinator


class Wrapper(Combinator):
  """A combinator around one layer (`self.layer`), with that layer's arity; the layer's params and state sit at its
  key in this combinator's scope. The base of `Scan`, `Cache`, `Remat`, `LoRA`, ...: a subclass overrides `forward`
  (running the layer through `inner_apply`) and, where it changes the layer's inputs, `inner_signature`."""

  def __init__(self, layer: Layer, name: str | None = None, own_state: bool = False):
    super().__init__([layer], layer.n_in, layer.n_out, name, own_state)
    self.layer = layer

  def init_params_and_state(self, rng, input_signature):
    params, state = self.layer.init(child_rng(rng, 0), self.inner_signature(input_signature))
    return self._wrap(params), self._wrap(state)

  def inner_signature(self, input_signature):
    return input_signature

  def _wrap(self, child_tree) -> dict:
    tree = {}
    self.store_child(tree, 0, child_tree, overwrite=False)
    return tree

  def inner_apply(self, params, state, inputs, rng, train):
    """Applies the wrapped layer with this combinator's params/state; returns (outputs, our new state)."""
    outputs, new_state = self.layer.apply(self.child_view(params, 0), self.child_view(state, 0), inputs,
                                          rng=rng, train=train)
    return outputs, self._wrap(new_state)


class Scan(Wrapper):
  """Runs `layer` along `axis` with `lax.scan`, Trax-style: the layer maps (x..., carry...) to (y..., carry...),
  the last `n_carry` stack items being the carries. Outputs are the stacked ys and the final carries.

  With `mode="predict"` (decoding one chunk at a time), the carries live in this layer's own state (`Scan_0/carry`):
  each call starts from the carries the previous call ended with (zeros after `init`) instead of its carry inputs.

  >>> from combinax.layers.combinators import Add, Dup
  >>> Scan(Serial(Add(), Dup()), axis=0).n_in  # (xs, carry) -> (running sums, final carry)
  2
  """

  def __init__(self, layer: Layer, axis: int = 0, n_carry: int = 1, remat: bool = False, mode: str = "train",
               name: str | None = None):
    super().__init__(layer, name, own_state=mode == "predict")
    self.axis, self.n_carry, self.remat, self.mode = axis, n_carry, remat, check_mode(self, mode)
    if not 0 <= n_carry < layer.n_in or n_carry > layer.n_out:
      raise LayerError(self, "n_carry must leave at least one scanned input and fit in the outputs",
                       expected=f"0 <= n_carry < {layer.n_in} and n_carry <= {layer.n_out}", actual=n_carry)

  decodes = property(lambda self: self.mode == "predict" or self.layer.decodes)
  # A carry is a function of every position before it: no part of it belongs to the positions to be dropped.
  rewindable = property(lambda self: self.mode != "predict" and self.layer.rewindable)

  def rewind_state(self, state, index):
    if self.mode == "predict":
      raise LayerError(self, "a recurrent carry cannot be rewound to an earlier position: it folds every position "
                       "before it into one value", expected="decoding state kept per position (a KV cache)",
                       actual=f"carries {shapes.describe(state[self.own_key]['carry'])}")
    return super().rewind_state(state, index)

  def _split(self, items):
    stack = to_stack(items, self.n_in)
    cut = self.n_in - self.n_carry
    return stack[:cut], stack[cut:]

  def inner_signature(self, input_signature):
    xs, carries = self._split(input_signature)
    for x in xs:
      if x.ndim == 0:
        raise LayerError(self, f"scanned inputs need an axis {self.axis}", expected="rank >= 1",
                         actual=shapes.describe(input_signature))
    step = [shapes.ShapeDtype(x.shape[:self.axis % x.ndim] + x.shape[self.axis % x.ndim + 1:], x.dtype) for x in xs]
    return from_stack(step + carries, self.n_in)

  def init_params_and_state(self, rng, input_signature):
    step = self.inner_signature(input_signature)
    params, state, out = init_and_signature(self.layer, child_rng(rng, 0), step)
    carries_in = self._split(input_signature)[1]
    carries_out = to_stack(out, self.n_out)[self.n_out - self.n_carry:]
    if list(carries_in) != list(carries_out):
      raise LayerError(self, "the layer must return its carries with the signature it was given",
                       expected=shapes.describe(carries_in), actual=shapes.describe(carries_out))
    state = self._wrap(state)
    if self.mode == "predict":
      state[self.own_key] = {"carry": tuple(jnp.zeros(c.shape, c.dtype) for c in carries_in)}
    return self._wrap(params), state

  def forward(self, params, state, inputs, *, rng, train):
    xs, carries = self._split(inputs)
    state = dict(state)
    if self.mode == "predict":
      stored = state.pop(self.own_key)["carry"]
      if shapes.signature(tuple(carries)) != shapes.signature(stored):
        raise LayerError(self, "in predict mode the carry inputs must match the carries kept in state",
                         expected=shapes.describe(stored), actual=shapes.describe(tuple(carries)))
      carries = stored
    xs = [jnp.moveaxis(x, self.axis, 0) for x in xs]
    lengths = {x.shape[0] for x in xs}
    if len(lengths) != 1:
      raise LayerError(self, f"scanned inputs must have the same length along axis {self.axis}",
                       expected="equal lengths", actual=shapes.describe(inputs))
    length = lengths.pop()
    rngs = None if rng is None else jax.random.split(child_rng(rng, 0), length)
    n_y = self.n_out - self.n_carry

    def step(carry, scanned):
      carries_t, state_t = carry
      xs_t, rng_t = scanned
      outputs, new_state = self.inner_apply(params, state_t, from_stack(list(xs_t) + list(carries_t), self.n_in),
                                            rng_t, train)
      outputs = to_stack(outputs, self.n_out)
      return (tuple(outputs[n_y:]), new_state), tuple(outputs[:n_y])

    if self.remat:
      step = jax.checkpoint(step)
    (carries, new_state), ys = lax.scan(step, (tuple(carries), state), (tuple(xs), rngs))
    ys = [jnp.moveaxis(y, 0, self.axis) for y in ys]
    if self.mode == "predict":
      new_state[self.own_key] = {"carry": carries}
    return from_stack(ys + list(carries), self.n_out), new_state


class Cond(Combinator):
  """Runs `true` or `false` (identity when None) on the top inputs, as chosen by the scalar that `cond` computes
  from them; `lax.cond` traces both. Items beyond the branches' inputs pass through."""

  def __init__(self, cond: Layer, true: Layer, false: Layer | None = None, name: str | None = None):
    if false is None:
      if true.n_in != true.n_out:
        raise LayerError(true, "Cond without `false` needs a `true` branch with n_in == n_out",
                         expected=f"n_out == {true.n_in}", actual=f"n_out == {true.n_out}")
      false = mark_hidden(Select(list(range(true.n_in)), name="Identity"))
    if (true.n_in, true.n_out) != (false.n_in, false.n_out):
      raise LayerError(false, "Cond's branches must have the same arity",
                       expected=f"{true.n_in} -> {true.n_out}", actual=f"{false.n_in} -> {false.n_out}")
    if cond.n_out != 1:
      raise LayerError(cond, "Cond's condition must have one output", expected="n_out == 1", actual=cond.n_out)
    n_in = max(cond.n_in, true.n_in)
    super().__init__([cond, true, false], n_in, true.n_out + n_in - true.n_in, name)

  def init_params_and_state(self, rng, input_signature):
    return init_on_one_stack(self, rng, input_signature)

  def forward(self, params, state, inputs, *, rng, train):
    stack, new_state = to_stack(inputs, self.n_in), dict(state)
    cond, true, false = self.sublayers
    pred, s = cond.apply(self.child_view(params, 0), self.child_view(state, 0), from_stack(stack, cond.n_in),
                         rng=child_rng(rng, 0), train=train)
    self.store_child(new_state, 0, s, overwrite=True)
    if pred.size != 1:
      raise LayerError(self, "the condition must be a scalar", expected="one element",
                       actual=shapes.describe(pred))

    def branch(index):
      def run(branch_state):
        layer = self.sublayers[index]
        y, s = layer.apply(self.child_view(params, index), self.child_view(branch_state, index),
                           from_stack(stack, layer.n_in), rng=child_rng(rng, index), train=train)
        branch_state = dict(branch_state)
        self.store_child(branch_state, index, s, overwrite=True)
        return y, branch_state
      return run

    outputs, new_state = lax.cond(jnp.reshape(pred, ()).astype(bool), branch(1), branch(2), new_state)
    return from_stack(to_stack(outputs, true.n_out) + stack[true.n_in:], self.n_out), new_state


class Chunk(Wrapper):
  """Runs `layer` on `chunk_size` examples at a time (a scan over the batch) to bound memory."""

  def __init__(self, layer: Layer, chunk_size: int, name: str | None = None):
    super().__init__(layer, name)
    self.chunk_size = int(chunk_size)
    if self.chunk_size < 1:
      raise LayerError(self, "chunk_size must be positive", expected=">= 1", actual=chunk_size)

  def forward(self, params, state, inputs, *, rng, train):
    items = to_stack(inputs, self.n_in)
    sizes = {x.shape[0] if x.ndim else 0 for x in items}
    size = sizes.pop() if len(sizes) == 1 else 0
    if not size or size % self.chunk_size:
      raise LayerError(self, f"inputs need one batch size divisible by chunk_size {self.chunk_size}",
                       expected=f"leading axes that are multiples of {self.chunk_size}",
                       actual=shapes.describe(inputs))
    n_chunks = size // self.chunk_size
    chunks = tuple(x.reshape((n_chunks, self.chunk_size) + x.shape[1:]) for x in items)
    rngs = None if rng is None else jax.random.split(child_rng(rng, 0), n_chunks)

    def step(chunk_state, scanned):
      x, rng_t = scanned
      y, chunk_state = self.inner_apply(params, chunk_state, from_stack(list(x), self.n_in), rng_t, train)
      return chunk_state, tuple(to_stack(y, self.n_out))

    new_state, ys = lax.scan(step, dict(state), (chunks, rngs))
    return from_stack([y.reshape((-1,) + y.shape[2:]) for y in ys], self.n_out), new_state


class BatchLeadingAxes(Wrapper):
  """Runs `layer`, which expects rank `n_last_axes_to_keep + 1`, with all leading axes folded into one batch."""

  def __init__(self, layer: Layer, n_last_axes_to_keep: int = 1, name: str | None = None):
    super().__init__(layer, name)
    self.n_keep = int(n_last_axes_to_keep)

  def _leading(self, items):
    stack = to_stack(items, self.n_in)
    leading = {x.shape[:len(x.shape) - self.n_keep] for x in stack}
    if len(leading) != 1 or any(len(x.shape) <= self.n_keep for x in stack):
      raise LayerError(self, f"inputs need the same leading axes before their last {self.n_keep}",
                       expected=f"rank > {self.n_keep}, equal leading axes", actual=shapes.describe(items))
    return stack, leading.pop()

  def inner_signature(self, input_signature):
    stack, leading = self._leading(input_signature)
    flat = [shapes.ShapeDtype((math.prod(leading),) + x.shape[len(leading):], x.dtype) for x in stack]
    return from_stack(flat, self.n_in)

  def forward(self, params, state, inputs, *, rng, train):
    stack, leading = self._leading(inputs)
    flat = [x.reshape((-1,) + x.shape[len(leading):]) for x in stack]
    outputs, new_state = self.inner_apply(params, state, from_stack(flat, self.n_in), child_rng(rng, 0), train)
    ys = [y.reshape(leading + y.shape[1:]) for y in to_stack(outputs, self.n_out)]
    return from_stack(ys, self.n_out), new_state


class Remat(Wrapper):
  """Runs `layer` under `jax.checkpoint`: its activations are recomputed in the backward pass, not stored."""

  def forward(self, params, state, inputs, *, rng, train):
    run = jax.checkpoint(lambda p, s, x, r: self.inner_apply(p, s, x, r, train))
    return run(params, state, inputs, child_rng(rng, 0))


class Bidirectional(Serial):
  """Runs `forward_layer` along `axis` and a copy of it (own weights) backwards; merges both (concatenation)."""

  def __init__(self, forward_layer: Layer, axis: int = 1, merge_layer: Layer | None = None,
               name: str | None = None):
    backward_layer = copy.deepcopy(forward_layer)
    flip = Fn("Flip", lambda x: jnp.flip(x, axis=axis))
    merge = merge_layer if merge_layer is not None else Concatenate()
    backward = mark_hidden(Serial(flip, backward_layer, flip))
    super().__init__(mark_hidden(Branch(forward_layer, backward)), merge, name=name)
    self.forward_layer, self.backward_layer, self.merge_layer = forward_layer, backward_layer, merge

  @property
  def display_sublayers(self):
    return (self.forward_layer, self.backward_layer, self.merge_layer)


class Cache(Wrapper):
  """Trax's `Cache`: in predict mode, runs `layer` on the first call and returns the same outputs on later calls
  (e.g. an encoder while its decoder emits one token per call). In other modes it is `layer`."""

  def __init__(self, layer: Layer, mode: str = "train", name: str | None = None):
    super().__init__(layer, name, own_state=mode == "predict")
    self.mode = check_mode(self, mode)

  decodes = property(lambda self: self.mode == "predict" or self.layer.decodes)

  def rewind_state(self, state, index):
    """The outputs depend on the inputs, not on the position: they stay, unless rewound to before the first call."""
    state = super().rewind_state(state, index)
    if self.mode != "predict":
      return state
    filled = state[self.own_key]["filled"] & (index > 0)
    outputs = tuple(jnp.where(filled, o, jnp.zeros_like(o)) for o in state[self.own_key]["outputs"])
    return {**state, self.own_key: {"outputs": outputs, "filled": filled}}

  def init_params_and_state(self, rng, input_signature):
    params, state, out = init_and_signature(self.layer, child_rng(rng, 0), input_signature)
    state = self._wrap(state)
    if self.mode == "predict":
      state[self.own_key] = {"outputs": tuple(jnp.zeros(o.shape, o.dtype) for o in to_stack(out, self.n_out)),
                             "filled": jnp.zeros((), jnp.bool_)}
    return self._wrap(params), state

  def forward(self, params, state, inputs, *, rng, train):
    if self.mode != "predict":
      return self.inner_apply(params, state, inputs, child_rng(rng, 0), train)
    state = dict(state)
    own = state.pop(self.own_key)

    def compute(inner_state):
      outputs, new_state = self.inner_apply(params, inner_state, inputs, child_rng(rng, 0), train)
      return tuple(to_stack(outputs, self.n_out)), new_state

    outputs, state = lax.cond(own["filled"], lambda s: (own["outputs"], s), compute, state)
    state[self.own_key] = {"outputs": outputs, "filled": jnp.ones((), jnp.bool_)}
    return from_stack(list(outputs), self.n_out), state


class Prefill(Combinator):
  """(prefix inputs, *rest) -> `layer`(`prefix`(prefix inputs), *rest): a decoder whose sequence begins with
  positions made from another input (PaliGemma's image tokens before its text).

  In predict mode the first call runs `prefix` and `layer` on its output, which fills the caches with the prefix's
  positions; later calls skip `prefix` and give `layer` the prefix emptied along axis 1 (batch, 0, ...), so a
  decoding step costs what the text decoder's own step costs. In other modes it is
  `Serial(Parallel(prefix, None, ...), layer)`. The prefix's positions are not the decoding loop's (it counts
  tokens), so a predict-mode `Prefill` cannot be rewound.

  >>> from combinax.layers.core import Dense
  >>> Prefill(Dense(4), Fn("Join", lambda p, x: jnp.concatenate([p, x], axis=1))).n_in
  2
  """

  def __init__(self, prefix: Layer, layer: Layer, mode: str = "train", name: str | None = None):
    if prefix.n_out != 1 or layer.n_in < 1:
      raise LayerError(prefix, "a prefix is one stack item, the first of `layer`'s inputs",
                       expected="prefix.n_out == 1 and layer.n_in >= 1", actual=(prefix.n_out, layer.n_in))
    super().__init__([prefix, layer], prefix.n_in + layer.n_in - 1, layer.n_out, name, own_state=mode == "predict")
    self.prefix, self.layer, self.mode = prefix, layer, check_mode(self, mode)

  decodes = property(lambda self: self.mode == "predict" or self.layer.decodes)
  rewindable = property(lambda self: self.mode != "predict" and self.prefix.rewindable and self.layer.rewindable)

  def rewind_state(self, state, index):
    if self.mode == "predict":
      raise LayerError(self, "a prefilled prefix's positions (an image's) are in the caches but not among the "
                       "decoding loop's positions, so rewinding by those would drop the wrong ones",
                       expected="a decoder without a prefilled prefix", actual="a predict-mode Prefill")
    return super().rewind_state(state, index)

  def prefilled_positions(self, model_inputs) -> int:
    """The prefix's positions (its output's axis 1), for a `Prefill` whose prefix reads the model's first inputs
    (as an `ImagePrefixLM`'s does)."""
    if self.mode != "predict":
      return 0
    head, _ = self._split(shapes.signature(model_inputs))
    return self.prefix.output_signature(head).shape[1]

  def _split(self, items):
    stack = to_stack(items, self.n_in)
    k = self.prefix.n_in
    return from_stack(stack[:k], k), stack[k:]

  def init_params_and_state(self, rng, input_signature):
    head, rest = self._split(input_signature)
    prefix_params, prefix_state, out = init_and_signature(self.prefix, child_rng(rng, 0), head)
    layer_params, layer_state = self.layer.init(child_rng(rng, 1), from_stack([out, *rest], self.layer.n_in))
    params, state = {}, {}
    for i, (p, s) in enumerate([(prefix_params, prefix_state), (layer_params, layer_state)]):
      self.store_child(params, i, p, overwrite=False)
      self.store_child(state, i, s, overwrite=False)
    if self.mode == "predict":
      state[self.own_key] = {"filled": jnp.zeros((), jnp.bool_)}
    return params, state

  def forward(self, params, state, inputs, *, rng, train):
    head, rest = self._split(inputs)

    def run(prefixed, states):
      """`layer` after `prefix` (prefixed) or on an empty prefix; returns (outputs as a stack, both states)."""
      prefix_state, layer_state = states
      if prefixed:
        out, prefix_state = self.prefix.apply(self.child_view(params, 0), prefix_state, head,
                                              rng=child_rng(rng, 0), train=train)
      else:
        sig = jax.eval_shape(lambda s: self.prefix.apply(self.child_view(params, 0), s, head)[0], prefix_state)
        out = jnp.zeros((sig.shape[0], 0) + sig.shape[2:], sig.dtype)
      y, layer_state = self.layer.apply(self.child_view(params, 1), layer_state,
                                        from_stack([out, *rest], self.layer.n_in), rng=child_rng(rng, 1),
                                        train=train)
      return tuple(to_stack(y, self.n_out)), (prefix_state, layer_state)

    state = dict(state)
    own = state.pop(self.own_key) if self.mode == "predict" else None
    states = (self.child_view(state, 0), self.child_view(state, 1))
    if own is None:
      outputs, states = run(True, states)
    else:   # the prefix once; later calls cost a text step (the untaken branch is not run)
      try:
        outputs, states = lax.cond(own["filled"], lambda s: run(False, s), lambda s: run(True, s), states)
      except TypeError as error:   # lax.cond's branches disagree: the outputs grew with the prefix
        raise LayerError(self, "when decoding, `layer`'s outputs must not depend on the prefix's length (later "
                         "calls give it an empty prefix): return the text's positions only",
                         expected="the same outputs with and without the prefix",
                         actual=next((line for line in str(error).splitlines() if "has type" in line),
                                     str(error))) from None
      state[self.own_key] = {"filled": jnp.ones((), jnp.bool_)}
    for i, s in enumerate(states):
      self.store_child(state, i, s, overwrite=True)
    return from_stack(list(outputs), self.n_out), state
