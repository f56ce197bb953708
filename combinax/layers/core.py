"""Core layers: Dense, Embedding, Dropout, reshaping and reductions, and learned Weights."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from combinax import shapes
from combinax.layers import initializers
from combinax.layers.base import Layer, LayerError, check_last_dim, check_rank, child_rng
from combinax.layers.combinators import Fn
from combinax.layers.scopes import Combinator
from combinax.quant.weights import QuantizedArray


def dense_dot(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`x (..., k) @ kernel (k, n) -> (..., n)`, computed as one 2-D matmul over the flattened leading axes.

  The same numbers as `jnp.dot(x, kernel)`, but the weight gradient autodiff derives from it contracts one axis,
  not all the leading ones; XLA:CPU sends contractions over several axes to a slower matmul (a Transformer's
  training step ran ~10% faster this way; benchmarks/RESULTS.md).
  """
  if isinstance(kernel, QuantizedArray):   # (combinax.quant) dequantized inside the matmul, never stored
    return kernel.contract(x, axis=-2)
  rows = int(np.prod(x.shape[:-1], dtype=np.int64))
  return jnp.dot(x.reshape(rows, x.shape[-1]), kernel).reshape(x.shape[:-1] + kernel.shape[1:])


class Dense(Layer):
  """A fully connected layer on the last axis: `x @ kernel + bias`.

  >>> Dense(10).init(jax.random.key(0), shapes.ShapeDtype((8, 32)))[0]["kernel"].shape
  (32, 10)
  """

  def __init__(self, n_units: int, kernel_initializer="glorot_uniform", bias_initializer="zeros",
               use_bias: bool = True, name: str | None = None):
    super().__init__(1, 1, name)
    self.n_units, self.use_bias = int(n_units), use_bias
    self.kernel_initializer = initializers.get(kernel_initializer)
    self.bias_initializer = initializers.get(bias_initializer)

  def init_params_and_state(self, rng, input_signature):
    check_rank(self, input_signature, 1, "(..., features)")
    kernel_rng, bias_rng = jax.random.split(rng)
    params = {"kernel": self.kernel_initializer(kernel_rng, (input_signature.shape[-1], self.n_units), jnp.float32)}
    if self.use_bias:
      params["bias"] = self.bias_initializer(bias_rng, (self.n_units,), jnp.float32)
    return params, {}

  def forward(self, params, state, x, *, rng, train):
    check_rank(self, x, 1, "(..., features)")
    check_last_dim(self, x, params["kernel"].shape[0])
    y = dense_dot(x, params["kernel"])
    if self.use_bias:
      y = y + params["bias"].reshape((1,) * (y.ndim - 1) + (-1,))
    return y, state


class Embedding(Layer):
  """Maps integer ids to learned vectors of size `d_feature`.

  >>> Embedding(100, 8).output_signature(shapes.ShapeDtype((2, 5), jnp.int32))
  ShapeDtype((2, 5, 8), float32)
  """

  def __init__(self, vocab_size: int, d_feature: int, kernel_initializer=None, name: str | None = None):
    super().__init__(1, 1, name)
    self.vocab_size, self.d_feature = int(vocab_size), int(d_feature)
    self.kernel_initializer = initializers.get(kernel_initializer or initializers.normal(self.d_feature ** -0.5))

  def init_params_and_state(self, rng, input_signature):
    self._check_ids(input_signature)
    return {"embedding": self.kernel_initializer(rng, (self.vocab_size, self.d_feature), jnp.float32)}, {}

  def _check_ids(self, x):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise LayerError(self, "inputs must be integer ids", expected="an integer dtype",
                       actual=shapes.describe(x))

  def forward(self, params, state, x, *, rng, train):
    self._check_ids(x)
    table = params["embedding"]
    if isinstance(table, QuantizedArray):   # (combinax.quant) only the rows looked up are dequantized
      return table.take(x), state
    return jnp.take(table, x, axis=0), state


