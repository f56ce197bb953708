"""The Flower adapter: a federated recipe (`FederatedRun` in gin) run as real separate processes over Flower (`flwr`),
its server running Flower's FedAvg and each client a combinax model training with `FedAvg.client_update`.

    python -m combinax.federated.flower server --config_file=configs/fedavg_digits.gin --output_dir=runs/flower \\
        --address=127.0.0.1:8080
    python -m combinax.federated.flower client --config_file=configs/fedavg_digits.gin --output_dir=runs/flower \\
        --address=127.0.0.1:8080 --client_id=0          # ... one process per client, ids 0 to K - 1

Needs `pip install 'combinax[federated]'`; importing this module does not import flwr (it is imported when a server
or client starts), so the rest of combinax never needs it.

What travels: the params and the model state as numpy arrays in a fixed order, their `combinax.paths` sorted as
pytrees flatten them (`exchange_paths`); both sides check the count and every shape against the model's. Each
client process builds the recipe's split and keeps its own shard (a real deployment's client reads its own data),
and trains exactly as a simulated round trains client `client_id` (`FedAvg.client_update`, its key from the run's
seed, the round and its id), so with the same clients in each round Flower gives combinax's own FedAvg's params
(tests/federated). Flower samples the round's clients itself (`clients_per_round` of the K). A server optimizer
of the recipe (FedAvgM, FedAdam) runs on the server, on Flower's weighted mean, as in `FedAvg.server_update`.
The server writes its final state as a combinax checkpoint (`step_<rounds>`) in `output_dir`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from combinax.federated.fedavg import FederatedError, ServerState, round_keys
from combinax.paths import leaves_with_paths

_MISSING = ("the Flower adapter needs flwr: pip install 'combinax[federated]' (or pip install flwr); the simulated "
            "federated runs (combinax-federated) do not")


def _flwr():
  try:
    import flwr
  except ImportError as e:
    raise FederatedError(f"{_MISSING} ({e})") from None
  return flwr


def exchange_paths(params, model_state) -> list[str]:
  """The order in which arrays travel: the paths of `{"params": ..., "state": ...}`."""
  return [path for path, _ in leaves_with_paths({"params": params, "state": model_state})]


def to_arrays(params, model_state) -> list[np.ndarray]:
  """Params and model state as numpy arrays, in `exchange_paths` order."""
  return [np.asarray(leaf) for _, leaf in leaves_with_paths({"params": params, "state": model_state})]


def from_arrays(arrays: list, params, model_state):
  """(params, model_state) shaped like the templates from arrays in `exchange_paths` order; a FederatedError names
  the first path whose array does not fit."""
  template = {"params": params, "state": model_state}
  flat = leaves_with_paths(template)
  if len(arrays) != len(flat):
    raise FederatedError(f"Flower exchange: expected {len(flat)} arrays (the paths {[p for p, _ in flat][:3]}...), "
                         f"got {len(arrays)}; both sides must run the same model")
  values = []
  for (path, leaf), array in zip(flat, arrays):
    array = np.asarray(array)
    if array.shape != tuple(leaf.shape):
      raise FederatedError(f"Flower exchange: {path}: expected shape {tuple(leaf.shape)}, got {array.shape}")
    values.append(array.astype(leaf.dtype))   # (Flower averages in its own dtype; the model's comes back)
  tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), values)
  return tree["params"], tree["state"]


def client_round_key(run_rng, round_index: int, client_id: int):
  """The key a simulated round gives client `client_id` in round `round_index` (0-based)."""
  return jax.random.fold_in(round_keys(run_rng, round_index)[1], client_id)


def make_client(fedavg, clients, fresh: ServerState, *, client_id: int):
  """A Flower `NumPyClient` training client `client_id` of `clients` as the simulated rounds do."""
  flwr = _flwr()
  if not 0 <= client_id < clients.n_clients:
    raise FederatedError(f"--client_id: expected 0 to {clients.n_clients - 1} (the recipe's clients), got {client_id}")
  fields = tuple(np.asarray(f[client_id]) for f in clients.fields)
  weights = np.asarray(clients.weights[client_id])
  update = jax.jit(fedavg.client_update)

  class Client(flwr.client.NumPyClient):

    def get_parameters(self, config):
      return to_arrays(fresh.params, fresh.state)

    def fit(self, parameters, config):
      params, model_state = from_arrays(parameters, fresh.params, fresh.state)
      key = client_round_key(fresh.rng, int(config["round"]), client_id)
      params, model_state, metrics = update(params, model_state, fields, weights, key)
      if bool(metrics["bad"]):
        raise FederatedError(f"client {client_id}, round {config['round']}: a non-finite loss or gradient")
      return to_arrays(params, model_state), int(round(float(metrics["examples"]))), {"loss": float(metrics["loss"])}

  return Client()


def make_strategy(fedavg, n_clients: int, fresh: ServerState):
  """Flower's FedAvg over `n_clients` clients (`clients_per_round` a round), sending each client the 0-based round,
  with the recipe's server optimizer applied to Flower's weighted mean. Its `final` attribute holds the latest
  (params, model state, server optimizer state)."""
  flwr = _flwr()
  from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
  m = fedavg.options.clients_per_round
  server_update = jax.jit(fedavg.server_update)

  class Strategy(flwr.server.strategy.FedAvg):
    final = (fresh.params, fresh.state, fresh.opt_state)

    def aggregate_fit(self, server_round, results, failures):
      if failures:   # a round without every sampled client is not the round the recipe describes
        raise FederatedError(f"Flower round {server_round}: {len(failures)} client(s) failed: {failures[0]!r}")
      aggregated, metrics = super().aggregate_fit(server_round, results, failures)
      mean_params, mean_state = from_arrays(parameters_to_ndarrays(aggregated), fresh.params, fresh.state)
      params, _, opt_state = self.final
      params, opt_state = server_update(params, mean_params, opt_state)
      self.final = (params, mean_state, opt_state)
      return ndarrays_to_parameters(to_arrays(params, mean_state)), metrics

  return Strategy(fraction_fit=m / n_clients, min_fit_clients=m, min_available_clients=n_clients,
                  fraction_evaluate=0.0, min_evaluate_clients=0, accept_failures=False,
                  initial_parameters=ndarrays_to_parameters(to_arrays(fresh.params, fresh.state)),
                  on_fit_config_fn=lambda server_round: {"round": server_round - 1})


def serve(run, *, address: str) -> Path:
  """Runs the Flower server for `run`'s rounds (a `FederatedRun`, configured); saves the final server state in its
  `output_dir` (returned)."""
  flwr = _flwr()
  from combinax.store import checkpoints
  fedavg, clients, fresh = run.build()
  strategy = make_strategy(fedavg, clients.n_clients, fresh)
  flwr.server.start_server(server_address=address, strategy=strategy,
                           config=flwr.server.ServerConfig(num_rounds=run.rounds))
  params, model_state, opt_state = strategy.final
  final = ServerState(params, model_state, opt_state, np.int32(run.rounds), fresh.rng)
  return checkpoints.save(run.output_dir, run.rounds, final, {"flower": {"address": address}})


def join(run, *, address: str, client_id: int, max_wait_s: float = 120.0):
  """Runs Flower client `client_id` of `run` (a `FederatedRun`, configured) until the server ends the run."""
  flwr = _flwr()
  fedavg, clients, fresh = run.build()
  client = make_client(fedavg, clients, fresh, client_id=client_id)
  flwr.client.start_client(server_address=address, client=client.to_client(), insecure=True,
                           max_wait_time=max_wait_s)


if __name__ == "__main__":   # `python -m combinax.federated.flower`: a command, whose code is on the command floor
  from combinax.cli.flower import main
  main()
