"""Normalization layers: LayerNorm, RMSNorm, BatchNorm (running statistics kept in `state`).

Statistics are computed in float32 at least, and the output has the input's dtype.
"""

from __future__ import annotations

import jax.numpy as jnp

from combinax.layers.base import Layer, check_last_dim, check_rank


def _as_float(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _along_last(v, ndim: int):
  """A (d,) vector shaped to broadcast against a rank-`ndim` array on its last axis."""
  return v.reshape((1,) * (ndim - 1) + (-1,))


class LayerNorm(Layer):
  """Normalises the last axis to mean 0 and variance 1, then scales and (if `center`) shifts.

  >>> LayerNorm().init(jax.random.key(0), ShapeDtype((2, 4)))[0]["scale"]
  Array([1., 1., 1., 1.], dtype=float32)
  """

  def __init__(self, center: bool = True, epsilon: float = 1e-6, name: str | None = None):
    super().__init__(1, 1, name)
    self.center, self.epsilon = center, float(epsilon)

  def init_params_and_state(self, rng, input_signature):
    check_rank(self, input_signature, 1, "(..., features)")
    d = input_signature.shape[-1]
    params = {"scale": jnp.ones((d,), jnp.float32)}
    if self.center:
      params["bias"] = jnp.zeros((d,), jnp.float32)
    return params, {}

  def forward(self, params, state, x, *, rng, train):
    check_rank(self, x, 1, "(..., features)")
    check_last_dim(self, x, params["scale"].shape[0])
    z = _as_float(x)
    mean = jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(z - mean), axis=-1, keepdims=True)
    y = (z - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon)) * _along_last(params["scale"], x.ndim)
    if self.center:
      y = y + _along_last(params["bias"], x.ndim)
    return y.astype(x.dtype), state


class RMSNorm(Layer):
  """Scales the last axis by the reciprocal of its root mean square (no centering), then by a learned scale."""

  def __init__(self, epsilon: float = 1e-6, name: str | None = None):
    super().__init__(1, 1, name)
    self.epsilon = float(epsilon)

  def init_params_and_state(self, rng, input_signature):
    check_rank(self, input_signature, 1, "(..., features)")
    return {"scale": jnp.ones((input_signature.shape[-1],), jnp.float32)}, {}

  def forward(self, params, state, x, *, rng, train):
    check_rank(self, x, 1, "(..., features)")
    check_last_dim(self, x, params["scale"].shape[0])
    z = _as_float(x)
    rms = jnp.sqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + self.epsilon)
    return (z / rms * _along_last(params["scale"], x.ndim)).astype(x.dtype), state


class BatchNorm(Layer):
  """Normalises features (the last axis) with statistics over every other axis.

  Training uses the batch's statistics and updates the running ones in `state`
  (`running = momentum * running + (1 - momentum) * batch`); evaluation uses the running statistics.
  """

  def __init__(self, epsilon: float = 1e-5, momentum: float = 0.999, center: bool = True, scale: bool = True,
               name: str | None = None):
    super().__init__(1, 1, name)
    self.epsilon, self.momentum, self.center, self.scale = float(epsilon), float(momentum), center, scale

  def init_params_and_state(self, rng, input_signature):
    check_rank(self, input_signature, 2, "(batch, ..., features)")
    d = input_signature.shape[-1]
    params = {}
    if self.scale:
      params["scale"] = jnp.ones((d,), jnp.float32)
    if self.center:
      params["bias"] = jnp.zeros((d,), jnp.float32)
    return params, {"mean": jnp.zeros((d,), jnp.float32), "var": jnp.ones((d,), jnp.float32)}

  def forward(self, params, state, x, *, rng, train):
    check_rank(self, x, 2, "(batch, ..., features)")
    check_last_dim(self, x, state["mean"].shape[0])
    z = _as_float(x)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(z, axis=axes)
      var = jnp.mean(jnp.square(z - jnp.mean(z, axis=axes, keepdims=True)), axis=axes)
      m = self.momentum
      state = {"mean": m * state["mean"] + (1 - m) * mean, "var": m * state["var"] + (1 - m) * var}
    else:
      mean, var = state["mean"], state["var"]
    y = (z - _along_last(mean, x.ndim)) * _along_last(jnp.reciprocal(jnp.sqrt(var + self.epsilon)), x.ndim)
    if self.scale:
      y = y * _along_last(params["scale"], x.ndim)
    if self.center:
      y = y + _along_last(params["bias"], x.ndim)
    return y.astype(x.dtype), state
