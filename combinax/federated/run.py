"""A federated run from a gin recipe (`combinax-federated`): the data read once and split into clients, rounds of
`FedAvg`, evaluation of the global model, metrics to `metrics.jsonl` (and TensorBoard), and checkpoints of the
server state every few rounds in the Trainer's run-directory layout.

The server state (global params and model state, server optimizer state, round, and the key that samples every
round's clients) is the whole of a run between rounds: a round is a pure function of it and the client data, which
the recipe and its seeds fix. A run resumed from its newest checkpoint therefore continues bit for bit as if it had
never stopped, and refuses to resume under another configuration unless told to (as `Trainer.run` does).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import gin
import jax
import numpy as np
import optax

from combinax import layers as cl
from combinax.data.base import Stage
from combinax.federated.fedavg import FedAvg, FedAvgOptions, FederatedError, ServerState
from combinax.federated.splits import ClientData, pack_clients, read_examples, split_clients
from combinax.layers.base import Layer
from combinax.store.session import RunSession
from combinax.train.step import loss_inputs, split_batch
from combinax.train.trainer import TrainingError


def default_metrics() -> dict[str, Layer]:
  return {"loss": cl.WeightedCategoryCrossEntropy(), "accuracy": cl.WeightedCategoryAccuracy()}


class Evaluator:
  """Weighted means of `metrics` (layers taking (outputs, *rest, weights)) over every example of `arrays`, in
  batches of `batch_size` (the last one padded with weight 0, so one compiled function serves all)."""

  def __init__(self, model: Layer, arrays: tuple, metrics: dict[str, Layer] | None = None, *, batch_size: int = 512):
    self.model, self.metrics = model, metrics if metrics is not None else default_metrics()
    n = len(arrays[0])
    size = min(batch_size, n)
    count = -(-n // size)
    pad = lambda a: np.concatenate([a, np.zeros((count * size - n,) + a.shape[1:], a.dtype)])
    weights = pad(np.ones(n, np.float32))
    self.batches = [tuple(pad(np.asarray(a))[i * size:(i + 1) * size] for a in arrays) +
                    (weights[i * size:(i + 1) * size],) for i in range(count)]
    self._fn = jax.jit(self._batch_metrics)

  def _batch_metrics(self, params, model_state, batch):
    inputs, rest = split_batch(self.model, batch)
    outputs, _ = self.model.apply(params, model_state, inputs, train=False)
    return {name: layer.apply({}, {}, loss_inputs(layer, self.model, outputs, rest))[0]
            for name, layer in self.metrics.items()}

  def __call__(self, params, model_state) -> dict[str, float]:
    totals, count = {}, 0.0
    for batch in self.batches:
      weight = float(batch[-1].sum())
      values = self._fn(params, model_state, batch)
      totals = {k: totals.get(k, 0.0) + float(v) * weight for k, v in values.items()}
      count += weight
    return {k: v / count for k, v in totals.items()}


def client_data(train_data: Stage, label_field: int = -1) -> ClientData:
  """`train_data`'s examples split into clients by `split_clients` (configured in gin) and packed."""
  arrays = read_examples(train_data)
  return pack_clients(arrays, split_clients(arrays[label_field]))


