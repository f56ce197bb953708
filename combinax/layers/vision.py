"""Images as sequences of tokens: a check of the images a model was built for, 2-D position encodings, and a
learned token (a ViT's class token, an attention-pooling head's probe). The patch embedding itself is a strided
`Conv` (a patch_size x patch_size kernel moved by patch_size), as in ViT and big_vision."""

from __future__ import annotations

import jax.numpy as jnp

from combinax import shapes
from combinax.layers import initializers
from combinax.layers.base import Layer, LayerError

POSITIONS_2D = ("learned", "sincos")


class CheckImages(Layer):
  """The identity on images (batch, height, width, channels) of the shape a vision model was built for; any other
  input raises a LayerError naming the expected and the actual shape (one line, before anything is computed).

  `size` (height, width) or None (any; either side may be None), `channels` or None (any); `multiple_of` (a patch
  size): both sides must be multiples of it, as a patch embedding would otherwise drop the last rows and columns
  without a word.

  >>> CheckImages(size=(8, 8), channels=1).output_signature(ShapeDtype((2, 8, 8, 1)))
  ShapeDtype((2, 8, 8, 1), float32)
  """

  def __init__(self, size=None, channels: int | None = None, multiple_of: int = 1, name: str | None = None):
    super().__init__(1, 1, name)
    self.size = None if size is None else tuple(
        None if s is None else int(s) for s in ((size, size) if isinstance(size, int) else size))
    self.channels = None if channels is None else int(channels)
    self.multiple_of = int(multiple_of)
    if self.size is not None and any(s % self.multiple_of for s in self.size if s is not None):
      raise LayerError(self, "the image size must be a multiple of the patch size",
                       expected=f"multiples of {self.multiple_of}", actual=self.size)

  def _expected(self) -> str:
    size = "height, width" if self.size is None else \
        f"{self.size[0] or 'height'}, {self.size[1] or 'width'}"
    free = self.size is None or None in self.size
    multiple = f" (sides multiples of {self.multiple_of})" if free and self.multiple_of > 1 else ""
    return f"(batch, {size}, {self.channels or 'channels'}){multiple}, float"

  def _check(self, x):
    ok = len(x.shape) == 4 and jnp.issubdtype(x.dtype, jnp.floating)
    ok = ok and (self.size is None or all(e is None or a == e for a, e in zip(x.shape[1:3], self.size)))
    ok = ok and (self.channels is None or x.shape[3] == self.channels)
    ok = ok and all(s % self.multiple_of == 0 for s in x.shape[1:3])
    if not ok:
      raise LayerError(self, "images of another shape than the model was built for", expected=self._expected(),
                       actual=shapes.describe(x))

  def init_params_and_state(self, rng, input_signature):
    self._check(input_signature)
    return {}, {}

  def forward(self, params, state, x, *, rng, train):
    self._check(x)
    return x, state


def sincos_2d(height: int, width: int, d_feature: int, base: float = 10000.0):
  """Fixed 2-D position encodings (height, width, d_feature): a quarter of the features each sin and cos of the row,
  sin and cos of the column, at d_feature / 4 frequencies from 1 down to 1 / base (MAE's and big_vision's)."""
  quarter = d_feature // 4
  frequencies = 1.0 / base ** (jnp.arange(quarter, dtype=jnp.float32) / max(quarter, 1))
  rows = jnp.arange(height, dtype=jnp.float32)[:, None, None] * frequencies[None, None]   # (h, 1, d/4)
  cols = jnp.arange(width, dtype=jnp.float32)[None, :, None] * frequencies[None, None]    # (1, w, d/4)
  rows, cols = jnp.broadcast_to(rows, (height, width, quarter)), jnp.broadcast_to(cols, (height, width, quarter))
  return jnp.concatenate([jnp.sin(rows), jnp.cos(rows), jnp.sin(cols), jnp.cos(cols)], axis=-1)


class PositionalEncoding2D(Layer):
  """Adds a position encoding to each cell of a grid of vectors (batch, height, width, d_feature): learned, one
  vector per cell (param `embedding` (height, width, d_feature), the grid's shape fixed at init), or the fixed
  `sincos_2d` (no params; d_feature a multiple of 4).

  >>> x = jnp.zeros((1, 2, 3, 4))
  >>> PositionalEncoding2D("sincos").apply({}, {}, x)[0][0, 1, 2]   # sin(1), cos(1) of the row, then of column 2
  Array([ 0.84147096,  0.5403023 ,  0.9092974 , -0.41614684], dtype=float32)
  """

  def __init__(self, kind: str = "learned", initializer=None, name: str | None = None):
    super().__init__(1, 1, name)
    if kind not in POSITIONS_2D:
      raise LayerError(self, "unknown kind of 2-D positions", expected=f"one of {POSITIONS_2D}", actual=kind)
    self.kind = kind
    self.initializer = initializers.get(initializer or initializers.normal(0.02))

  def _check(self, x, params=None):
    if len(x.shape) != 4 or (self.kind == "sincos" and x.shape[-1] % 4):
      expected = "(batch, height, width, d_feature)" + (", d_feature a multiple of 4" if self.kind == "sincos" else "")
      raise LayerError(self, "input must be a grid of vectors", expected=expected, actual=shapes.describe(x))
    if params is not None and params["embedding"].shape != tuple(x.shape[1:]):
      raise LayerError(self, "a grid of another shape than the learned positions were made for",
                       expected=f"(batch, {', '.join(map(str, params['embedding'].shape))})",
                       actual=shapes.describe(x))

  def init_params_and_state(self, rng, input_signature):
    self._check(input_signature)
    if self.kind == "sincos":
      return {}, {}
    return {"embedding": self.initializer(rng, tuple(input_signature.shape[1:]), jnp.float32)}, {}

  def forward(self, params, state, x, *, rng, train):
    if self.kind == "sincos":
      self._check(x)
      return x + sincos_2d(*x.shape[1:]).astype(x.dtype)[None], state
    self._check(x, params)
    return x + params["embedding"].astype(x.dtype)[None], state


class LearnedToken(Layer):
  """A learned vector as one token per example: x (batch, ..., d_feature) -> (batch, 1, d_feature), param `token`
  (d_feature,). A ViT's class token (put before the patches) and an attention-pooling head's probe (the query).

  >>> token = LearnedToken("ones")
  >>> token.apply({"token": jnp.ones(3)}, {}, jnp.zeros((2, 5, 3)))[0].shape
  (2, 1, 3)
  """

  def __init__(self, initializer="zeros", name: str | None = None):
    super().__init__(1, 1, name)
    self.initializer = initializers.get(initializer)

  def _check(self, x):
    if len(x.shape) < 2:
      raise LayerError(self, "input must have a batch and a feature axis", expected="(batch, ..., d_feature)",
                       actual=shapes.describe(x))

  def init_params_and_state(self, rng, input_signature):
    self._check(input_signature)
    # (A (1, d) draw, kept as (d,): fan-in 1 and fan-out d, as big_vision's (1, 1, d) probe.)
    return {"token": self.initializer(rng, (1, input_signature.shape[-1]), jnp.float32)[0]}, {}

  def forward(self, params, state, x, *, rng, train):
    self._check(x)
    token = params["token"].astype(x.dtype)
    return jnp.broadcast_to(token, (x.shape[0], 1, token.shape[-1])), state