class TiedLogits(Combinator):
  """Logits from an `Embedding`'s own table: x (..., d_feature) -> x @ table.T (..., vocab_size).

  The embedding object is this layer's child, so its table is shared (one parameter, stored with the embedding):
  the tied input/output embeddings of many language models.

  >>> embed = Embedding(10, 4)
  >>> model = cl.Serial(embed, TiedLogits(embed))
  >>> params, _ = model.init(jax.random.key(0), ShapeDtype((1, 3), jnp.int32))
  >>> cx.paths(params), model.output_signature(ShapeDtype((1, 3), jnp.int32))
  (['Embedding_0/embedding'], ShapeDtype((1, 3, 10), float32))
  """

  def __init__(self, embedding: Embedding, name: str | None = None):
    super().__init__([embedding], 1, 1, name)
    self.embedding = embedding

  def init_params_and_state(self, rng, input_signature):
    check_rank(self, input_signature, 1, "(..., d_feature)")
    ids = shapes.ShapeDtype(input_signature.shape[:-1], jnp.int32)
    params, _ = self.embedding.init(child_rng(rng, 0), ids)
    tree = {}
    self.store_child(tree, 0, params, overwrite=False)
    return tree, {}

  def forward(self, params, state, x, *, rng, train):
    table = self.child_view(params, 0)["embedding"]
    check_rank(self, x, 1, "(..., d_feature)")
    check_last_dim(self, x, table.shape[1])
    if isinstance(table, QuantizedArray):   # (combinax.quant) the table's own (vocab, d) layout is what it needs
      return table.contract(x, axis=-1), state
    return dense_dot(x, table.T.astype(x.dtype)), state


_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)


def threefry2x32(key0, key1, x0, x1):
  """The Threefry-2x32 block cipher (Salmon et al. 2011; 20 rounds, as `jax.random`'s), written out in jnp.

  JAX's own lowering runs the rounds as a loop that writes the whole state to memory every 4 rounds; written out,
  XLA fuses the 20 rounds into whatever consumes the bits (a dropout mask never reaches memory).
  Bit-identical to `jax.extend.random.threefry_2x32` (tested).
  """
  keys = (key0, key1, key0 ^ key1 ^ jnp.uint32(0x1BD11BDA))
  x0, x1 = x0 + keys[0], x1 + keys[1]
  for i in range(20):
    r = _ROTATIONS[i % 8]
    x0 = x0 + x1
    x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
    if i % 4 == 3:
      j = i // 4 + 1
      x0, x1 = x0 + keys[j % 3], x1 + keys[(j + 1) % 3] + jnp.uint32(j)
  return x0, x1


def dropout_mask(rng, rate: float, shape: Sequence[int]) -> tuple[jax.Array, float]:
  """(keep, scale): a boolean mask of `shape`, each entry independently True with probability 1 - rate, and
  1 / (1 - rate), the factor that keeps `where(keep, x * scale, 0)` unbiased.

  Each entry's 32 random bits are Threefry-2x32 (as `jax.random`'s) of its position, keyed by two words drawn from
  `rng`; written out (`threefry2x32`), the hash fuses into the layer that applies the mask. Deterministic for a
  given rng and shape, whatever the device count or sharding: an entry's bits depend only on its position.

  >>> keep, scale = dropout_mask(jax.random.key(0), 0.5, (1000,))
  >>> 400 < int(keep.sum()) < 600, scale
  (True, 2.0)
  """
  shape = tuple(shape)
  size = int(np.prod(shape, dtype=np.int64))
  if size >= 1 << 32:
    raise ValueError(f"dropout_mask: {shape} is too large for 32-bit counters")
  threshold = min(round(rate * 2.0 ** 32), (1 << 32) - 1)
  key = jax.random.bits(rng, (2,), jnp.uint32)
  counts = jax.lax.iota(jnp.uint32, size).reshape(shape)
  bits, _ = threefry2x32(key[0], key[1], counts, jnp.zeros_like(counts))
  return bits >= jnp.uint32(threshold), 1.0 / (1.0 - rate)


