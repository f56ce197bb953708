"""The train state and the one jitted, sharded training step.

`TrainState` (params, model state, optimizer state, step, rng, first non-finite step) is one pytree, so a checkpoint
is just it. `TrainStep` compiles `step(train_state, batch) -> (train_state, metrics)` once with `jax.jit`, the state
donated, batches split on the mesh's `data` axis and parameters placed by path rules (`sharding.py`).

A batch is a tuple, Trax-style: the model takes its first `model.n_in` items and the loss layer takes the model's
outputs followed by the rest, e.g. `(tokens, targets, weights)` -> `loss(model(tokens), targets, weights)`.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from combinax import shapes, sharding
from combinax.layers.base import Layer
from combinax.layers.combinators import from_stack, to_stack
from combinax.paths import mask as path_mask
from combinax.train import objective, regularization


class TrainState(NamedTuple):
  params: Any
  state: Any
  opt_state: Any
  step: jax.Array          # int32 scalar: updates applied so far
  rng: jax.Array           # the run's key; step t uses fold_in(rng, t)
  bad_step: jax.Array      # int32 scalar: the first step whose loss or gradients were not finite, or -1


def split_batch(model: Layer, batch: tuple):
  """(the model's inputs, the rest of the batch): the first `model.n_in` items go to the model."""
  batch = tuple(batch)
  if len(batch) < model.n_in:
    raise ValueError(f"{model.name} takes {model.n_in} input(s) but the batch has only {len(batch)} item(s)")
  return from_stack(list(batch[:model.n_in]), model.n_in), batch[model.n_in:]


def loss_inputs(layer: Layer, model: Layer, outputs, rest):
  """What a loss or metric `layer` takes: the model's outputs, then the rest of the batch."""
  return from_stack(to_stack(outputs, model.n_out) + list(rest), layer.n_in)


def frozen_mask(params, frozen: Iterable[str] = (), trainable: Iterable[str] | None = None):
  """True for each parameter that must not change: it matches `frozen`, or (with `trainable`) matches none of
  `trainable`. None when every parameter trains."""
  if not frozen and trainable is None:
    return None
  mask = path_mask(params, tuple(frozen)) if frozen else jax.tree_util.tree_map(lambda _: False, params)
  if trainable is not None:
    allowed = path_mask(params, tuple(trainable))
    if not any(jax.tree_util.tree_leaves(allowed)):
      raise ValueError(f"no parameter matches trainable={list(trainable)}")
    mask = jax.tree_util.tree_map(lambda f, t: bool(f or not t), mask, allowed)
  return mask


class TrainStep:
  """Builds and runs the jitted training step for a model, its loss and an optax optimizer.

  Args:
    model: the layer trained.
    loss: a loss layer, mapping (model outputs, *rest of the batch) to a scalar, or an `objective.Objective`
      composed from one (a fused head, a compute dtype, a teacher, quantization-aware weights: `objective.py`).
    optimizer: an optax GradientTransformation (learning-rate schedules, clipping etc. chained in it).
    mesh: where to run (default: all devices on the data axis); rules: parameter sharding rules, which place the
      objective's constants (a teacher's params) too.
    l2_weight, l2_exclude: an L2 penalty `l2_weight / 2 * |w|^2` on params not matching `l2_exclude`.
    accumulate_steps: split each batch into this many micro-batches, run them one after another (a scan) and apply
      the mean gradient once: the update of the whole batch with the memory of one micro-batch (exact when the
      micro-batches carry equal loss weight, e.g. unweighted means).
    frozen: glob patterns of parameters that never change (bit-identical); trainable: if given, every parameter
      that matches none of these patterns is frozen too (e.g. `["*_lora_*"]` trains only LoRA adapters). Frozen
      parameters get no gradient (XLA drops its computation) and do not count in the gradient norm or clipping.
  """

  def __init__(self, model: Layer, loss: Layer | objective.Objective, optimizer: optax.GradientTransformation, *,
               mesh: Mesh | None = None, rules: Iterable = (), l2_weight: float = 0.0,
               l2_exclude: Iterable[str] = regularization.DEFAULT_EXCLUDE, accumulate_steps: int = 1,
               frozen: Iterable[str] = (), trainable: Iterable[str] | None = None):
    self.model, self.optimizer = model, optimizer
    self.objective = objective.plain(model, loss) if isinstance(loss, Layer) else loss
    self.trainable = None if trainable is None else tuple(trainable)
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self.rules, self.l2_weight, self.l2_exclude = list(rules), float(l2_weight), tuple(l2_exclude)
    self.accumulate_steps, self.frozen = int(accumulate_steps), tuple(frozen)
    if self.accumulate_steps < 1:
      raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
    self.constants = jax.device_put(self.objective.constants,
                                    sharding.tree_shardings(self.objective.constants, self.mesh, self.rules))
    self._compiled = None

  # --- Initialisation ---------------------------------------------------------------------------------------

  def state_shardings(self, abstract_state: TrainState) -> TrainState:
    replicated = NamedSharding(self.mesh, P())
    return TrainState(
        params=sharding.tree_shardings(abstract_state.params, self.mesh, self.rules),
        state=jax.tree_util.tree_map(lambda _: replicated, abstract_state.state),
        opt_state=sharding.tree_shardings(abstract_state.opt_state, self.mesh, self.rules),
        step=replicated, rng=replicated, bad_step=replicated)

  def init(self, rng: jax.Array, batch) -> TrainState:
    """A fresh train state for batches like `batch` (arrays or signatures), created directly in its shardings."""
    inputs_sig, _ = split_batch(self.model, shapes.signature(tuple(batch)))
    def create(rng):
      init_rng, run_rng = jax.random.split(rng)
      params, state = self.model.init(init_rng, inputs_sig)
      return TrainState(params, state, self.optimizer.init(params), jnp.zeros((), jnp.int32), run_rng,
                        jnp.full((), -1, jnp.int32))
    abstract = jax.eval_shape(create, rng)
    return jax.jit(create, out_shardings=self.state_shardings(abstract))(rng)

  # --- The step ---------------------------------------------------------------------------------------------

  def loss(self, params, model_state, batch, rng, constants):
    """The training loss of one (micro-)batch, the model's new state, and the loss before regularization."""
    inputs, rest = split_batch(self.model, batch)
    loss, new_state = self.objective(params, model_state, inputs, rest, rng, constants)
    total = loss
    if self.l2_weight:
      total = total + regularization.l2_penalty(params, self.l2_weight, exclude=self.l2_exclude)
    return total, (new_state, loss)

  def _gradients(self, params, model_state, batch, rng, constants):
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    if self.accumulate_steps == 1:
      (total, (model_state, loss)), grads = grad_fn(params, model_state, batch, rng, constants)
      return total, loss, grads, model_state
    k = self.accumulate_steps
    def micro(x):
      if x.shape[0] % k:
        raise ValueError(f"accumulate_steps={k} must divide the batch size {x.shape[0]}")
      return x.reshape((k, x.shape[0] // k) + x.shape[1:])
    micro_batches = jax.tree_util.tree_map(micro, tuple(batch))

    def one(carry, scanned):
      grads_sum, total_sum, loss_sum, model_state = carry
      micro_batch, index = scanned
      (total, (model_state, loss)), grads = grad_fn(params, model_state, micro_batch, jax.random.fold_in(rng, index),
                                                    constants)
      grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, grads)
      return (grads_sum, total_sum + total, loss_sum + loss, model_state), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (grads, total, loss, model_state), _ = jax.lax.scan(
        one, (zeros, jnp.float32(0.0), jnp.float32(0.0), model_state), (micro_batches, jnp.arange(k)))
    return total / k, loss / k, jax.tree_util.tree_map(lambda g: g / k, grads), model_state

  def _frozen_mask(self, params):
    return frozen_mask(params, self.frozen, self.trainable)

  def _step(self, train_state: TrainState, batch, constants):
    rng = jax.random.fold_in(train_state.rng, train_state.step)
    total, loss, grads, model_state = self._gradients(train_state.params, train_state.state, batch, rng,
                                                      constants)
    frozen = self._frozen_mask(train_state.params)
    if frozen is not None:
      grads = jax.tree_util.tree_map(lambda g, keep: jnp.zeros_like(g) if keep else g, grads, frozen)
    grad_norm = optax.tree.norm(grads)
    # A non-finite loss or gradient freezes the state and records the step; the host then stops the run.
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & (train_state.bad_step < 0)

    def update(params, opt_state, grads, new_model_state, old_model_state):
      updates, opt_state = self.optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      if frozen is not None:
        new_params = jax.tree_util.tree_map(lambda new, old, keep: old if keep else new, new_params, params, frozen)
      # the same dtypes as before (a bfloat16 run may compute statistics in bfloat16): both branches must agree
      new_model_state = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), new_model_state,
                                               old_model_state)
      return new_params, opt_state, new_model_state

    def keep(params, opt_state, grads, new_model_state, old_model_state):
      return params, opt_state, old_model_state

    # A cond, not a select of new and old: XLA then updates the donated buffers in place (a select needs the old
    # optimizer state beside the new, and copies it: ~12 ms a step for 10M parameters on a CPU).
    params, opt_state, model_state = jax.lax.cond(
        finite, update, keep, train_state.params, train_state.opt_state, grads, model_state, train_state.state)
    bad_step = jnp.where(finite | (train_state.bad_step >= 0), train_state.bad_step, train_state.step)
    new = TrainState(params, model_state, opt_state, jnp.where(finite, train_state.step + 1, train_state.step),
                     train_state.rng, bad_step)
    return new, {"loss": loss, "total_loss": total, "grad_norm": grad_norm}

  def update(self, train_state: TrainState, batch):
    """One update as the pure, unjitted function that `__call__` compiles: for callers that transform it further,
    e.g. `jax.vmap` over the clients of a federated round (`combinax.federated`). Returns (new state, metrics)."""
    return self._step(train_state, tuple(batch), self.constants)

  def __call__(self, train_state: TrainState, batch):
    """One update: returns (new train state, metrics). The old state is donated (do not reuse it)."""
    batch = sharding.shard_batch(tuple(batch), self.mesh)
    if self._compiled is None:
      shardings = self.state_shardings(jax.eval_shape(lambda s: s, train_state))
      replicated = NamedSharding(self.mesh, P())
      constants = sharding.tree_shardings(self.constants, self.mesh, self.rules)
      self._compiled = jax.jit(self._step, in_shardings=(shardings, sharding.batch_sharding(self.mesh), constants),
                               out_shardings=(shardings, replicated), donate_argnums=0)
    with sharding.running_on(self.mesh):
      return self._compiled(train_state, batch, self.constants)
