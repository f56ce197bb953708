"""Pooling over a sequence with learned weights: `AttentionWeightedAverage` (textgenrnn's attention layer)."""

from __future__ import annotations

import jax.numpy as jnp

from combinax import shapes
from combinax.layers import initializers
from combinax.layers.base import Layer, LayerError, check_last_dim


class AttentionWeightedAverage(Layer):
  """A weighted average over time with learned weights: (..., length, features) -> (..., features).

  Each time step gets a score `x_t @ weights` (one weight per feature, param `weights` of shape (features,)); the
  scores become averaging weights by a softmax over time, `exp(s_t - max s) / (sum_t exp(s_t - max s) + epsilon)`
  (the `epsilon` in the denominator is Keras's, so weights imported from textgenrnn's `AttentionWeightedAverage`
  give its outputs exactly).

  Args:
    kernel_initializer: the initializer of `weights` (Keras's default: uniform on [-0.05, 0.05)).
    epsilon: added to the softmax's denominator (Keras's `K.epsilon()`).

  >>> pool = AttentionWeightedAverage()
  >>> params, _ = pool.init(jax.random.key(0), ShapeDtype((2, 5, 3)))
  >>> params["weights"].shape, pool.output_signature(ShapeDtype((2, 5, 3)))
  ((3,), ShapeDtype((2, 3), float32))
  >>> x = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])  # equal scores: the plain mean of the two steps
  >>> pool.apply({"weights": jnp.array([1.0, 1.0])}, {}, x)[0]
  Array([[0.5, 0.5]], dtype=float32)
  """

  def __init__(self, kernel_initializer=None, epsilon: float = 1e-7, name: str | None = None):
    super().__init__(1, 1, name)
    self.kernel_initializer = initializers.get(kernel_initializer or initializers.uniform(0.05))
    self.epsilon = float(epsilon)

  def _check_sequence(self, x):
    if len(x.shape) < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
      raise LayerError(self, "input must be a float sequence (..., length, features); it is averaged over length",
                       expected="rank >= 2 (..., length, features), a float dtype", actual=shapes.describe(x))

  def init_params_and_state(self, rng, input_signature):
    self._check_sequence(input_signature)
    return {"weights": self.kernel_initializer(rng, (input_signature.shape[-1],), jnp.float32)}, {}

  def forward(self, params, state, x, *, rng, train):
    self._check_sequence(x)
    check_last_dim(self, x, params["weights"].shape[0])
    scores = jnp.dot(x, params["weights"].astype(x.dtype))         # (..., length)
    scores = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    weights = scores / (jnp.sum(scores, axis=-1, keepdims=True) + self.epsilon)
    return jnp.sum(x * weights[..., None], axis=-2), state          # (..., features)
