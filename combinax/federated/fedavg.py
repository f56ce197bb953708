"""Federated averaging (McMahan et al., 2017) of any combinax model, loss layer and optax client optimizer.

A round: sample `clients_per_round` of the K clients (from the round's key), train each from the global params
for `local_epochs` epochs of `local_batch_size` on its own examples with `TrainStep.update` (the Trainer's own
step: loss, L2, freezing and the non-finite guard included), and replace the global params by the mean of the
clients' params weighted by their numbers of examples. With a `server_optimizer` (optax), the server instead treats
`global - mean` as a gradient: `optax.sgd(1.0)` is FedAvg again, `optax.sgd(lr, momentum=0.9)` FedAvgM,
`optax.adam(lr)` FedAdam (Reddi et al., 2021). FedSGD is FedAvg with one epoch of one full batch and the client
optimizer `sgd(lr)` (`fedsgd_options`): each client's update is then `lr` times its mean gradient.

Shapes never change between rounds: every client is padded to the same number of examples (`ClientData`), each
epoch runs `ceil(max_examples / batch)` steps, and a step whose batch holds only padding leaves the client as it
was. A client's examples come first in a fresh order each epoch, so its real batches are those an unpadded client
would see: padding changes nothing.

The clients of a round run as a `jax.vmap` ("vmap"), one after another in a `lax.scan` ("sequential": the memory of
one client), or split over the devices of a 1-D `clients` mesh with `shard_map`, each device a `vmap` over its part
and a `psum` of the weighted sums ("sharded"). All three compute the same round (tests/federated).

Randomness: the server's key `rng` gives round r the key `fold_in(rng, r)`, split into the key that samples the
clients and the key whose `fold_in` with a client's index is that client's key (its shuffling and dropout). A round
is therefore a pure function of the server state, and a resumed run samples and trains exactly as an uninterrupted
one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from combinax.federated.splits import ClientData
from combinax.layers.base import Layer
from combinax.sharding import CLIENTS
from combinax.train.step import TrainState, TrainStep

EXECUTIONS = ("vmap", "sequential", "sharded")


class FederatedError(ValueError):
  """A federated run cannot go on as configured; the message names the option or round, expected and found."""


@gin.configurable(module="combinax.federated")
@dataclasses.dataclass(frozen=True)
class FedAvgOptions:
  """How a round runs: clients sampled per round, their local epochs and batch size (None: the client's whole data
  in one batch), `execution` ("vmap", "sequential" or "sharded") and whether clients shuffle each epoch."""
  clients_per_round: int = 10
  local_epochs: int = 1
  local_batch_size: int | None = 10
  execution: str = "vmap"
  shuffle: bool = True

  def __post_init__(self):
    def need(ok, name, expected):
      if not ok:
        raise FederatedError(f"FedAvgOptions.{name}: expected {expected}, got {getattr(self, name)!r}")
    need(isinstance(self.clients_per_round, int) and self.clients_per_round >= 1, "clients_per_round", "an int >= 1")
    need(isinstance(self.local_epochs, int) and self.local_epochs >= 1, "local_epochs", "an int >= 1")
    need(self.local_batch_size is None or (isinstance(self.local_batch_size, int) and self.local_batch_size >= 1),
         "local_batch_size", "an int >= 1 or None (full batch)")
    need(self.execution in EXECUTIONS, "execution", f"one of {EXECUTIONS}")


def fedsgd_options(clients_per_round: int = 10, execution: str = "vmap") -> FedAvgOptions:
  """FedSGD, the paper's baseline: one epoch, one full batch (with the client optimizer `optax.sgd(lr)`, each client
  returns `params - lr * its mean gradient`, and their weighted mean is one step of the round's gradient)."""
  return FedAvgOptions(clients_per_round=clients_per_round, local_epochs=1, local_batch_size=None,
                       execution=execution, shuffle=False)


class ServerState(NamedTuple):
  """What a federated run is between rounds (a pytree, so a checkpoint is just it)."""
  params: Any
  state: Any               # the model's state (e.g. batch-norm statistics), averaged like the params
  opt_state: Any           # the server optimizer's state (empty without one)
  round: jax.Array         # int32 scalar: rounds done
  rng: jax.Array           # the run's key: round r uses fold_in(rng, r)


