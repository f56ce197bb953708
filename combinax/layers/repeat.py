"""`Repeat`: n copies of a block, each with its own weights, stored stacked on a leading layer axis."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from combinax import shapes
from combinax.layers.base import Layer, LayerError, child_rng
from combinax.layers.combinators import from_stack, init_on_one_stack, to_stack
from combinax.layers.scopes import Combinator
from combinax.quant.weights import QuantizedArray


def _quantized(leaf) -> bool:
  return isinstance(leaf, QuantizedArray)


REMAT = (False, "dots", True)


class Repeat(Combinator):
  """Runs `n_layers` copies of `block` one after another, each with its own weights.

  The block's params (and state) are stacked on a leading axis of size `n_layers` and sit directly under this layer's
  key, so paths read `blocks/attention/q/kernel` with shape `(n_layers, ...)`. With `scan=True` the copies run as one
  `lax.scan` (compile time independent of depth); with `scan=False` as an unrolled loop over the same params. The
  block must map its inputs to outputs of the same signature. `remat` chooses what the backward pass keeps of each
  block's forward pass: `False` everything, `"dots"` only the outputs of its matmuls (layer norms, activations,
  dropout masks and softmaxes are recomputed: on CPU this is faster than storing and reloading them, and it saves
  memory), `True` nothing (each block runs twice: the least memory).

  >>> blocks = Repeat(cl.Serial(cl.Dense(4), cl.Relu()), 3, name="blocks")
  >>> params, _ = blocks.init(jax.random.key(0), ShapeDtype((2, 4)))
  >>> params["Dense_0"]["kernel"].shape
  (3, 4, 4)
  """

  def __init__(self, block: Layer, n_layers: int, scan: bool = True, remat: bool | str = False,
               name: str | None = None):
    super().__init__([block], block.n_in, block.n_out, name)
    self.block, self.n_layers, self.scan, self.remat = block, int(n_layers), scan, remat
    if remat not in REMAT:
      raise LayerError(self, "unknown remat", expected=f"one of {REMAT}", actual=remat)
    if block.n_in != block.n_out:
      raise LayerError(self, "the repeated block must have as many outputs as inputs",
                       expected=f"n_out == {block.n_in}", actual=f"n_out == {block.n_out}")
    if self.n_layers < 1:
      raise LayerError(self, "n_layers must be positive", expected=">= 1", actual=n_layers)
    # The block's own params form this scope (stacked), whatever the block's name.
    self.member_keys = block.member_keys if isinstance(block, Combinator) else ()

  @property
  def transparent(self) -> bool:
    return False  # stacked params cannot merge into the enclosing scope

  def init_params_and_state(self, rng, input_signature):
    out = self.block.output_signature(input_signature)
    if out != input_signature:
      raise LayerError(self, "the repeated block must keep the signature of its inputs",
                       expected=shapes.describe(input_signature), actual=shapes.describe(out))
    rngs = jnp.stack([child_rng(rng, i) for i in range(self.n_layers)])
    return jax.vmap(lambda r: self.block.init(r, input_signature))(rngs)

  def rewind_state(self, state, index):
    """Each copy's state, stacked as it is, rewound as the block rewinds its own."""
    if not jax.tree_util.tree_leaves(state):
      return state
    return jax.vmap(lambda layer_state: self.block.rewind(layer_state, index))(state)

  def shorten_state(self, state, positions: int):
    """Each copy's state, stacked as it is, shortened as the block shortens its own."""
    if not jax.tree_util.tree_leaves(state):
      return state
    return jax.vmap(lambda layer_state: self.block.shorten(layer_state, positions))(state)

  def rematerialised(self, fn, *, prevent_cse: bool):
    """`fn` under `jax.checkpoint` with this layer's `remat` policy; `fn` itself when `remat` is False."""
    if not self.remat:
      return fn
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if self.remat == "dots" else None
    return jax.checkpoint(fn, policy=policy, prevent_cse=prevent_cse)

  def forward(self, params, state, inputs, *, rng, train):
    def one_block(inputs, layer_params, layer_state, index):
      layer_rng = None if rng is None else jax.random.fold_in(rng, index)
      return self.block.apply(layer_params, layer_state, inputs, rng=layer_rng, train=train)

    # In a scan, XLA cannot merge the recomputation back into the forward pass, so CSE may stay on.
    one_block = self.rematerialised(one_block, prevent_cse=not self.scan)
    # Quantized weights are not sliced per layer: each goes to the block whole, with the layer's index
    # (`QuantizedArray.layer`), so that the quantized matmul kernel reads the layer where it lies. Sliced, each
    # layer's weights were copied out of the stack before the kernel read them: SmolLM2's int8 decoding step took
    # 1.6x as long as with XLA's own dot, which reads the slice in place (experiments/integer_activations.py --kernel).
    params = jax.tree_util.tree_map(lambda a: a.selected() if _quantized(a) else a, params, is_leaf=_quantized)
    whole = lambda layer_params, index: jax.tree_util.tree_map(
        lambda stacked, sliced: dataclasses.replace(stacked, layer=index) if _quantized(stacked) else sliced,
        params, layer_params, is_leaf=_quantized)
    unsliced = jax.tree_util.tree_map(lambda a: None if _quantized(a) else a, params, is_leaf=_quantized)
    if self.scan:
      def step(carry, per_layer):
        layer_params, layer_state, index = per_layer
        return one_block(carry, whole(layer_params, index), layer_state, index)
      return lax.scan(step, inputs, (unsliced, state, jnp.arange(self.n_layers)))
    new_states = []
    for i in range(self.n_layers):
      take = lambda tree: jax.tree_util.tree_map(lambda a: a[i], tree)
      inputs, layer_state = one_block(inputs, whole(take(unsliced), jnp.int32(i)), take(state), i)
      new_states.append(layer_state)
    return inputs, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *new_states)


