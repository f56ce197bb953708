"""Image stages: seeded, resumable augmentation of (height, width, channels) arrays."""

from __future__ import annotations

import numpy as np

from combinax.data.base import DataError, Stage, Stream, check_tuple


class _ShiftStream(Stream):

  def __init__(self, stage, upstream):
    super().__init__(stage, upstream)
    self._rng = np.random.Generator(np.random.PCG64(stage.seed))

  def next(self):
    stage = self.stage
    example = check_tuple(next(self.upstream), stage.name, (stage.key,))
    image = np.asarray(example[stage.key])
    if image.ndim != 3:
      raise DataError(f"RandomShift: position {stage.key} must be an image (height, width, channels), got shape "
                      f"{image.shape}")
    dy, dx = self._rng.integers(-stage.max_shift, stage.max_shift + 1, size=2)
    height, width = image.shape[:2]
    shifted = np.full_like(image, stage.fill)
    shifted[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        image[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return example[:stage.key] + (shifted,) + example[stage.key + 1:]

  def state(self):
    return {"rng": self._rng.bit_generator.state}

  def restore(self, state):
    self._rng.bit_generator.state = state["rng"]


class RandomShift(Stage):
  """Moves the image at position `key` by a random whole number of pixels, at most `max_shift` in each direction,
  filling the uncovered rows and columns with `fill` (a translation: the cheapest augmentation that a small vision
  model on few images needs). Seeded and resumable.

  >>> from combinax import data
  >>> image = np.arange(9.0).reshape(3, 3, 1)
  >>> out, = next(data.Serial(data.FromList([(image,)]), data.RandomShift(1, seed=3))())
  >>> out[..., 0]
  array([[0., 0., 0.],
         [1., 2., 0.],
         [4., 5., 0.]])
  """

  def __init__(self, max_shift: int = 1, seed: int = 0, key: int = 0, fill: float = 0.0):
    if not isinstance(max_shift, int) or max_shift < 0:
      raise DataError(f"RandomShift: max_shift must be an int >= 0 (pixels), got {max_shift!r}")
    self.max_shift, self.seed, self.key, self.fill = max_shift, seed, key, fill

  def stream(self, upstream):
    return _ShiftStream(self, upstream)