class Dropout(Layer):
  """Zeroes each entry with probability `rate` and scales the rest by 1 / (1 - rate) when `train=True`;
  the identity otherwise. `shared_axes` share one mask along those axes (e.g. the time axis).

  >>> Dropout(0.1).apply({}, {}, jnp.ones(3))[0]  # not training: identity
  Array([1., 1., 1.], dtype=float32)
  """

  def __init__(self, rate: float, shared_axes: Sequence[int] = (), name: str | None = None):
    super().__init__(1, 1, name)
    self.rate, self.shared_axes = float(rate), tuple(shared_axes)
    if not 0.0 <= self.rate < 1.0:
      raise LayerError(self, "rate is the probability of dropping and must lie in [0, 1)",
                       expected="0 <= rate < 1", actual=rate)

  def forward(self, params, state, x, *, rng, train):
    if not train or self.rate == 0.0:
      return x, state
    if rng is None:
      raise LayerError(self, "train=True needs an rng: call apply(..., rng=key, train=True)",
                       expected="an rng", actual="rng=None")
    mask_shape = tuple(1 if i in {a % x.ndim for a in self.shared_axes} else d for i, d in enumerate(x.shape))
    keep, scale = dropout_mask(rng, self.rate, mask_shape)
    return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros_like(x)), state


class Flatten(Layer):
  """Keeps the first `n_axes_to_keep` axes and flattens the rest into one."""

  def __init__(self, n_axes_to_keep: int = 1, name: str | None = None):
    super().__init__(1, 1, name)
    self.n_axes_to_keep = int(n_axes_to_keep)

  def forward(self, params, state, x, *, rng, train):
    check_rank(self, x, self.n_axes_to_keep + 1, f"{self.n_axes_to_keep} kept axes and at least one more")
    return x.reshape(x.shape[:self.n_axes_to_keep] + (-1,)), state


class Weights(Layer):
  """Learned weights as a layer: takes nothing, pushes an array of `shape` (Trax's `Weights`)."""

  def __init__(self, initializer="glorot_uniform", shape: Sequence[int] = (), name: str | None = None):
    super().__init__(0, 1, name)
    self.initializer, self.shape = initializers.get(initializer), tuple(shape)

  def init_params_and_state(self, rng, input_signature):
    return {"weights": self.initializer(rng, self.shape, jnp.float32)}, {}

  def forward(self, params, state, inputs, *, rng, train):
    return params["weights"], state


class ScaleAndShift(Layer):
  """scale * x + bias with one learned scalar each (`scale` 1 and `bias` 0 at init): PP-LCNetV3's learnable affine
  block, which lets a re-parameterised convolution's output move as a whole.

  >>> layer = ScaleAndShift()
  >>> layer.apply({"scale": jnp.array(2.0), "bias": jnp.array(1.0)}, {}, jnp.array([0.0, 3.0]))[0]
  Array([1., 7.], dtype=float32)
  """

  def init_params_and_state(self, rng, input_signature):
    return {"scale": jnp.ones((), jnp.float32), "bias": jnp.zeros((), jnp.float32)}, {}

  def forward(self, params, state, x, *, rng, train):
    return params["scale"].astype(x.dtype) * x + params["bias"].astype(x.dtype), state


def LogSoftmax(axis: int = -1) -> Layer:
  """Log-probabilities along `axis`."""
  return Fn("LogSoftmax", lambda x: jax.nn.log_softmax(x, axis=axis))


def Softmax(axis: int = -1) -> Layer:
  """Probabilities along `axis`."""
  return Fn("Softmax", lambda x: jax.nn.softmax(x, axis=axis))


def Mean(axis=-1, keepdims: bool = False) -> Layer:
  return Fn("Mean", lambda x: jnp.mean(x, axis=axis, keepdims=keepdims))


def Sum(axis=None, keepdims: bool = False) -> Layer:
  return Fn("Sum", lambda x: jnp.sum(x, axis=axis, keepdims=keepdims))


def Max(axis=-1, keepdims: bool = False) -> Layer:
  return Fn("Max", lambda x: jnp.max(x, axis=axis, keepdims=keepdims))


def ArgMax(axis: int = -1) -> Layer:
  """Index of the largest entry along `axis` (int32)."""
  return Fn("ArgMax", lambda x: jnp.argmax(x, axis=axis).astype(jnp.int32))


def StopGradient() -> Layer:
  """The identity, with no gradient flowing back."""
  return Fn("StopGradient", jax.lax.stop_gradient)


def ToFloat() -> Layer:
  """Casts to float32."""
  return Fn("ToFloat", lambda x: x.astype(np.float32))
