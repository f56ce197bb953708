"""RETRO's chunked cross-attention (Borgeaud et al., 2022) as ordinary layers: a sequence cut into chunks of
`chunk_size` tokens reads, from the next chunk on, the encoded neighbours retrieved for each chunk.

The neighbours come as a second stream beside the activations, as an encoder's output comes to a decoder:
(batch, chunks, k neighbours, r tokens, d). Position p (in chunk c = p // chunk_size) attends to the neighbours
of chunk c - 1 only: never to those retrieved with its own chunk (which retrieval may have read whole, its future
included) nor a later one; the first chunk reads none. (RETRO lets the last token of a chunk read that chunk's
neighbours too; here they wait one position more, so that no position sees neighbours of its own chunk.)
"""

from __future__ import annotations

import jax.numpy as jnp

from combinax import shapes
from combinax.layers.attention import attend, qkv_projections
from combinax.layers.base import Layer, LayerError, check_mode
from combinax.layers.combinators import Parallel, Select, Serial
from combinax.layers.core import Dense


class ChunkedAttention(Layer):
  """(q (batch, t, heads * d_head), k and v (batch, chunks, k, r, kv_heads * d_head)) -> (batch, t, heads * d_head):
  each position's attention over the neighbour tokens of the chunk before its own, zeros where there is none.

  In predict mode it keeps the position of the next token (`index`) in `state`, so tokens decoded one at a time
  attend as the whole sequence does.
  """

  def __init__(self, n_heads: int, chunk_size: int, n_kv_heads: int | None = None, dropout: float = 0.0,
               fast: bool = True, mode: str = "train", name: str | None = None):
    super().__init__(3, 1, name)
    self.n_heads, self.n_kv_heads = int(n_heads), int(n_kv_heads or n_heads)
    self.chunk_size, self.dropout, self.fast = int(chunk_size), float(dropout), fast
    self.mode = check_mode(self, mode)
    if self.chunk_size < 1:
      raise LayerError(self, "chunk_size must be positive", expected="an int >= 1", actual=chunk_size)
    if self.n_heads % self.n_kv_heads:
      raise LayerError(self, "n_heads must be a multiple of n_kv_heads", expected=f"a divisor of {n_heads}",
                       actual=n_kv_heads)
    if not 0.0 <= self.dropout < 1.0:
      raise LayerError(self, "dropout must lie in [0, 1)", expected="0 <= dropout < 1", actual=dropout)

  decodes = property(lambda self: self.mode == "predict")
  rewindable = property(lambda self: True)

  def rewind_state(self, state, index):
    return {"index": jnp.full_like(state["index"], index)} if state else state

  def _d_head(self, inputs) -> int:
    q, k, v = inputs
    ok = len(q.shape) == 3 and len(k.shape) == 5 and k.shape == v.shape and q.shape[0] == k.shape[0]
    ok = ok and q.shape[-1] % self.n_heads == 0 and k.shape[-1] * self.n_heads == q.shape[-1] * self.n_kv_heads
    if not ok:
      raise LayerError(self, f"q must be (batch, length, {self.n_heads} heads * d_head) and the neighbours' k, v "
                       f"(batch, chunks, neighbours, tokens, {self.n_kv_heads} heads * d_head)",
                       expected="q (b, t, h*d), k = v (b, chunks, k, r, kv_h*d)", actual=shapes.describe(inputs))
    if not self.decodes and q.shape[1] > k.shape[1] * self.chunk_size:
      raise LayerError(self, f"a sequence of {q.shape[1]} positions needs neighbours for "
                       f"{-(-q.shape[1] // self.chunk_size)} chunks of {self.chunk_size}",
                       expected=f"at least {-(-q.shape[1] // self.chunk_size)} chunks", actual=k.shape[1])
    return q.shape[-1] // self.n_heads

  def init_params_and_state(self, rng, input_signature):
    self._d_head(input_signature)
    return {}, ({"index": jnp.zeros((), jnp.int32)} if self.decodes else {})

  def forward(self, params, state, inputs, *, rng, train):
    d_head = self._d_head(inputs)
    q, k, v = inputs
    b, t = q.shape[:2]
    chunks, per_chunk = k.shape[1], k.shape[2] * k.shape[3]
    q = q.reshape(b, t, self.n_heads, d_head)
    k, v = (x.reshape(b, chunks * per_chunk, self.n_kv_heads, d_head) for x in (k, v))
    start = state["index"] if state else 0
    read = (start + jnp.arange(t)) // self.chunk_size - 1          # the chunk whose neighbours each position reads
    mask = (jnp.arange(chunks * per_chunk) // per_chunk)[None, :] == read[:, None]   # (t, neighbour tokens)
    dropout = self.dropout if train else 0.0
    if dropout and rng is None:
      raise LayerError(self, "attention dropout with train=True needs an rng", expected="an rng", actual="rng=None")
    out = attend(q, k, v, mask[None, None], dropout=dropout, rng=rng, fast=self.fast)
    # A position with no chunk to read (the first chunk's; past the neighbours given) attends to nothing: zeros.
    has = ((read >= 0) & (read < chunks))[None, :, None, None]
    out = jnp.where(has, out, jnp.zeros((), out.dtype))
    if state:
      state = {"index": start + t}
    return out.reshape(b, t, -1), state


def ChunkedCrossAttention(d_feature: int, n_heads: int = 1, *, chunk_size: int, n_kv_heads: int | None = None,
                          dropout: float = 0.0, use_bias: bool = True, fast: bool = True, mode: str = "train",
                          output_initializer="glorot_uniform", name: str | None = "chunked_cross_attention") -> Layer:
  """(x (batch, length, d), neighbours (batch, chunks, k, r, d_n)) -> (y (batch, length, d), neighbours): x's
  attention over the encoded neighbours of the chunk before each position's own (`ChunkedAttention`), projected
  back to d; zeros in the first chunk. The neighbours pass through, for the next block that reads them.

  Params: `q` (on x), `k`, `v` (on the neighbours), `o` projections. `output_initializer="zeros"` starts `o` at
  zero, so that a residual around this layer is at first the identity (how a trained LM is retro-fitted).

  >>> layer = ChunkedCrossAttention(8, n_heads=2, chunk_size=4)
  >>> layer.output_signature((ShapeDtype((1, 8, 8)), ShapeDtype((1, 2, 3, 4, 6))))[0]
  ShapeDtype((1, 8, 8), float32)
  """
  q, k, v = qkv_projections("ChunkedCrossAttention", d_feature, n_heads, n_kv_heads, use_bias)
  return Serial(
      Select([0, 1, 1, 1]),                                       # x, neighbours, neighbours, neighbours
      Parallel(q, k, v),                                          # q, k, v, neighbours
      ChunkedAttention(n_heads, chunk_size, n_kv_heads, dropout=dropout, fast=fast, mode=mode),  # context, nbrs
      Dense(d_feature, output_initializer, use_bias=use_bias, name="o"),            # y, neighbours
      name=name)
