"""Attention and the sequence plumbing around it: shifting, masks, positions, multi-head attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from combinax import shapes
from combinax.layers.base import Layer, LayerError, check_mode
from combinax.layers.combinators import Branch, Parallel, Select, Serial
from combinax.layers.core import Dense, dropout_mask
from combinax.layers.positional import ROTARY_LAYOUTS, rotary


class ShiftRight(Layer):
  """Shifts a (batch, length, ...) array right along axis 1 by `n_positions`, filling with `pad_value`:
  a language model's inputs are its targets shifted right. In predict mode (one token per call) it is the identity.

  >>> ShiftRight().apply({}, {}, jnp.array([[1, 2, 3]]))[0]
  Array([[0, 1, 2]], dtype=int32)
  """

  def __init__(self, n_positions: int = 1, pad_value=0, mode: str = "train", name: str | None = None):
    super().__init__(1, 1, name)
    self.n_positions, self.pad_value, self.mode = int(n_positions), pad_value, check_mode(self, mode)

  decodes = property(lambda self: self.mode == "predict")
  rewindable = property(lambda self: True)   # predict mode keeps nothing: a shift of one token per call is no shift

  def forward(self, params, state, x, *, rng, train):
    if x.ndim < 2:
      raise LayerError(self, "input needs a length axis", expected="rank >= 2: (batch, length, ...)",
                       actual=shapes.describe(x))
    if self.mode == "predict":
      return x, state
    pad = [(0, 0)] * x.ndim
    pad[1] = (self.n_positions, 0)
    padded = jnp.pad(x, pad, constant_values=self.pad_value)
    return padded[:, :x.shape[1]], state


class PaddingMask(Layer):
  """From token ids (batch, length), the attention mask (batch, 1, 1, length): True where the token is not `pad`."""

  def __init__(self, pad: int = 0, name: str | None = None):
    super().__init__(1, 1, name)
    self.pad = pad

  def forward(self, params, state, ids, *, rng, train):
    if ids.ndim != 2:
      raise LayerError(self, "input must be token ids", expected="(batch, length)", actual=shapes.describe(ids))
    return (ids != self.pad)[:, None, None, :], state


class EncoderDecoderMask(Layer):
  """(decoder activations (batch, target length, d), encoder padding mask (batch, 1, 1, source length)) ->
  the cross-attention mask (batch, 1, target length, source length)."""

  def __init__(self, name: str | None = None):
    super().__init__(2, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    decoder, mask = inputs
    if mask.ndim != 4 or decoder.ndim < 2 or mask.shape[0] != decoder.shape[0]:
      raise LayerError(self, "expected decoder activations and an encoder padding mask",
                       expected="((batch, target length, ...), (batch, 1, 1, source length))",
                       actual=shapes.describe(inputs))
    return jnp.broadcast_to(mask, (mask.shape[0], 1, decoder.shape[1], mask.shape[-1])), state


_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # masked logits: exp() underflows to 0 without inf - inf = nan


def attend(q, k, v, mask, *, dropout: float = 0.0, rng=None, fast: bool = True):
  """Multi-head scaled dot-product attention with grouped K/V heads.

  q: (batch, Tq, heads, d_head); k, v: (batch, Tk, kv_heads, d_head) with heads a multiple of kv_heads;
  mask: boolean, broadcastable to (batch, heads, Tq, Tk), True where attending is allowed (or None).
  Returns (batch, Tq, heads, d_head). Dropout on the attention weights needs the explicit path (fast=False).
  """
  if fast and not dropout:
    return jax.nn.dot_product_attention(q, k, v, mask=mask).astype(q.dtype)
  b, tq, h, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, tq, kv_heads, h // kv_heads, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(float(d))
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, h, tq, k.shape[1])).reshape(b, kv_heads, h // kv_heads, tq, k.shape[1])
    logits = jnp.where(mask, logits, _NEG)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout:
    keep, scale = dropout_mask(rng, dropout, weights.shape)
    weights = jnp.where(keep, weights * jnp.asarray(scale, weights.dtype), 0.0)
  out = jnp.einsum("bkgts,bskd->btkgd", weights.astype(v.dtype), v)
  return out.reshape(b, tq, h, d)


CACHE_BLOCK = 256   # positions of a KV cache read at a time when decoding


def _read_block(q, k_cache, v_cache, i, carry, *, block: int, start, prefix_lengths):
  """One block of `attend_cached`'s loop: the keys and values of positions i * block .. (i + 1) * block - 1 folded
  into the running (maximum, sum, weighted values) of q (batch, tq, kv_heads, group, d_head)."""
  top, total, acc = carry                          # (b, kv, g, tq), the same, (b, kv, g, tq, d): float32
  tq, d, max_len = q.shape[1], q.shape[-1], k_cache.shape[1]
  first = i * block
  at = jnp.minimum(first, max_len - block)         # the last block may start earlier: its repeats are masked
  k = lax.dynamic_slice_in_dim(k_cache, at, block, axis=1)
  v = lax.dynamic_slice_in_dim(v_cache, at, block, axis=1)
  key_pos = at + jnp.arange(block)
  new = (key_pos >= first)[None]                                              # (1, block)
  allowed = ((key_pos[None] <= start + jnp.arange(tq)[:, None]) & new)[None]  # (1, tq, block)
  if prefix_lengths is not None:
    seen = (key_pos[None] < prefix_lengths[:, None]) & (key_pos < start + tq)[None] & new   # (b, block)
    allowed = allowed | seen[:, None]                                         # (b, tq, block)
  allowed = allowed[:, None, None]                                            # (b | 1, 1, 1, tq, block)
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(float(d))
  logits = jnp.where(allowed, logits, _NEG)
  new_top = jnp.maximum(top, logits.max(axis=-1))
  weights = jnp.where(allowed, jnp.exp(logits - new_top[..., None]), 0.0)
  correction = jnp.exp(top - new_top)
  acc = acc * correction[..., None] + jnp.einsum("bkgts,bskd->bkgtd", weights.astype(v.dtype), v,
                                                 preferred_element_type=jnp.float32)
  return new_top, total * correction + weights.sum(axis=-1), acc


def attend_cached(q, k_cache, v_cache, start, *, prefix_lengths=None, block: int = CACHE_BLOCK):
  """Causal attention of q (batch, tq, heads, d_head), the positions start .. start + tq - 1, over a KV cache
  (batch, max_len, kv_heads, d_head) that holds them and every earlier position, reading only the cache's filled
  part: blocks of `block` positions, those past start + tq skipped (a `lax.cond` in a scan over the blocks, so the
  work is bounded by the index and the loop stays differentiable), the softmax taken online (running maximum and
  sum, as flash-decoding does). So a decoding step's attention costs what the positions filled cost, not what
  `max_len` does. `prefix_lengths` (batch,): a prefix LM's, each position also sees its sequence's first `prefix`
  positions (those written). Equals `attend` over the whole cache under the causal mask (tested).
  """
  b, tq, h, d = q.shape
  max_len, kv_heads = k_cache.shape[1], k_cache.shape[2]
  block = min(block, max_len)
  q = q.reshape(b, tq, kv_heads, h // kv_heads, d)
  shape = (b, kv_heads, h // kv_heads, tq)
  carry = (jnp.full(shape, _NEG, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape + (d,), jnp.float32))

  def read(i, carry):
    return _read_block(q, k_cache, v_cache, i, carry, block=block, start=start, prefix_lengths=prefix_lengths)

  n_blocks = -(-max_len // block)
  if n_blocks == 1:   # (a cache of one block: no loop to compile)
    carry = read(0, carry)
  else:
    carry, _ = lax.scan(lambda c, i: (lax.cond(i * block < start + tq, read, lambda i, c: c, i, c), None), carry,
                        jnp.arange(n_blocks))
  _, total, acc = carry
  out = acc / total[..., None]                     # (every position sees itself: total > 0)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, tq, h, d).astype(v_cache.dtype)


class DotProductAttention(Layer):
  """The attention of projected (q, k, v[, mask]) (each (batch, length, heads * d_head)) -> (batch, Tq, heads * d_head).

  `causal=True` takes (q, k, v) and lets position t attend to positions <= t; in predict mode it keeps a KV cache
  of `max_len` positions in `state` (`k`, `v`: (batch, max_len, kv_heads, d_head), `index`), so a prefill of any
  length followed by one token per call gives the same result as one pass. `causal=False` takes (q, k, v, mask).
  `prefix=True` (with `causal`) takes (q, k, v, prefix lengths (batch,) int): a prefix LM, every position also
  sees the first `prefix` positions of its sequence (full attention over an image and a prompt, causal after them;
  decoding fills the prefix in the first call). `rotary` ("half" or "interleaved") rotates q and k by their
  positions (RoPE) first.
  """

  def __init__(self, n_heads: int, n_kv_heads: int | None = None, causal: bool = False, dropout: float = 0.0,
               max_len: int = 2048, rotary: str | None = None, rotary_base: float = 10000.0, fast: bool = True,
               mode: str = "train", prefix: bool = False, name: str | None = None):
    super().__init__(3 if causal and not prefix else 4, 1, name)
    self.prefix = prefix
    if prefix and not causal:
      raise LayerError(self, "a prefix opens a causal attention's first positions to all; attention on whole "
                       "sequences sees everything already", expected="prefix=True with causal=True",
                       actual="causal=False")
    self.n_heads, self.n_kv_heads = int(n_heads), int(n_kv_heads or n_heads)
    self.causal, self.dropout, self.max_len, self.fast = causal, float(dropout), int(max_len), fast
    self.rotary, self.rotary_base, self.mode = rotary, float(rotary_base), check_mode(self, mode)
    if self.n_heads % self.n_kv_heads:
      raise LayerError(self, "n_heads must be a multiple of n_kv_heads", expected=f"a divisor of {n_heads}",
                       actual=n_kv_heads)
    if not 0.0 <= self.dropout < 1.0:
      raise LayerError(self, "dropout must lie in [0, 1)", expected="0 <= dropout < 1", actual=dropout)
    if rotary not in (None,) + ROTARY_LAYOUTS:
      raise LayerError(self, "unknown rotary layout", expected=f"None or one of {ROTARY_LAYOUTS}", actual=rotary)
    if mode == "predict" and not causal:
      raise LayerError(self, "only causal attention keeps a decoding cache; attention on whole sequences has no "
                       "predict mode", expected="causal=True with mode='predict'", actual="causal=False")

  decodes = property(lambda self: self.mode == "predict")
  rewindable = property(lambda self: True)
  max_positions = property(lambda self: self.max_len if self.decodes else None)

  def rewind_state(self, state, index):
    """The cache keeps its entries and moves its `index` back: those past it are masked, then overwritten."""
    if not state:
      return state
    return {**state, "index": jnp.full_like(state["index"], index)}

  def shorten_state(self, state, positions: int):
    """The cache's first `positions` entries (its position axis is the third from the end, whatever stacks it)."""
    if not state:
      return state
    length = state["k"].shape[-3]
    if not 0 < positions <= length:
      raise LayerError(self, "a cache can only be shortened", expected=f"1 <= positions <= {length}",
                       actual=positions)
    return {**state, "k": state["k"][..., :positions, :, :], "v": state["v"][..., :positions, :, :]}

  def _prefix_lengths(self, lengths, batch: int):
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
      raise LayerError(self, "a prefix LM's fourth input is each sequence's prefix length",
                       expected=f"int ({batch},)", actual=shapes.describe(lengths))
    return lengths

  def _d_head(self, inputs) -> int:
    """Checks the shapes of q, k, v (arrays or signatures); returns d_head."""
    q, k, v = inputs[:3]
    ok = len(q.shape) == len(k.shape) == len(v.shape) == 3 and k.shape == v.shape and q.shape[0] == k.shape[0]
    ok = ok and q.shape[-1] % self.n_heads == 0 and k.shape[-1] * self.n_heads == q.shape[-1] * self.n_kv_heads
    if not ok:
      raise LayerError(self, f"q, k, v must be (batch, length, heads * d_head) with {self.n_heads} query and "
                       f"{self.n_kv_heads} key/value heads of one d_head",
                       expected=f"q (b, tq, {self.n_heads}*d), k = v (b, tk, {self.n_kv_heads}*d)",
                       actual=shapes.describe(tuple(inputs)))
    return q.shape[-1] // self.n_heads

  def init_params_and_state(self, rng, input_signature):
    d_head = self._d_head(input_signature)
    if not self.decodes:
      return {}, {}
    k, v = input_signature[1:3]
    cache_shape = (k.shape[0], self.max_len, self.n_kv_heads, d_head)
    return {}, {"k": jnp.zeros(cache_shape, k.dtype), "v": jnp.zeros(cache_shape, v.dtype),
                "index": jnp.zeros((), jnp.int32)}

  def forward(self, params, state, inputs, *, rng, train):
    d_head = self._d_head(inputs)
    q, k, v = (x.reshape(x.shape[:2] + (h, d_head)) for x, h in
               zip(inputs[:3], (self.n_heads, self.n_kv_heads, self.n_kv_heads)))
    mask = None if self.causal else inputs[3]
    tq = q.shape[1]
    start = state["index"] if state else 0
    if self.rotary:
      q = rotary(q, start + jnp.arange(tq), self.rotary_base, self.rotary)
      k = rotary(k, start + jnp.arange(k.shape[1]), self.rotary_base, self.rotary)
    if self.causal and state:  # predict: write this chunk into the cache, attend over the cache's filled part
      k = lax.dynamic_update_slice_in_dim(state["k"], k.astype(state["k"].dtype), start, axis=1)
      v = lax.dynamic_update_slice_in_dim(state["v"], v.astype(state["v"].dtype), start, axis=1)
      state = {"k": k, "v": v, "index": start + tq}
      if not (train and self.dropout):   # (dropout on the weights needs them whole: the path below)
        lengths = self._prefix_lengths(inputs[3], q.shape[0]) if self.prefix else None
        out = attend_cached(q.astype(k.dtype), k, v, start, prefix_lengths=lengths, block=CACHE_BLOCK)
        return out.reshape(out.shape[:2] + (-1,)).astype(q.dtype), state
    if self.causal:
      query_pos = start + jnp.arange(tq)[:, None]
      key_pos = jnp.arange(k.shape[1])[None, :]
      mask = (key_pos <= query_pos)[None, None]                              # (1, 1, tq, tk)
      if self.prefix:   # ... or within the sequence's prefix (and already written, when decoding)
        lengths = self._prefix_lengths(inputs[3], q.shape[0])
        seen = (key_pos[None] < lengths[:, None, None]) & (key_pos[None] < start + tq)
        mask = mask | seen[:, None]                                          # (batch, 1, tq, tk)
    dropout = self.dropout if train else 0.0
    if dropout and rng is None:
      raise LayerError(self, "attention dropout with train=True needs an rng", expected="an rng", actual="rng=None")
    out = attend(q, k, v, mask, dropout=dropout, rng=rng, fast=self.fast)
    return out.reshape(out.shape[:2] + (-1,)), state


