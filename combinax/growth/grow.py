"""Training the growth operator: `Grown`, the large model whose params are the operator applied to frozen small
params, and `grow`, which trains the operator for a few steps and returns the large model's params.

`Grown(small_model, large_model)` is an ordinary layer: its params are the small model's, at the small model's own
paths (so a small run's checkpoint loads into it as it is), and the operator's under `growth/`. Its `apply`
materialises the large params inside the jitted step (`expand`) and runs the large model with them; the small params
enter through `stop_gradient`, so no gradient reaches them, and the training task makes them frozen (no optimizer
state, bit-identical after training): `TrainTask.trainable = ["growth/*"]`, as `grow` and `GrowthRun` set.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import optax

from combinax import layers as cl
from combinax.growth.operator import GrowthError, GrowthOptions, Plan, expand, init_operator, make_plan
from combinax.layers.base import Layer, child_rng
from combinax.paths import leaves_with_paths
from combinax.train.step import TrainStep, frozen_mask

TRAINABLE = ("growth/*",)


class Grown(Layer):
  """`large_model` with params `expand(operator, small params)`; trains only the operator (under `growth/`).

  >>> from combinax import models as cm
  >>> small = cm.TransformerLM(16, d_model=8, d_ff=16, n_layers=1, n_heads=2, positions="rotary")
  >>> large = cm.TransformerLM(16, d_model=16, d_ff=32, n_layers=2, n_heads=4, positions="rotary")
  >>> params, _ = Grown(small, large).init(jax.random.key(0), ShapeDtype((1, 5), jnp.int32))
  >>> sorted(k for k in params if k not in ("blocks", "final_norm"))
  ['embed', 'growth', 'logits']
  """

  def __init__(self, small_model: Layer, large_model: Layer, options: GrowthOptions = GrowthOptions(),
               name: str | None = None):
    super().__init__(large_model.n_in, large_model.n_out, name)
    if small_model.n_in != large_model.n_in or small_model.n_out != large_model.n_out:
      raise GrowthError(f"Grown: the small model takes {small_model.n_in} input(s) and gives {small_model.n_out}, "
                        f"the large one {large_model.n_in} and {large_model.n_out}: they must agree")
    self.small_model, self.large_model, self.options = small_model, large_model, options

  def summary(self) -> str:
    return f"Grown({self.small_model.summary()} -> {self.large_model.summary()}){self.arity_suffix()}"

  def plan(self, small_params) -> Plan:
    return make_plan(self.small_model, small_params, self.large_model)

  def init_params_and_state(self, rng, input_signature):
    small_params, _ = self.small_model.init(child_rng(rng, 0), input_signature)
    if "growth" in small_params:
      raise GrowthError("Grown: the small model has a parameter scope named 'growth', where the operator lives")
    large_params, large_state = self.large_model.init(child_rng(rng, 2), input_signature)
    plan = self.plan(small_params)
    operator = init_operator(child_rng(rng, 1), plan, self.options)
    check_shapes(expand(plan, operator, small_params), large_params)
    return {**small_params, "growth": operator}, large_state

  def small_params(self, params):
    return {key: value for key, value in params.items() if key != "growth"}

  def large_params(self, params):
    """The large model's params (the operator applied): a plain tree for `large_model`, e.g. to checkpoint."""
    small = jax.lax.stop_gradient(self.small_params(params))
    return expand(self.plan(small), params["growth"], small)

  def forward(self, params, state, inputs, *, rng, train):
    return self.large_model.apply(self.large_params(params), state, inputs, rng=rng, train=train)


def check_shapes(grown, large_params):
  """A GrowthError naming each leaf where the operator's output differs from the large model's own params."""
  have = {path: tuple(x.shape) for path, x in leaves_with_paths(grown)}
  want = {path: tuple(x.shape) for path, x in leaves_with_paths(large_params)}
  if set(have) != set(want):
    raise GrowthError(f"grow: the large model's params are not the small one's grown: only in the large model "
                      f"{sorted(set(want) - set(have))[:6]}, only in the small one {sorted(set(have) - set(want))[:6]}")
  wrong = [f"{p}: expected {want[p]} (large model), got {have[p]} (grown)" for p in want if have[p] != want[p]]
  if wrong:
    raise GrowthError("grow: the grown params do not fit the large model (sizes that growth does not change, such as "
                      "the vocabulary, max_len or classes, must be equal):\n  " + "\n  ".join(wrong[:6]))


def grow(small_model: Layer, small_params, large_model: Layer, data: Iterable, steps: int = 100, *,
         options: GrowthOptions = GrowthOptions(), loss_layer: Layer | None = None,
         optimizer: optax.GradientTransformation | None = None, rng: jax.Array | None = None,
         callback: Callable[[int, dict], None] | None = None):
  """The large model's params, grown from the small model's by the LiGO operator trained for `steps` steps.

  Args:
    small_model, small_params: the trained small model (a TransformerLM or TransformerEncoder, possibly wrapped).
    large_model: the model to grow into (same kind, same vocabulary; wider and/or deeper).
    data: batches as for training the large model, e.g. `(tokens, targets, weights)`; `steps` are taken from it.
    steps: operator training steps (0: the operator's initial setting, e.g. `METHODS["stack"]`).
    options: the operator's initialisation (`GrowthOptions`, or one of `METHODS`).
    loss_layer: the large model's training loss (default: weighted cross-entropy).
    optimizer: default Adam at 1e-3 (the paper trains the operator with Adam for 100 steps).
    callback: called as `callback(step, metrics)` after each step (metrics: "loss" and "grad_norm").
  """
  grown = Grown(small_model, large_model, options)
  # The small params get no optimizer state and stay bit-identical (TrainStep keeps frozen params as they were).
  operator_only = lambda params: jax.tree_util.tree_map(lambda f: not f, frozen_mask(params, trainable=TRAINABLE))
  step_fn = TrainStep(grown, loss_layer or cl.WeightedCategoryCrossEntropy(),
                      optax.masked(optimizer or optax.adam(1e-3), operator_only), trainable=TRAINABLE)
  batches = iter(data)
  first = next(batches)
  train_state = step_fn.init(jax.random.key(0) if rng is None else rng, first)
  # Copies: the step donates its state, and the caller's small params must outlive it.
  small = jax.tree_util.tree_map(lambda new, old: jax.device_put(jnp.array(new, copy=True), old.sharding),
                                 small_params, grown.small_params(train_state.params))
  train_state = train_state._replace(params={**small, "growth": train_state.params["growth"]})
  batch = first
  for step in range(steps):
    train_state, metrics = step_fn(train_state, batch)
    if callback is not None:
      callback(step + 1, metrics)
    if step + 1 < steps:
      batch = next(batches)
  return jax.jit(grown.large_params)(train_state.params)
