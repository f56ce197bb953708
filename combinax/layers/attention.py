"""Attention and the sequence plumbing around it: shifting, masks, positions, multi-head attention."""

from __future__ import annotations

import jax.numpy as jnp

from combinax import shapes
from combinax.layers.base import Layer, LayerError, check_mode


class ShiftRight(Layer):
  """Shifts a (batch, length, ...) array right along axis 1 by `n_positions`, filling with `pad_value`:
  a language model's inputs are its targets shifted right. In predict mode (one token per call) it is the identity.

  >>> ShiftRight().apply({}, {}, jnp.array([[1, 2, 3]]))[0]
  Array([[0, 1, 2]], dtype=int32)
  """

  def __init__(self, n_positions: int = 1, pad_value=0, mode: str = "train", name: str | None = None):
    super().__init__(1, 1, name)
    self.n_positions, self.pad_value, self.mode = int(n_positions), pad_value, check_mode(self, mode)

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
