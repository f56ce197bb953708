"""Loss layers: `(outputs, targets[, weights]) -> scalar`. Model outputs are logits, as in Trax.

Weighted losses return `sum(weights * loss) / sum(weights)` (0 when every weight is 0).
"""

from __future__ import annotations

import gin
import jax
import jax.numpy as jnp

from combinax import shapes
from combinax.layers.base import Layer, LayerError


def check_categorical(layer: Layer, logits, targets, weights=None):
  """Logits (..., n_classes), integer targets (...), weights shaped like the targets."""
  given = shapes.describe((logits, targets) if weights is None else (logits, targets, weights))
  expected = "logits (..., n_classes), integer targets (...)" + ("" if weights is None else ", weights (...)")
  if (logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape
      or not jnp.issubdtype(targets.dtype, jnp.integer)):
    raise LayerError(layer, "logits and targets do not match", expected=expected, actual=given)
  if weights is not None and weights.shape != targets.shape:
    raise LayerError(layer, "weights must have the targets' shape", expected=expected, actual=given)


def check_same_shape(layer: Layer, *arrays):
  if len({a.shape for a in arrays}) != 1:
    raise LayerError(layer, "inputs must have one shape", expected="equal shapes",
                     actual=shapes.describe(tuple(arrays)))


def weighted_mean(values, weights):
  weights = weights.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), jnp.finfo(values.dtype).tiny)


def category_cross_entropy(logits, targets, label_smoothing: float = 0.0):
  """Per-position cross-entropy of integer targets under softmax(logits), with optional label smoothing:
  the target distribution is (1 - s) * one_hot + s / n_classes."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if not label_smoothing:
    return -picked
  return -(1.0 - label_smoothing) * picked - label_smoothing * jnp.mean(log_probs, axis=-1)


def _check_smoothing(layer: Layer, label_smoothing):
  if label_smoothing is not None and not 0.0 <= label_smoothing < 1.0:
    raise LayerError(layer, "label_smoothing must lie in [0, 1)", expected="0 <= s < 1", actual=label_smoothing)


@gin.configurable(module="combinax.layers")
class WeightedCategoryCrossEntropy(Layer):
  """Mean cross-entropy over positions with non-zero weight: (logits, targets, weights) -> scalar.

  >>> loss = WeightedCategoryCrossEntropy()
  >>> float(loss.apply({}, {}, (jnp.zeros((1, 4)), jnp.array([2]), jnp.ones(1)))[0])  # log(4)
  1.386...
  """

  def __init__(self, label_smoothing: float | None = None, name: str | None = None):
    super().__init__(3, 1, name)
    self.label_smoothing = label_smoothing
    _check_smoothing(self, label_smoothing)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets, weights = inputs
    check_categorical(self, logits, targets, weights)
    return weighted_mean(category_cross_entropy(logits, targets, self.label_smoothing or 0.0), weights), state


@gin.configurable(module="combinax.layers")
class CategoryCrossEntropy(Layer):
  """Mean cross-entropy: (logits, targets) -> scalar."""

  def __init__(self, label_smoothing: float | None = None, name: str | None = None):
    super().__init__(2, 1, name)
    self.label_smoothing = label_smoothing
    _check_smoothing(self, label_smoothing)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets = inputs
    check_categorical(self, logits, targets)
    return jnp.mean(category_cross_entropy(logits, targets, self.label_smoothing or 0.0)), state


@gin.configurable(module="combinax.layers")
class BinaryCrossEntropy(Layer):
  """Mean binary cross-entropy of 0/1 targets under sigmoid(logits): (logits, targets) -> scalar."""

  def __init__(self, name: str | None = None):
    super().__init__(2, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets = inputs
    check_same_shape(self, logits, targets)
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    t = targets.astype(z.dtype)
    return -jnp.mean(t * jax.nn.log_sigmoid(z) + (1.0 - t) * jax.nn.log_sigmoid(-z)), state


@gin.configurable(module="combinax.layers")
class L2Loss(Layer):
  """Weighted mean squared error: (outputs, targets, weights) -> sum(w * (y - t)^2) / sum(w)."""

  def __init__(self, name: str | None = None):
    super().__init__(3, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    outputs, targets, weights = inputs
    check_same_shape(self, outputs, targets, weights)
    return weighted_mean(jnp.square(outputs - targets.astype(outputs.dtype)), weights), state
