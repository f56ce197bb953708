"""The training step's loss, composed of small transforms: what a technique adds to training is one of these, applied
to the plain loss, never a flag threaded through the step (Optax's idea, for the forward pass).

    loss = objective.plain(model, cl.WeightedCategoryCrossEntropy())    # loss_layer(model(inputs), *rest)
    loss = objective.compute_dtype(jnp.bfloat16)(loss)                  # the model runs in bfloat16
    loss = objective.teacher(teacher, teacher_params)(loss)             # + the teacher's outputs, for the loss
    loss = objective.quantization_aware(rules)(loss)                    # on the weights as quantized
    step = TrainStep(model, loss, optax.adam(1e-3))

An `Objective` is the loss in three parts, so that a transform can reach the one it changes: `prepare` maps the
trained params to those the model runs with (quantization-aware weights), `forward` runs the model (a compute
dtype, a teacher beside it), `criterion` turns its outputs and the rest of the batch into the loss (a fused head
reads the head's params there). `constants` are arrays the loss reads and nothing trains (a teacher's params): the
step passes them to its compiled function as arguments, placed by the model's sharding rules, never in the train
state. `TrainTask.objective` composes these from a recipe's settings.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from combinax import quant
from combinax.layers.base import Layer
from combinax.layers.combinators import from_stack, to_stack
from combinax.train.fused_head import fused_head as fusion_plan, projected_loss


class Objective(NamedTuple):
  """`loss(params, state, inputs, rest, rng, constants) -> (loss, new model state)`, in parts (module docstring)."""
  prepare: Callable     # params -> the params the model runs with
  forward: Callable     # (params, state, inputs, rng, constants) -> (the outputs as a stack (list), new state)
  criterion: Callable   # (params, outputs, rest) -> the scalar loss
  constants: dict       # name -> a pytree of arrays the loss reads and nothing trains

  def __call__(self, params, state, inputs, rest, rng, constants):
    params = self.prepare(params)
    outputs, new_state = self.forward(params, state, inputs, rng, constants)
    return self.criterion(params, outputs, rest), new_state


Transform = Callable[[Objective], Objective]


def _identity(params):
  return params


def _cast(tree, dtype):
  return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _model_forward(model: Layer) -> Callable:
  def forward(params, state, inputs, rng, constants):
    outputs, new_state = model.apply(params, state, inputs, rng=rng, train=True)
    return to_stack(outputs, model.n_out), new_state
  return forward


def _layer_criterion(loss_layer: Layer) -> Callable:
  """`loss_layer(*outputs, *rest)`: the model's outputs, then the rest of the batch."""
  return lambda params, outputs, rest: loss_layer.apply({}, {}, from_stack(list(outputs) + list(rest),
                                                                           loss_layer.n_in))[0]


def plain(model: Layer, loss_layer: Layer) -> Objective:
  """`loss_layer(model(inputs), *rest)`, the model in training mode."""
  return Objective(_identity, _model_forward(model), _layer_criterion(loss_layer), {})


def fused_head(model: Layer, loss_layer: Layer) -> Objective:
  """`plain(model, loss_layer)`'s loss and gradients with the model's final `Dense` computed together with the
  cross-entropy, a chunk of positions at a time (`fused_head.py`); a ValueError says why a model or loss cannot."""
  plan = fusion_plan(model, loss_layer)
  plain_criterion = _layer_criterion(loss_layer)

  def forward(params, state, inputs, rng, constants):
    body_params = {k: v for k, v in params.items() if k != plan.key}
    x, new_state = plan.body.apply(body_params, state, inputs, rng=rng, train=True)
    return [x], new_state

  def criterion(params, outputs, rest):
    return projected_loss(plan, params[plan.key], outputs[0], rest,
                          lambda logits: plain_criterion(params, [logits], rest))

  return Objective(_identity, forward, criterion, {})


def compute_dtype(dtype) -> Transform:
  """The model runs in `dtype` (e.g. bfloat16: params and inputs cast to it), its outputs cast back to float32
  for the loss; the trained params and their updates stay float32."""
  def transform(objective: Objective) -> Objective:
    def forward(params, state, inputs, rng, constants):
      outputs, new_state = objective.forward(_cast(params, dtype), state, _cast(inputs, dtype), rng, constants)
      return _cast(outputs, jnp.float32), new_state
    return objective._replace(forward=forward)
  return transform


def teacher(model: Layer, params: Any) -> Transform:
  """Distillation: `model` (the teacher) runs on the same inputs in eval mode, with no gradient, and its outputs
  follow the student's into the criterion (e.g. `cl.DistillationLoss`). `params` become the constant "teacher"."""
  def transform(objective: Objective) -> Objective:
    def forward(student_params, state, inputs, rng, constants):
      taught, _ = model.apply(constants["teacher"], {}, inputs, train=False)
      outputs, new_state = objective.forward(student_params, state, inputs, rng, constants)
      return list(outputs) + to_stack(jax.lax.stop_gradient(taught), model.n_out), new_state
    return objective._replace(forward=forward, constants={**objective.constants, "teacher": params})
  return transform


def quantization_aware(rules) -> Transform:
  """The model trains on its weights as their quantized form computes (`quant.fake_quantize` with `rules`), the
  gradients reaching the float weights straight through."""
  rules = tuple(tuple(rule) for rule in rules)
  def transform(objective: Objective) -> Objective:
    prepare = objective.prepare
    return objective._replace(prepare=lambda params: quant.fake_quantize(prepare(params), rules))
  return transform


def chain(objective: Objective, *transforms: Transform) -> Objective:
  """`objective` with each transform applied in turn (the first innermost)."""
  for transform in transforms:
    objective = transform(objective)
  return objective
