"""A multi-layer perceptron, as Trax's `MLP`: Dense layers with an activation between them."""

from __future__ import annotations

from typing import Callable, Sequence

from combinax import layers as cl


def MLP(layer_widths: Sequence[int] = (128, 64), activation_fn: Callable[[], cl.Layer] = cl.Relu,
        out_activation: bool = False, flatten: bool = True, mode: str = "train") -> cl.Layer:
  """A stack of Dense layers of `layer_widths`, each followed by `activation_fn()` except the last (unless
  `out_activation`); with `flatten`, every axis but the batch axis is flattened first.

  Args:
    layer_widths: the number of units of each Dense layer; the last one is the output width.
    activation_fn: a function of no arguments that returns an activation layer, e.g. `cl.Relu` or `cl.Gelu`.
    out_activation: whether the last Dense layer is followed by the activation too.
    flatten: whether to flatten (batch, ...) inputs to (batch, features) first.
    mode: "train" or "eval" (Trax's; the same model). It keeps no decoding state, so it has no "predict".

  >>> model = MLP(layer_widths=(16, 10))
  >>> model.output_signature(ShapeDtype((8, 4, 4)))     # flattened to (8, 16) first
  ShapeDtype((8, 10), float32)
  >>> print(model)
  MLP[
    Flatten
    Dense
    Relu
    Dense
  ]
  >>> cx.paths(model.init(jax.random.key(0), ShapeDtype((8, 4, 4)))[0])
  ['Dense_0/bias', 'Dense_0/kernel', 'Dense_1/bias', 'Dense_1/kernel']
  """
  layers = []
  for i, width in enumerate(layer_widths):
    layers.append(cl.Dense(width))                     # (batch, ..., width)
    if out_activation or i < len(layer_widths) - 1:
      layers.append(activation_fn())
  model = cl.Serial(
      cl.Flatten(n_axes_to_keep=1) if flatten else None,  # (batch, ...) -> (batch, features)
      layers,
      name="MLP")
  cl.check_mode(model, mode, decodes=False)
  return model