class Interleave(Combinator):
  """`n_layers` copies of `block` with a copy of `inserted` after every `every`-th: block, ..., block, inserted,
  block, ..., inserted. The blocks' params are one stack of `n_layers` under `block_name` (the same paths and shapes
  as `Repeat(block, n_layers, name=block_name)`, so a trained stack of blocks loads as it is), the inserted layers'
  one stack of `n_layers // every` under `inserted_name`. `block` works on the top `block.n_in` stack items,
  `inserted` on the top `inserted.n_in`; each keeps the signature of what it reads. With `scan=True` the groups run
  as one `lax.scan` (their blocks as an inner one).

  >>> layer = Interleave(cl.Dense(4), 4, cl.Residual(cl.Dense(4)), every=2)
  >>> params, _ = layer.init(jax.random.key(0), ShapeDtype((2, 4)))
  >>> params["blocks"]["kernel"].shape, params["inserted"]["Dense_0"]["kernel"].shape
  ((4, 4, 4), (2, 4, 4))
  """

  def __init__(self, block: Layer, n_layers: int, inserted: Layer, *, every: int, scan: bool = True,
               remat: bool | str = False, block_name: str = "blocks", inserted_name: str = "inserted"):
    blocks = Repeat(block, n_layers, scan=scan, remat=remat, name=block_name)
    if int(every) < 1 or blocks.n_layers % int(every):
      raise LayerError(blocks, "the blocks must split into groups of `every`, each followed by the inserted layer",
                       expected=f"every >= 1 dividing n_layers={n_layers}", actual=f"every={every}")
    insertions = Repeat(inserted, blocks.n_layers // int(every), scan=scan, remat=remat, name=inserted_name)
    n = max(blocks.n_in, insertions.n_in)
    super().__init__([blocks, insertions], n, n)
    self.every, self.scan = int(every), scan
    self.group = Repeat(block, self.every, scan=scan, remat=remat)   # one group's blocks, on its slice of the stack

  def _grouped(self, tree):
    """A (n_layers, ...) stack as (groups, every, ...)."""
    return jax.tree_util.tree_map(lambda a: a.reshape((-1, self.every) + a.shape[1:]), tree)

  def _run(self, layer, params, state, stack, rng, train):
    out, state = layer.apply(params, state, from_stack(stack, layer.n_in), rng=rng, train=train)
    return to_stack(out, layer.n_out) + stack[layer.n_in:], state

  def init_params_and_state(self, rng, input_signature):
    return init_on_one_stack(self, rng, input_signature)

  def forward(self, params, state, inputs, *, rng, train):
    blocks, insertions = self.sublayers
    rngs = [None if rng is None else child_rng(rng, i) for i in range(2)]
    run_inserted = insertions.rematerialised(
        lambda p, s, stack, r: self._run(insertions.block, p, s, stack, r, train), prevent_cse=not self.scan)

    def group(stack, block_params, block_state, inserted_params, inserted_state, g):
      fold = lambda r: None if r is None else jax.random.fold_in(r, g)
      stack, block_state = self._run(self.group, block_params, block_state, stack, fold(rngs[0]), train)
      stack, inserted_state = run_inserted(inserted_params, inserted_state, stack, fold(rngs[1]))
      return stack, (block_state, inserted_state)

    per_group = (self._grouped(self.child_view(params, 0)), self._grouped(self.child_view(state, 0)),
                 self.child_view(params, 1), self.child_view(state, 1), jnp.arange(insertions.n_layers))
    stack = to_stack(inputs, self.n_in)
    if self.scan:
      stack, (block_state, inserted_state) = lax.scan(lambda s, xs: group(s, *xs), stack, per_group)
    else:
      outs = []
      for g in range(insertions.n_layers):
        stack, out = group(stack, *jax.tree_util.tree_map(lambda a: a[g], per_group))
        outs.append(out)
      block_state, inserted_state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
    new_state = dict(state)
    flat = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), block_state)
    self.store_child(new_state, 0, flat, overwrite=True)
    self.store_child(new_state, 1, inserted_state, overwrite=True)
    return from_stack(stack, self.n_out), new_state
