"""Initializers: `(rng, shape, dtype) -> array` functions, selectable per layer by value or by name.

Fans follow the usual convention for kernels: the last axis is fan-out, the one before it fan-in, and any leading
axes (a convolution's window) multiply both. They are built on `jax.nn.initializers`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, tuple, jnp.dtype], jax.Array]


def _scaled(scale: float, mode: str, distribution: str) -> Initializer:
  return jax.nn.initializers.variance_scaling(scale, mode, distribution, in_axis=-2, out_axis=-1)


def glorot_normal(scale: float = 1.0) -> Initializer:
  """Normal (truncated) with variance 2 / (fan_in + fan_out) (Glorot & Bengio, 2010)."""
  return _scaled(scale, "fan_avg", "truncated_normal")


def glorot_uniform(scale: float = 1.0) -> Initializer:
  """Uniform with variance 2 / (fan_in + fan_out)."""
  return _scaled(scale, "fan_avg", "uniform")


def lecun_normal(scale: float = 1.0) -> Initializer:
  """Normal (truncated) with variance 1 / fan_in."""
  return _scaled(scale, "fan_in", "truncated_normal")


def lecun_uniform(scale: float = 1.0) -> Initializer:
  """Uniform with variance 1 / fan_in."""
  return _scaled(scale, "fan_in", "uniform")


def he_normal(scale: float = 1.0) -> Initializer:
  """Normal (truncated) with variance 2 / fan_in (He et al., 2015)."""
  return _scaled(2.0 * scale, "fan_in", "truncated_normal")


def he_uniform(scale: float = 1.0) -> Initializer:
  """Uniform with variance 2 / fan_in."""
  return _scaled(2.0 * scale, "fan_in", "uniform")


def orthogonal(scale: float = 1.0) -> Initializer:
  """A (scaled) orthogonal matrix over the last two axes."""
  return jax.nn.initializers.orthogonal(scale)


def normal(stddev: float = 1e-2) -> Initializer:
  """Normal with mean 0 and the given standard deviation."""
  return jax.nn.initializers.normal(stddev)


def uniform(limit: float = 1e-2) -> Initializer:
  """Uniform on [-limit, limit)."""
  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, -limit, limit)
  return init


def zeros() -> Initializer:
  return jax.nn.initializers.zeros


def ones() -> Initializer:
  return jax.nn.initializers.ones


BY_NAME = {f.__name__: f for f in (glorot_normal, glorot_uniform, lecun_normal, lecun_uniform, he_normal,
                                   he_uniform, orthogonal, normal, uniform, zeros, ones)}


def get(initializer: str | Initializer) -> Initializer:
  """An initializer from a function or a name such as `"he_normal"` (with default arguments).

  >>> get("zeros")(jax.random.key(0), (2,), jnp.float32)
  Array([0., 0.], dtype=float32)
  """
  if callable(initializer):
    return initializer
  if initializer not in BY_NAME:
    raise ValueError(f"unknown initializer {initializer!r}; choose one of {sorted(BY_NAME)} or pass a function")
  return BY_NAME[initializer]()