def qkv_projections(layer_name: str, d_feature: int, n_heads: int, n_kv_heads: int | None, use_bias: bool):
  """The `q`, `k`, `v` Dense projections of multi-head attention (`k`, `v` of n_kv_heads heads); `layer_name` names
  the factory in the error for a d_feature the heads do not divide."""
  if d_feature % n_heads:
    raise ValueError(f"{layer_name}: d_feature {d_feature} must be a multiple of n_heads {n_heads}")
  d_kv = d_feature // n_heads * (n_kv_heads or n_heads)
  return (Dense(d_feature, use_bias=use_bias, name="q"), Dense(d_kv, use_bias=use_bias, name="k"),
          Dense(d_kv, use_bias=use_bias, name="v"))


def AttentionQKV(d_feature: int, n_heads: int = 1, *, n_kv_heads: int | None = None, dropout: float = 0.0,
                 use_bias: bool = True, rotary: str | None = None, rotary_base: float = 10000.0, fast: bool = True,
                 name: str | None = "attention") -> Layer:
  """Multi-head attention of queries on keys/values, e.g. a decoder on its encoder: (q, k, v, mask) -> (y, mask).
  It keeps no decoding state, so it has no mode.

  Params: `q`, `k`, `v`, `o` projections (each `kernel` and, with `use_bias`, `bias`).

  >>> AttentionQKV(8, n_heads=2).output_signature((ShapeDtype((1, 3, 8)), ShapeDtype((1, 5, 8)),
  ...     ShapeDtype((1, 5, 8)), ShapeDtype((1, 1, 1, 5), jnp.bool_)))[0]
  ShapeDtype((1, 3, 8), float32)
  """
  q, k, v = qkv_projections("AttentionQKV", d_feature, n_heads, n_kv_heads, use_bias)
  attention = DotProductAttention(n_heads, n_kv_heads, dropout=dropout, rotary=rotary, rotary_base=rotary_base,
                                  fast=fast)
  return projected_attention((q, k, v), attention, d_feature, use_bias, name=name)


