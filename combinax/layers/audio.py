"""Sound as a sequence of frames: a check of the spectrograms an audio model was built for. The frames themselves
(log-mel features) are made by the data pipeline (`combinax.data.spoken.log_mel`), as a text model's tokens are."""

from __future__ import annotations

import jax.numpy as jnp

from combinax import shapes
from combinax.layers.base import Layer, LayerError


class CheckFrames(Layer):
  """The identity on spectrograms (batch, frames, n_features) float with the `n_features` (mel bins) a model was
  built for, and at most `max_frames` frames (None: any); any other input raises a LayerError naming the expected
  and the actual shape, before anything is computed.

  >>> CheckFrames(40).output_signature(ShapeDtype((2, 100, 40)))
  ShapeDtype((2, 100, 40), float32)
  """

  def __init__(self, n_features: int, max_frames: int | None = None, name: str | None = None):
    super().__init__(1, 1, name)
    self.n_features = int(n_features)
    self.max_frames = None if max_frames is None else int(max_frames)

  def _check(self, x):
    ok = len(x.shape) == 3 and jnp.issubdtype(x.dtype, jnp.floating) and x.shape[2] == self.n_features
    if not ok or (self.max_frames is not None and x.shape[1] > self.max_frames):
      frames = "frames" if self.max_frames is None else f"frames <= {self.max_frames}"
      raise LayerError(self, "spectrograms of another shape than the model was built for",
                       expected=f"(batch, {frames}, {self.n_features}), float", actual=shapes.describe(x))

  def init_params_and_state(self, rng, input_signature):
    self._check(input_signature)
    return {}, {}

  def forward(self, params, state, x, *, rng, train):
    self._check(x)
    return x, state
