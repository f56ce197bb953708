"""FedAvg checked against the plain paths it replaces: centralised gradient descent, one client at a time, and the
three ways of running a round's clients."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from combinax import layers as cl
from combinax import federated as fed
from combinax.models import MLP
from combinax.train.step import TrainStep

LOSS = cl.WeightedCategoryCrossEntropy()


def features_and_labels(n=40, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 5)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)   # 3 classes a linear model can learn
  return x, y


def unequal_clients(x, y, sizes):
  """Consecutive blocks of the examples as clients of the given sizes."""
  bounds = np.cumsum([0, *sizes])
  return fed.pack_clients((x, y), [np.arange(a, b) for a, b in zip(bounds, bounds[1:])])


def max_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
             for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_fedavg_with_one_full_batch_local_step_equals_centralised_gradient_descent_after_5_rounds(caplog):
  x, y = features_and_labels(40)
  clients = unequal_clients(x, y, [4, 9, 12, 15])   # unequal: the weighted mean is what makes them agree
  model, lr = MLP((8, 3)), 0.5
  options = fed.FedAvgOptions(clients_per_round=4, local_epochs=1, local_batch_size=None)
  fedavg = fed.FedAvg(model, LOSS, optax.sgd(lr), options=options)
  server = fedavg.init(jax.random.key(3), clients)

  central = TrainStep(model, LOSS, optax.sgd(lr))
  state = central.init(jax.random.key(3), (x, y, np.ones(40, np.float32)))
  assert max_difference(state.params, server.params) == 0.0   # the same initialisation
  start = jax.tree_util.tree_map(np.asarray, server.params)
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    for _ in range(5):
      server, _ = fedavg.round(server, clients)
      state, _ = central(state, (x, y, np.ones(40, np.float32)))
  assert int(server.round) == 5 and int(state.step) == 5
  # fixed shapes and placements: one compiled round serves all five
  assert len([r for r in caplog.records if "Compiling jit(_round_fn)" in r.getMessage()]) == 1
  assert max_difference(state.params, server.params) <= 1e-6
  assert max_difference(state.params, start) > 1e-2   # it did train


def test_fedsgd_is_fedavg_with_one_epoch_of_one_full_batch():
  options = fed.fedsgd_options(clients_per_round=7, execution="sequential")
  assert (options.local_epochs, options.local_batch_size, options.clients_per_round, options.execution) == \
      (1, None, 7, "sequential")


def test_vmap_sequential_and_device_sharded_clients_agree():
  x, y = features_and_labels(60, seed=1)
  clients = fed.pack_clients((x, y), fed.split_clients(y, 6, scheme="dirichlet", alpha=1.0, seed=2))
  results = {}
  for execution in fed.EXECUTIONS:   # 5 clients a round: the sharded run pads them to the 8 devices
    options = fed.FedAvgOptions(clients_per_round=5, local_epochs=2, local_batch_size=3, execution=execution)
    fedavg = fed.FedAvg(MLP((8, 3)), LOSS, optax.adam(0.05), options=options,
                        server_optimizer=optax.sgd(1.0, momentum=0.5))
    server = fedavg.init(jax.random.key(0), clients)
    sampled = []
    for _ in range(2):
      server, metrics = fedavg.round(server, clients)
      sampled.append(np.asarray(metrics["clients"]).tolist())
    results[execution] = server, sampled, float(metrics["loss"])
  assert len(jax.devices()) == 8
  vmap, sampled, loss = results["vmap"]
  assert sampled[0] != sampled[1]   # the rounds sampled different clients
  for execution in ("sequential", "sharded"):
    other, other_sampled, other_loss = results[execution]
    assert other_sampled == sampled
    assert max_difference(vmap.params, other.params) <= 1e-6
    assert max_difference(vmap.opt_state, other.opt_state) <= 1e-6
    assert abs(loss - other_loss) <= 1e-6
  assert vmap.round == 2 and max_difference(vmap.params, fedavg.init(jax.random.key(0), clients).params) > 1e-2


def test_the_weighted_mean_is_exact_for_unequal_client_sizes_and_padding_changes_no_client():
  x, y = features_and_labels(40, seed=2)
  sizes = [2, 5, 11, 3]
  clients = unequal_clients(x, y, sizes)
  options = fed.FedAvgOptions(clients_per_round=4, local_epochs=2, local_batch_size=4)
  fedavg = fed.FedAvg(MLP((8, 3)), LOSS, optax.sgd(0.3), options=options)
  server = fedavg.init(jax.random.key(1), clients)
  after, metrics = fedavg.round(server, clients)

  # each client alone, as the round trains it (its key: fold_in of the round's key with its index), padded further
  _, train_key = fed.round_keys(server.rng, 0)
  update = jax.jit(fedavg.client_update)
  wider = fed.pack_clients((x, y), [np.arange(a, a + n) for a, n in zip(np.cumsum([0, *sizes[:-1]]), sizes)],
                           pad_to=19)
  alone = []
  for k in range(4):
    key = jax.random.fold_in(train_key, k)
    params, _, m = update(server.params, server.state, tuple(f[k] for f in clients.fields), clients.weights[k], key)
    padded, _, _ = update(server.params, server.state, tuple(f[k] for f in wider.fields), wider.weights[k], key)
    assert float(m["examples"]) == sizes[k]
    assert max_difference(params, padded) <= 1e-7   # 8 more padding slots: the same real batches, no extra step
    alone.append(jax.tree_util.tree_map(lambda p: np.asarray(p, np.float64), params))
  exact = jax.tree_util.tree_map(lambda *ps: sum(n * p for n, p in zip(sizes, ps)) / sum(sizes), *alone)
  unweighted = jax.tree_util.tree_map(lambda *ps: sum(ps) / len(ps), *alone)
  assert float(metrics["examples"]) == sum(sizes)
  assert max_difference(after.params, exact) <= 1e-6
  assert max_difference(after.params, unweighted) > 1e-3   # (so the test can tell the two means apart)


def test_a_server_optimizer_steps_on_the_clients_mean_as_a_pseudo_gradient():
  x, y = features_and_labels(40, seed=3)
  clients = unequal_clients(x, y, [10, 10, 20])
  options = fed.FedAvgOptions(clients_per_round=3, local_epochs=1, local_batch_size=5)
  plain = fed.FedAvg(MLP((8, 3)), LOSS, optax.sgd(0.2), options=options)
  half = fed.FedAvg(MLP((8, 3)), LOSS, optax.sgd(0.2), options=options, server_optimizer=optax.sgd(0.5))
  start = plain.init(jax.random.key(0), clients)
  mean = plain.round(start, clients)[0].params
  stepped = half.round(half.init(jax.random.key(0), clients), clients)[0].params
  # sgd(0.5) on (global - mean): halfway from the global params to the clients' mean
  halfway = jax.tree_util.tree_map(lambda g, m: (g + m) / 2, start.params, mean)
  assert max_difference(stepped, halfway) <= 1e-6


def test_misused_pieces_fail_with_one_line_naming_the_option_expected_and_actual():
  x, y = features_and_labels(20)
  clients = unequal_clients(x, y, [10, 10])
  with pytest.raises(fed.FederatedError, match=r"FedAvgOptions.execution: expected one of .*got 'gpu'"):
    fed.FedAvgOptions(execution="gpu")
  with pytest.raises(fed.FederatedError, match=r"FedAvgOptions.local_batch_size: expected an int >= 1 .*got 0"):
    fed.FedAvgOptions(local_batch_size=0)
  with pytest.raises(fed.FederatedError, match=r"the loss CategoryCrossEntropy takes 2 input\(s\) but gets 3 .*"
                                               r"WeightedCategoryCrossEntropy"):
    fed.FedAvg(MLP((3,)), cl.CategoryCrossEntropy(), optax.sgd(0.1)).init(jax.random.key(0), clients)
  with pytest.raises(fed.FederatedError, match=r"clients_per_round: expected at most the 2 clients, got 10"):
    fed.FedAvg(MLP((3,)), LOSS, optax.sgd(0.1)).init(jax.random.key(0), clients)
  for error in (fed.FederatedError, fed.SplitError):
    assert issubclass(error, ValueError)


def test_a_client_whose_loss_is_not_finite_is_counted_and_keeps_its_last_finite_params():
  x, y = features_and_labels(20)
  x[15] = np.nan   # one bad example in the second client's data
  clients = unequal_clients(x, y, [10, 10])
  options = fed.FedAvgOptions(clients_per_round=2, local_epochs=1, local_batch_size=None)
  fedavg = fed.FedAvg(MLP((3,)), LOSS, optax.sgd(0.1), options=options)
  start = fedavg.init(jax.random.key(0), clients)
  server, metrics = fedavg.round(start, clients)
  assert int(metrics["bad_clients"]) == 1   # (FederatedRun stops the run on it, naming the round)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(server.params))
  assert max_difference(server.params, start.params) > 0   # the good client trained
