"""The Flower adapter: a server and two clients as separate processes on loopback give combinax's own FedAvg's
params. Skipped, saying why, where flwr is not installed (it is the optional extra `combinax[federated]`)."""

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import gin
import jax
import numpy as np
import pytest

import combinax.federated  # noqa: F401
from combinax.federated import flower
from combinax.federated.fedavg import FederatedError
from combinax.federated.run import FederatedRun
from combinax.store import checkpoints
from combinax.cli.frame import parse_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs" / "fedavg_digits.gin")
# 2 clients, both in each of 2 rounds, and a server optimizer with state (FedAvgM) that runs on Flower's mean
BINDINGS = ["FederatedRun.model = @MLP", "MLP.layer_widths = (16, 10)", "split_clients.n_clients = 2",
            "FedAvgOptions.clients_per_round = 2", "FedAvgOptions.local_epochs = 1",
            "FedAvgOptions.local_batch_size = 64", "FederatedRun.rounds = 2",
            "FederatedRun.server_optimizer = @server/optax.sgd", "server/optax.sgd.momentum = 0.9",
            "FederatedRun.server_learning_rate = 0.5"]
HAS_FLWR = importlib.util.find_spec("flwr") is not None


def test_the_adapter_module_needs_flwr_only_when_a_server_or_client_starts():
  # importing it (as every test of the docs does) must work without the optional extra
  assert flower.exchange_paths({"b": np.zeros(2), "a": np.zeros(1)}, {}) == ["params/a", "params/b"]
  if not HAS_FLWR:
    with pytest.raises(FederatedError, match=r"needs flwr: pip install 'combinax\[federated\]'"):
      flower._flwr()


def test_exchanged_arrays_are_checked_against_the_models_paths_and_shapes():
  params = {"Dense_0": {"bias": np.zeros(3, np.float32), "kernel": np.zeros((2, 3), np.float32)}}
  arrays = flower.to_arrays(params, {})
  assert [a.shape for a in arrays] == [(3,), (2, 3)]
  back, _ = flower.from_arrays([a + 1 for a in arrays], params, {})
  assert back["Dense_0"]["kernel"].dtype == np.float32 and float(back["Dense_0"]["kernel"][0, 0]) == 1.0
  with pytest.raises(FederatedError, match=r"params/Dense_0/kernel: expected shape \(2, 3\), got \(3, 2\)"):
    flower.from_arrays([arrays[0], np.zeros((3, 2))], params, {})
  with pytest.raises(FederatedError, match=r"expected 2 arrays .* got 1"):
    flower.from_arrays(arrays[:1], params, {})


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.skipif(not HAS_FLWR, reason="flwr is not installed: the Flower adapter is the optional extra "
                                         "combinax[federated] (pip install 'combinax[federated]')")
def test_two_flower_clients_in_separate_processes_give_combinax_fedavgs_params(tmp_path):
  address = f"127.0.0.1:{free_port()}"
  common = [f"--config_file={RECIPE}", *[f"--config={b}" for b in BINDINGS], f"--output_dir={tmp_path / 'flower'}",
            f"--address={address}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  command = [sys.executable, "-m", "combinax.federated.flower"]
  logs = [open(tmp_path / f"{name}.log", "w") for name in ("server", "client0", "client1")]
  processes = [subprocess.Popen(command + ["server", *common], stdout=logs[0], stderr=subprocess.STDOUT, env=env,
                                cwd=ROOT)]
  try:
    time.sleep(1.0)   # (clients retry until the server listens, up to their max wait)
    processes += [subprocess.Popen(command + ["client", *common, f"--client_id={k}"], stdout=logs[k + 1],
                                   stderr=subprocess.STDOUT, env=env, cwd=ROOT) for k in range(2)]
    deadline = time.monotonic() + 240
    for process in processes:
      process.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for process in processes:   # a timed-out or failed run leaves nothing behind
      if process.poll() is None:
        process.kill()
        process.wait()
    for log in logs:
      log.close()
  output = "\n".join((tmp_path / f"{n}.log").read_text()[-2000:] for n in ("server", "client0", "client1"))
  assert [p.returncode for p in processes] == [0, 0, 0], output

  gin.clear_config()
  try:
    parse_config([RECIPE], BINDINGS)
    run = FederatedRun(output_dir=str(tmp_path / "combinax"))
    fedavg, clients, server = run.build()
    start = server.params
    for _ in range(2):
      server, metrics = fedavg.round(server, clients)
      assert sorted(np.asarray(metrics["clients"]).tolist()) == [0, 1]
  finally:
    gin.clear_config()
  saved, _ = checkpoints.restore(checkpoints.latest(tmp_path / "flower"), server)
  assert int(saved.round) == 2
  for ours, theirs in zip(jax.tree_util.tree_leaves((server.params, server.opt_state)),
                          jax.tree_util.tree_leaves((saved.params, saved.opt_state))):
    assert np.max(np.abs(np.asarray(ours) - np.asarray(theirs))) <= 1e-6
  assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
             zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(saved.params))) > 1e-3