def projected_attention(projections, attention: Layer, d_feature: int, use_bias: bool,
                        name: str | None = None) -> Layer:
  """(q in, k in, v in, extra) -> (y, extra): the `q`, `k`, `v` projections, `attention` (a 4-input
  `DotProductAttention`: the extra is its mask or its prefix lengths) and the `o` projection; the extra passes on."""
  return Serial(
      Parallel(*projections),                          # q, k, v, extra
      Branch(attention, Select([3], n_in=4)),          # context, extra
      Dense(d_feature, use_bias=use_bias, name="o"),   # y, extra
      name=name)


def Attention(d_feature: int, n_heads: int = 1, *, n_kv_heads: int | None = None, dropout: float = 0.0,
              use_bias: bool = True, rotary: str | None = None, rotary_base: float = 10000.0, fast: bool = True,
              name: str | None = "attention") -> Layer:
  """Multi-head self-attention under a padding mask: (x, mask) -> (y, mask). No mode, as `AttentionQKV`.

  >>> Attention(8, n_heads=2).output_signature((ShapeDtype((1, 3, 8)), ShapeDtype((1, 1, 1, 3), jnp.bool_)))[0]
  ShapeDtype((1, 3, 8), float32)
  """
  return Serial(
      Select([0, 0, 0, 1]),                            # x, x, x, mask
      AttentionQKV(d_feature, n_heads, n_kv_heads=n_kv_heads, dropout=dropout, use_bias=use_bias, rotary=rotary,
                   rotary_base=rotary_base, fast=fast, name=None),
      name=name)