@gin.configurable(module="combinax.federated")
class FederatedRun:
  """A federated run (what `combinax-federated` runs).

  Args:
    output_dir: checkpoints (`step_XXXXXXXX/`, numbered by round), `config.gin`, `metrics.jsonl` (its `step` is the
      round), TensorBoard files.
    model: a layer, or a function of `mode` (e.g. `@DigitsCNN`); loss_layer: a weighted loss (default weighted
      cross-entropy): client batches are (*fields, weights).
    train_data: a finite pipeline of examples (e.g. `@image_examples()`), split by `split_clients`;
      label_field: which field `split_clients` reads the labels from.
    eval_data: examples the global model is evaluated on every `eval_every` rounds (and at the end) by `metrics`.
    options: `FedAvgOptions` (clients per round, local epochs and batch size, execution).
    client_optimizer, client_learning_rate: an optax factory taking `learning_rate` (default `optax.sgd`).
    server_optimizer, server_learning_rate: None (plain FedAvg) or an optax factory (FedAvgM: `@optax.sgd` with a
      scoped `momentum`; FedAdam: `@optax.adam`).
    rounds: rounds in total (a resumed run goes on to it); checkpoint_every, keep_checkpoints; seed: the model's
      initialisation and every round's client sampling and local shuffling.
  """

  def __init__(self, output_dir: str | None = None, model: Layer | Callable = gin.REQUIRED,
               train_data: Stage = gin.REQUIRED, eval_data: Stage | None = None, loss_layer: Layer | None = None,
               options: FedAvgOptions | None = None, client_optimizer: Callable = optax.sgd,
               client_learning_rate: float = 0.05, server_optimizer: Callable | None = None,
               server_learning_rate: float = 1.0, rounds: int = 100, eval_every: int = 10,
               checkpoint_every: int = 10, keep_checkpoints: int = 3, seed: int = 0, label_field: int = -1,
               metrics: dict[str, Layer] | None = None, eval_batch_size: int = 512, progress: bool | None = None):
    if output_dir is None:
      raise FederatedError("FederatedRun: output_dir is required (pass --output_dir to combinax-federated)")
    for name, value in (("rounds", rounds), ("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
      if not isinstance(value, int) or value < 1:
        raise FederatedError(f"FederatedRun.{name}: expected an int >= 1, got {value!r}")
    self.output_dir = Path(output_dir)
    self.model = model if isinstance(model, Layer) else model(mode="train")
    self.train_data, self.eval_data, self.label_field = train_data, eval_data, label_field
    self.loss_layer = loss_layer if loss_layer is not None else cl.WeightedCategoryCrossEntropy()
    self.options = options if options is not None else FedAvgOptions()
    self.client_optimizer = client_optimizer(learning_rate=client_learning_rate)
    self.server_optimizer = None if server_optimizer is None else server_optimizer(learning_rate=server_learning_rate)
    self.rounds, self.eval_every, self.checkpoint_every = rounds, eval_every, checkpoint_every
    self.seed, self.metrics, self.eval_batch_size, self.progress = seed, metrics, eval_batch_size, progress
    self.session = RunSession(self.output_dir, keep=keep_checkpoints, checkpoint_every=checkpoint_every,
                              fingerprints={"clients": "the clients' data (the split or the examples)"},
                              extendable=("FederatedRun.rounds",))

  def build(self) -> tuple[FedAvg, ClientData, ServerState]:
    """The algorithm, the client data and the fresh server state of round 0."""
    clients = client_data(self.train_data, self.label_field)
    fedavg = FedAvg(self.model, self.loss_layer, self.client_optimizer, options=self.options,
                    server_optimizer=self.server_optimizer)
    return fedavg, clients, fedavg.init(jax.random.key(self.seed), clients)

  def _record(self, clients: ClientData) -> dict:
    """What this run is, kept in each checkpoint: its gin configuration and a fingerprint of its clients' data."""
    digest = hashlib.sha256()
    for array in (*clients.fields, clients.weights):
      digest.update(np.ascontiguousarray(array).tobytes())
    return {"config": gin.config_str(), "model": str(self.model), "clients": digest.hexdigest()}

  def run(self, *, allow_config_change: bool = False) -> ServerState:
    """Runs rounds until `rounds` (resuming from the newest checkpoint, `RunSession.resume`); returns the final
    server state."""
    with self.session.held():
      return self._run(allow_config_change)

  def _run(self, allow_config_change: bool) -> ServerState:
    fedavg, clients, fresh = self.build()
    record = self._record(clients)
    resumed = self.session.resume(fresh, record, allow_change=allow_config_change)
    server, notes = (fresh, []) if resumed is None else (ServerState(*resumed.tree), resumed.notes)
    self.session.start(record)
    evaluator = None if self.eval_data is None else Evaluator(self.model, read_examples(self.eval_data),
                                                              self.metrics, batch_size=self.eval_batch_size)
    start = int(server.round)
    logger = self.session.logger(self.rounds, start, progress=self.progress)
    try:
      if start:
        notes.insert(0, f"resumed from round {start} ({self.session.latest()})")
      for note in notes:
        logger.message(note)
      for r in range(start + 1, self.rounds + 1):
        server, metrics = fedavg.round(server, clients)
        if int(metrics["bad_clients"]):
          raise TrainingError(f"round {r}: {int(metrics['bad_clients'])} client(s) met a non-finite loss or gradient "
                              f"in local training; the run stopped. The last good checkpoint is "
                              f"{self.session.latest() or 'none'}")
        logger.log(r, {"loss": metrics["loss"], "examples": metrics["examples"]})
        evaluated = {}
        if evaluator is not None and (r % self.eval_every == 0 or r == self.rounds):
          evaluated = evaluator(server.params, server.state)
          logger.log(r, evaluated, prefix="eval")
        if self.session.due(r, self.rounds):
          self.session.save(r, server, {"metrics": {f"eval/{k}": v for k, v in evaluated.items()}}, record)
    finally:
      logger.close()
    return server
