"""Activation layers: elementwise functions of one array (and `Glu`, which halves the last axis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from combinax import shapes
from combinax.layers.base import Layer, LayerError
from combinax.layers.combinators import Fn


def Relu() -> Layer:
  """max(x, 0).

  >>> Relu().apply({}, {}, jnp.array([-1.0, 2.0]))[0]
  Array([0., 2.], dtype=float32)
  """
  return Fn("Relu", jax.nn.relu)


def Gelu() -> Layer:
  """Exact GELU, x * Phi(x) with the normal CDF Phi."""
  return Fn("Gelu", lambda x: jax.nn.gelu(x, approximate=False))


def FastGelu() -> Layer:
  """GELU with the tanh approximation."""
  return Fn("FastGelu", lambda x: jax.nn.gelu(x, approximate=True))


def Sigmoid() -> Layer:
  return Fn("Sigmoid", jax.nn.sigmoid)


def Tanh() -> Layer:
  return Fn("Tanh", jnp.tanh)


def Silu() -> Layer:
  """x * sigmoid(x), also known as Swish."""
  return Fn("Silu", jax.nn.silu)


Swish = Silu


def HardSwish() -> Layer:
  """x * relu6(x + 3) / 6: Swish in pieces of lines (MobileNetV3's).

  >>> HardSwish().apply({}, {}, jnp.array([-4.0, 1.0, 4.0]))[0]
  Array([-0.       ,  0.6666667,  4.       ], dtype=float32)
  """
  return Fn("HardSwish", jax.nn.hard_swish)


def HardSigmoid() -> Layer:
  """relu6(x + 3) / 6, i.e. clip(x / 6 + 1 / 2, 0, 1): the sigmoid in pieces of lines (MobileNetV3's gates)."""
  return Fn("HardSigmoid", jax.nn.hard_sigmoid)


def Elu(a: float = 1.0) -> Layer:
  return Fn("Elu", lambda x: jax.nn.elu(x, alpha=a))


def Selu() -> Layer:
  return Fn("Selu", jax.nn.selu)


def LeakyRelu(a: float = 0.01) -> Layer:
  return Fn("LeakyRelu", lambda x: jax.nn.leaky_relu(x, negative_slope=a))


def Softplus() -> Layer:
  return Fn("Softplus", jax.nn.softplus)


class Glu(Layer):
  """Gated linear unit: splits the last axis into halves (a, b) and returns a * sigmoid(b)."""

  def forward(self, params, state, x, *, rng, train):
    if x.ndim == 0 or x.shape[-1] % 2:
      raise LayerError(self, "the last axis must have an even size", expected="(..., 2n)",
                       actual=shapes.describe(x))
    a, b = jnp.split(x, 2, axis=-1)
    return a * jax.nn.sigmoid(b), state