def CausalAttention(d_feature: int, n_heads: int = 1, *, n_kv_heads: int | None = None, dropout: float = 0.0,
                    max_len: int = 2048, use_bias: bool = True, rotary: str | None = None,
                    rotary_base: float = 10000.0, fast: bool = True, mode: str = "train", prefix: bool = False,
                    name: str | None = "attention") -> Layer:
  """Multi-head self-attention in which position t sees positions <= t: x -> y. In predict mode it keeps a KV cache
  of `max_len` positions. `n_kv_heads < n_heads` gives grouped-query attention. With `prefix` it is a prefix LM's:
  (x, prefix lengths (batch,)) -> (y, prefix lengths), each position also seeing its sequence's first `prefix`
  positions (the same params).

  >>> CausalAttention(8, n_heads=4, n_kv_heads=2).output_signature(ShapeDtype((1, 3, 8)))
  ShapeDtype((1, 3, 8), float32)
  """
  q, k, v = qkv_projections("CausalAttention", d_feature, n_heads, n_kv_heads, use_bias)
  if prefix:
    attention = DotProductAttention(n_heads, n_kv_heads, causal=True, dropout=dropout, max_len=max_len,
                                    rotary=rotary, rotary_base=rotary_base, fast=fast, mode=mode, prefix=True)
    return Serial(
        Select([0, 0, 0, 1]),                                               # x, x, x, prefix
        projected_attention((q, k, v), attention, d_feature, use_bias),     # y, prefix
        name=name)
  return Serial(
      Branch(q, k, v),                                 # q, k, v
      DotProductAttention(n_heads, n_kv_heads, causal=True, dropout=dropout, max_len=max_len, rotary=rotary,
                          rotary_base=rotary_base, fast=fast, mode=mode),   # context
      Dense(d_feature, use_bias=use_bias, name="o"),   # y
      name=name)
