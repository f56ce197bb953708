"""Metric layers: `(logits, targets, weights) -> scalar`, for evaluation."""

from __future__ import annotations

import jax.numpy as jnp

from combinax.layers.base import Layer
from combinax.layers.losses import check_categorical, weighted_mean


class WeightedCategoryAccuracy(Layer):
  """Fraction of weighted positions whose arg-max prediction is the target.

  >>> acc = WeightedCategoryAccuracy()
  >>> float(acc.apply({}, {}, (jnp.eye(3), jnp.array([0, 1, 0]), jnp.ones(3)))[0])
  0.666...
  """

  def __init__(self, name: str | None = None):
    super().__init__(3, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets, weights = inputs
    check_categorical(self, logits, targets, weights)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return weighted_mean(correct, weights), state


class SequenceAccuracy(Layer):
  """Fraction of sequences (first axis) whose every position with non-zero weight is predicted right."""

  def __init__(self, name: str | None = None):
    super().__init__(3, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets, weights = inputs
    check_categorical(self, logits, targets, weights)
    right = jnp.logical_or(jnp.argmax(logits, axis=-1) == targets, weights == 0)
    per_sequence = jnp.all(right.reshape((right.shape[0], -1)), axis=-1)
    return jnp.mean(per_sequence.astype(jnp.float32)), state


class Accuracy(Layer):
  """Fraction of positions whose arg-max prediction is the target: (logits, targets) -> scalar.

  >>> float(Accuracy().apply({}, {}, (jnp.eye(3), jnp.array([0, 1, 0])))[0])
  0.666...
  """

  def __init__(self, name: str | None = None):
    super().__init__(2, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets = inputs
    check_categorical(self, logits, targets)
    return jnp.mean((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)), state