def round_keys(rng: jax.Array, round_index) -> tuple[jax.Array, jax.Array]:
  """(the key that samples round `round_index`'s clients, the key whose fold_in with a client id is its key)."""
  sample_key, train_key = jax.random.split(jax.random.fold_in(rng, round_index))
  return sample_key, train_key


def client_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis `clients` over `devices` (default: all)."""
  return Mesh(np.array(list(devices if devices is not None else jax.devices())), (CLIENTS,))


def weighted_sum(values, weights):
  """sum_k weights[k] * values[k] over the leading axis of every leaf (weights float32 (k,))."""
  def one(x):
    w = weights.reshape(weights.shape + (1,) * (x.ndim - 1)).astype(x.dtype)
    return jnp.sum(w * x, axis=0)
  return jax.tree_util.tree_map(one, values)


def _floating(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


class FedAvg:
  """Federated averaging for `model` trained with `loss_layer` and the optax `client_optimizer`.

  Args:
    model, loss_layer, client_optimizer: as `TrainStep`'s; client batches are `(*fields, weights)` (padding has
      weight 0), so the loss must take the weights last, e.g. `WeightedCategoryCrossEntropy`.
    options: a `FedAvgOptions` (default: its defaults, or its gin bindings).
    server_optimizer: None (the global params become the clients' weighted mean) or an optax transformation of the
      pseudo-gradient `global - mean` (FedAvgM, FedAdam).
    mesh: for "sharded" execution, a mesh with a `clients` axis (default: all devices, `client_mesh()`).
    step_options: further `TrainStep` options of local training (l2_weight, frozen, compute_dtype, ...).
  """

  def __init__(self, model: Layer, loss_layer: Layer, client_optimizer: optax.GradientTransformation, *,
               options: FedAvgOptions | None = None, server_optimizer: optax.GradientTransformation | None = None,
               mesh: Mesh | None = None, **step_options):
    options = options if options is not None else FedAvgOptions()
    self.model, self.loss_layer, self.options = model, loss_layer, options
    self.client_optimizer, self.server_optimizer = client_optimizer, server_optimizer
    self.train_step = TrainStep(model, loss_layer, client_optimizer, **step_options)
    self.mesh = mesh
    if options.execution == "sharded":
      self.mesh = mesh if mesh is not None else client_mesh()
      if CLIENTS not in self.mesh.axis_names:
        raise FederatedError(f"FedAvg: sharded execution needs a mesh with a {CLIENTS!r} axis, got axes "
                             f"{self.mesh.axis_names}")
    # Server state and metrics live replicated on one mesh, before and after a round alike: a round's inputs then
    # look the same every round, and it compiles once.
    self.replicated = NamedSharding(self.mesh if self.mesh is not None else self.train_step.mesh, P())
    self._round = jax.jit(self._round_fn, out_shardings=self.replicated)

  # --- Setup ------------------------------------------------------------------------------------------------

  def check_data(self, clients: ClientData):
    """A one-line FederatedError if the loss layer cannot take the client batches, or the round asks for more
    clients than there are."""
    items = len(clients.fields) + 1
    if items < self.model.n_in:
      raise FederatedError(f"FedAvg: {self.model.name} takes {self.model.n_in} input(s) but client batches have "
                           f"{items} item(s) (the {len(clients.fields)} field(s) and the weights)")
    takes = self.model.n_out + items - self.model.n_in
    if takes != self.loss_layer.n_in:
      raise FederatedError(
          f"FedAvg: the loss {self.loss_layer.name} takes {self.loss_layer.n_in} input(s) but gets {takes} (the "
          f"model's {self.model.n_out} output(s), then the batch after its inputs: {items - self.model.n_in - 1} "
          "field(s) and the weights that mask client padding); use a weighted loss such as "
          "WeightedCategoryCrossEntropy")
    if self.options.clients_per_round > clients.n_clients:
      raise FederatedError(f"FedAvgOptions.clients_per_round: expected at most the {clients.n_clients} clients, "
                           f"got {self.options.clients_per_round}")

  def init(self, rng: jax.Array, clients: ClientData) -> ServerState:
    """The server state of round 0: the model initialised as `TrainStep.init` does (so a centralised run from the
    same key starts from the same params), the server optimizer's state, and the run's key."""
    self.check_data(clients)
    example = tuple(jax.ShapeDtypeStruct(f.shape[1:], f.dtype) for f in clients.fields) + (
        jax.ShapeDtypeStruct(clients.weights.shape[1:], clients.weights.dtype),)
    fresh = self.train_step.init(rng, example)
    server = self.server_optimizer.init(fresh.params) if self.server_optimizer is not None else optax.EmptyState()
    return jax.device_put(ServerState(fresh.params, fresh.state, server, fresh.step, fresh.rng), self.replicated)

  # --- One client -------------------------------------------------------------------------------------------

  def _epoch_order(self, key, weights):
    """The example indices of one epoch: the client's real examples first (shuffled, or in order), then padding.
    Each example's sort key comes from its own index, so padding never changes the real examples' order."""
    n = weights.shape[0]
    index = jnp.arange(n)
    if self.options.shuffle:
      draw = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(index)
    else:
      draw = index.astype(jnp.float32) / n
    return jnp.argsort(jnp.where(weights > 0, draw, 2.0 + index.astype(jnp.float32) / n))

  def local_steps(self, max_examples: int) -> tuple[int, int]:
    """(batch size, steps per epoch) of local training for clients padded to `max_examples`."""
    batch = min(self.options.local_batch_size or max_examples, max_examples)
    return batch, math.ceil(max_examples / batch)

  def client_update(self, params, model_state, fields: tuple, weights, key: jax.Array):
    """Trains one client from (params, model_state) on its `fields` (each (max_examples, ...)) and `weights`
    ((max_examples,), 0 on padding). Returns (params, model_state, metrics): metrics `examples` (the weights'
    sum), `loss` (mean over the real local steps) and `bad` (a local loss or gradient was not finite)."""
    n = weights.shape[0]
    batch, steps = self.local_steps(n)
    order_key, step_key = jax.random.split(key)
    epochs = self.options.local_epochs
    orders = jax.vmap(lambda e: self._epoch_order(jax.random.fold_in(order_key, e), weights))(jnp.arange(epochs))
    # (epochs * steps, batch) indices; -1 marks slots past the last example when `batch` does not divide n
    slots = jnp.pad(orders, ((0, 0), (0, steps * batch - n)), constant_values=-1).reshape((epochs * steps, batch))
    start = TrainState(params, model_state, self.client_optimizer.init(params), jnp.zeros((), jnp.int32), step_key,
                       jnp.full((), -1, jnp.int32))

    def one(train_state, index):
      take = jnp.clip(index, 0, n - 1)
      mask = jnp.where(index >= 0, weights[take], 0.0)
      new, metrics = self.train_step.update(train_state, tuple(f[take] for f in fields) + (mask,))
      real = jnp.sum(mask) > 0
      # A batch of padding only is no step at all: the optimizer state and step count stay as they were.
      keep = lambda a, b: jnp.where(real, a, b)
      kept = jax.tree_util.tree_map(keep, new._replace(rng=None), train_state._replace(rng=None))
      return kept._replace(rng=train_state.rng), (jnp.where(real, metrics["loss"], 0.0), real)

    final, (losses, real) = jax.lax.scan(one, start, slots)
    metrics = {"examples": jnp.sum(weights), "loss": jnp.sum(losses) / jnp.maximum(jnp.sum(real), 1),
               "bad": final.bad_step >= 0}
    return final.params, final.state, metrics

  # --- A round ----------------------------------------------------------------------------------------------

  def _clients_sums(self, params, model_state, fields, weights, keys):
    """Weighted sums over a block of clients (leading axis): (sum n_k params_k, sum n_k state_k, sum n_k,
    sum n_k loss_k, number of bad clients), by the configured execution."""
    update = lambda f, w, k: self.client_update(params, model_state, f, w, k)
    if self.options.execution == "sequential":
      def one(sums, client):
        p, s, m = update(*client)
        n = m["examples"]
        add = lambda total, x: total + n.astype(x.dtype) * x
        return (jax.tree_util.tree_map(add, sums[0], p), jax.tree_util.tree_map(add, sums[1], s),
                sums[2] + n, sums[3] + n * m["loss"], sums[4] + m["bad"].astype(jnp.int32)), None
      zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
      start = (zeros(params), zeros(model_state), jnp.float32(0), jnp.float32(0), jnp.int32(0))
      return jax.lax.scan(one, start, (fields, weights, keys))[0]
    p, s, m = jax.vmap(update)(fields, weights, keys)
    n = m["examples"]
    return (weighted_sum(p, n), weighted_sum(s, n), jnp.sum(n), jnp.sum(n * m["loss"]),
            jnp.sum(m["bad"].astype(jnp.int32)))

  def _sharded_sums(self, params, model_state, fields, weights, keys):
    def block(params, model_state, fields, weights, keys):
      return jax.lax.psum(self._clients_sums(params, model_state, fields, weights, keys), CLIENTS)
    # check_vma=False: a client's fresh train state (zero step, new optimizer state) starts the same on every device
    # and becomes device-varying in its first step, which the scan's carry typing would otherwise refuse.
    return jax.shard_map(block, mesh=self.mesh, in_specs=(P(), P(), P(CLIENTS), P(CLIENTS), P(CLIENTS)),
                         out_specs=P(), check_vma=False)(params, model_state, fields, weights, keys)

  def sample_clients(self, sample_key: jax.Array, n_clients: int) -> jax.Array:
    """The indices of the round's clients, drawn without replacement."""
    return jax.random.choice(sample_key, n_clients, (self.options.clients_per_round,), replace=False)

  def _round_fn(self, server: ServerState, fields: tuple, weights):
    sample_key, train_key = round_keys(server.rng, server.round)
    chosen = self.sample_clients(sample_key, weights.shape[0])
    keys = jax.vmap(lambda k: jax.random.fold_in(train_key, k))(chosen)
    fields, weights = tuple(f[chosen] for f in fields), weights[chosen]
    if self.options.execution == "sharded":
      # pad the round to a multiple of the devices with clients of weight 0: they train on nothing and add nothing
      extra = -len(chosen) % self.mesh.shape[CLIENTS]
      pad = lambda x: jnp.concatenate([x, jnp.zeros((extra,) + x.shape[1:], x.dtype)]) if extra else x
      keys = jnp.concatenate([keys, keys[jnp.zeros((extra,), jnp.int32)]]) if extra else keys
      sums = self._sharded_sums(server.params, server.state, tuple(pad(f) for f in fields), pad(weights), keys)
    else:
      sums = self._clients_sums(server.params, server.state, fields, weights, keys)
    params_sum, state_sum, total, loss_sum, bad = sums
    mean = jax.tree_util.tree_map(lambda x: x / total.astype(x.dtype), params_sum)
    model_state = jax.tree_util.tree_map(
        lambda s, old: (s / total.astype(s.dtype)).astype(old.dtype) if _floating(old) else old,
        state_sum, server.state)
    params, opt_state = self.server_update(server.params, mean, server.opt_state)
    new = ServerState(params, model_state, opt_state, server.round + 1, server.rng)
    return new, {"loss": loss_sum / total, "examples": total, "bad_clients": bad, "clients": chosen}

  def server_update(self, params, mean, opt_state):
    """The global params after a round whose clients' weighted mean is `mean`: the mean itself, or the server
    optimizer's step on the pseudo-gradient `params - mean`. Returns (params, server optimizer state)."""
    if self.server_optimizer is None:
      return mean, opt_state
    pseudo_gradient = jax.tree_util.tree_map(jnp.subtract, params, mean)
    updates, opt_state = self.server_optimizer.update(pseudo_gradient, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def round(self, server: ServerState, clients: ClientData) -> tuple[ServerState, dict]:
    """One round (compiled once per data shape): returns (the new server state, metrics: the clients' weighted mean
    local `loss`, `examples`, `bad_clients` and the sampled `clients`)."""
    return self._round(server, tuple(clients.fields), clients.weights)
