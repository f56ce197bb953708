"""Positions: sinusoidal and learned positional encodings, and rotary embeddings (RoPE) in both layouts.

In predict mode the encodings keep the next position in `state["index"]`, so decoding one token per call (after a
prefill of any length) adds the same encodings as one pass over the whole sequence.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from combinax import shapes
from combinax.layers import initializers
from combinax.layers.base import Layer, LayerError, check_mode


def sinusoids(positions, d_feature: int, base: float = 10000.0):
  """The (T, d) sinusoidal encodings of Vaswani et al.: sin at even features, cos at odd ones."""
  i = jnp.arange(d_feature // 2, dtype=jnp.float32)
  angles = positions.astype(jnp.float32)[:, None] * jnp.power(base, -2.0 * i / d_feature)[None, :]
  table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(positions.shape[0], -1)
  return jnp.pad(table, ((0, 0), (0, d_feature - table.shape[1])))


ROTARY_LAYOUTS = ("half", "interleaved")


def rotary(x, positions, base: float = 10000.0, layout: str = "half"):
  """Rotates feature pairs of x (batch, length, heads, d_head) by angle position * base^(-2i/d_head).

  `layout="half"` pairs feature i with i + d_head/2 (GPT-NeoX, Hugging Face Llama); `"interleaved"` pairs 2i with
  2i + 1 (GPT-J, Meta's original Llama, GGUF files). `positions` is (length,).
  """
  d = x.shape[-1]
  inv_freq = jnp.power(base, -jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]          # (T, d/2)
  cos = jnp.cos(angles)[None, :, None, :]
  sin = jnp.sin(angles)[None, :, None, :]
  z = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if layout == "half":
    a, b = z[..., :d // 2], z[..., d // 2:]
    out = jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
  elif layout == "interleaved":
    a, b = z[..., 0::2], z[..., 1::2]
    out = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(z.shape)
  else:
    raise ValueError(f"rotary layout must be one of {ROTARY_LAYOUTS}, got {layout!r}")
  return out.astype(x.dtype)


class _Positional(Layer):
  """Adds an encoding of each position to (batch, length, d_feature) inputs; tracks the position in predict mode."""

  def __init__(self, max_len: int, mode: str, name: str | None):
    super().__init__(1, 1, name)
    self.max_len, self.mode = int(max_len), check_mode(self, mode)

  def _check(self, x):
    if x.ndim != 3:
      raise LayerError(self, "input must be a sequence of vectors", expected="(batch, length, d_feature)",
                       actual=shapes.describe(x))
    if self.mode != "predict" and x.shape[1] > self.max_len:
      raise LayerError(self, f"sequence longer than max_len={self.max_len}", expected=f"length <= {self.max_len}",
                       actual=shapes.describe(x))

  decodes = property(lambda self: self.mode == "predict")
  rewindable = property(lambda self: True)

  def rewind_state(self, state, index):
    if not state:
      return state
    return {"index": jnp.full_like(state["index"], index)}

  def init_params_and_state(self, rng, input_signature):
    self._check(input_signature)
    params = self.init_params(rng, input_signature.shape[-1])
    return params, ({"index": jnp.zeros((), jnp.int32)} if self.mode == "predict" else {})

  def init_params(self, rng, d_feature: int) -> dict:
    return {}

  def forward(self, params, state, x, *, rng, train):
    self._check(x)
    positions = jnp.arange(x.shape[1], dtype=jnp.int32)
    if self.mode == "predict":
      positions = positions + state["index"]
      state = {"index": state["index"] + x.shape[1]}
    return x + self.encodings(params, positions, x.shape[-1]).astype(x.dtype)[None], state


class PositionalEncoding(_Positional):
  """Adds fixed sinusoidal position encodings (no parameters).

  >>> PositionalEncoding().apply({}, {}, jnp.zeros((1, 2, 4)))[0][0, 1]  # sin(1), cos(1), sin(.01), cos(.01)
  Array([0.84147096, 0.5403023 , 0.00999983, 0.99995   ], dtype=float32)
  """

  def __init__(self, max_len: int = 2048, base: float = 10000.0, mode: str = "train", name: str | None = None):
    super().__init__(max_len, mode, name)
    self.base = float(base)

  # The sinusoids of any position can be computed: only whole sequences (not decoding) are held to max_len.
  max_positions = property(lambda self: None if self.mode == "predict" else self.max_len)

  def encodings(self, params, positions, d_feature):
    return sinusoids(positions, d_feature, self.base)


class LearnedPositionalEncoding(_Positional):
  """Adds a learned vector per position, as BERT does; params `{"embedding": (max_len, d_feature)}`."""

  def __init__(self, max_len: int = 512, initializer=None, mode: str = "train", name: str | None = None):
    super().__init__(max_len, mode, name)
    self.initializer = initializers.get(initializer or initializers.normal(0.02))

  max_positions = property(lambda self: self.max_len)   # the table's rows, in every mode

  def init_params(self, rng, d_feature):
    return {"embedding": self.initializer(rng, (self.max_len, d_feature), jnp.float32)}

  def encodings(self, params, positions, d_feature):
    return lax.dynamic_slice_in_dim(params["embedding"], positions[0], positions.shape[0], axis=0)
