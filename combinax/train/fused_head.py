"""Training-time fusion of a model's final `Dense` (the logits) with its softmax cross-entropy loss, on request.

A language model's last layer projects to the vocabulary, and the loss then reads those (batch, length, vocab)
logits once for the softmax and once more for its gradient. Asked with `objective.fused_head(model, loss_layer)`
(in gin, `TrainTask.fuse_loss = True`), the step computes that pair with `projected_cross_entropy`: the same loss and
gradients, a chunk of positions at a time, so the full logits are never built (faster on CPU, far less memory).
It applies to a model that is a `Serial` ending in a plain `Dense`, trained with `CategoryCrossEntropy` or
`WeightedCategoryCrossEntropy`; asked of anything else it raises a `ValueError` that says what does not fit.
Nothing about the model changes: its params, paths and `apply` are as they were, and evaluation runs it whole.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from combinax.layers.base import Layer, walk
from combinax.layers.combinators import Serial
from combinax.layers.core import Dense
from combinax.layers.losses import (CategoryCrossEntropy, WeightedCategoryCrossEntropy, check_categorical,
                                    projected_cross_entropy)


class FusedHead(NamedTuple):
  body: Layer             # the model without its final Dense; same params (minus the Dense's), same rng
  head: Dense
  key: str                # where the final Dense's params live in the model's params
  loss_layer: Layer


def fused_head(model: Layer, loss_layer: Layer) -> FusedHead:
  """The fusion plan for `model` and `loss_layer`; a ValueError naming what does not fit when they cannot fuse."""
  def cannot(why: str):
    return ValueError(f"fuse_loss=True: {why}; fusion needs a model that is a Serial ending in a Dense (the "
                      "logits, with no other use of its weights) and a (Weighted)CategoryCrossEntropy loss. "
                      "Set fuse_loss=False for this model.")
  if type(loss_layer) not in (CategoryCrossEntropy, WeightedCategoryCrossEntropy):
    raise cannot(f"the loss is {loss_layer.name}")
  if not isinstance(model, Serial) or model.n_out != 1:
    raise cannot(f"the model {model.name} is not a Serial with one output")
  head, key = model.sublayers[-1], model.child_slots[-1]
  if type(head) is not Dense or not isinstance(key, str):
    raise cannot(f"the model ends in {head.name}, not a Dense")
  if any(layer is head for before in model.sublayers[:-1] for layer in walk(before)):
    raise cannot(f"the final Dense ({key}) is shared with another place in the model")
  body = Serial(*model.sublayers[:-1])
  if body.n_in != model.n_in or body.n_out != 1:
    raise cannot(f"the layers before the final Dense ({key}) do not take the model's inputs to one array")
  return FusedHead(body, head, key, loss_layer)


def projected_loss(plan: FusedHead, head_params, x, rest, plain_loss):
  """The loss of `plan`'s model from the activations `x` before its final Dense, as `loss_layer(head(x), *rest)`.
  `plain_loss(logits)` is the unfused loss, for batches without the (batch, length) shape the fusion needs."""
  weighted = isinstance(plan.loss_layer, WeightedCategoryCrossEntropy)
  targets = rest[0] if rest else None
  weights = rest[1] if weighted and len(rest) > 1 else None
  if x.ndim != 3 or targets is None or (weighted and weights is None) or targets.shape != x.shape[:2]:
    # Not the (batch, length, d) -> (batch, length) case: the plain path, with its own checks and errors.
    return plain_loss(plan.head.apply(head_params, {}, x)[0])
  logits = jax.ShapeDtypeStruct(x.shape[:2] + (head_params["kernel"].shape[1],), x.dtype)
  check_categorical(plan.loss_layer, logits, targets, weights)
  return projected_cross_entropy(x, head_params["kernel"], head_params.get("bias"), targets, weights,
                                 plan.loss_layer.label_smoothing or 0.0)
