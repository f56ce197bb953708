"""The federated recipe: it runs from its gin file, resumes bit for bit, refuses another configuration, and its
command line says what is wrong in one line."""

import subprocess
import sys
from pathlib import Path

import gin
import jax
import numpy as np
import pytest

import combinax.federated  # noqa: F401  (registers the federated configurables)
from combinax.federated.run import FederatedRun
from combinax.store.logging import read_metrics
from combinax.store.rundir import RunDirectoryError
from combinax.cli.frame import parse_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs" / "fedavg_digits.gin")
# The recipe with a small MLP, few clients and a server optimizer with state (FedAvgM), so that resuming must
# restore the server optimizer's momentum too.
SMALL = ["FederatedRun.model = @MLP", "MLP.layer_widths = (16, 10)", "split_clients.n_clients = 8",
         "FedAvgOptions.clients_per_round = 3", "FedAvgOptions.local_epochs = 1", "FedAvgOptions.local_batch_size = 32",
         "FederatedRun.server_optimizer = @server/optax.sgd", "server/optax.sgd.momentum = 0.9",
         "FederatedRun.eval_every = 2", "FederatedRun.checkpoint_every = 2"]


@pytest.fixture
def recipe():
  gin.clear_config()
  parse_config([RECIPE], SMALL)
  yield
  gin.clear_config()


def leaves(server):
  server = server._replace(rng=jax.random.key_data(server.rng))
  return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(server)]


def logged(output_dir):
  return [{k: v for k, v in record.items() if k != "steps_per_sec"} for record in read_metrics(output_dir)]


def test_a_resumed_run_continues_bit_for_bit_as_if_it_had_never_stopped(recipe, tmp_path):
  whole = FederatedRun(output_dir=str(tmp_path / "whole"), rounds=4).run()
  FederatedRun(output_dir=str(tmp_path / "stopped"), rounds=2).run()   # stops after round 2 (its checkpoint)
  assert [p.name for p in (tmp_path / "stopped").glob("step_*")] == ["step_00000002"]
  resumed = FederatedRun(output_dir=str(tmp_path / "stopped"), rounds=4).run()
  assert int(resumed.round) == 4 and jax.tree_util.tree_leaves(resumed.opt_state)   # FedAvgM: momentum in state
  assert all(np.array_equal(a, b) for a, b in zip(leaves(whole), leaves(resumed)))
  assert logged(tmp_path / "whole") == logged(tmp_path / "stopped")
  assert [r["step"] for r in logged(tmp_path / "whole") if "eval/accuracy" in r] == [2, 4]
  assert (tmp_path / "stopped" / "config.gin").exists() and (tmp_path / "stopped" / "operative_config.gin").exists()

  with gin.unlock_config():
    gin.parse_config("FederatedRun.client_learning_rate = 0.2")
  with pytest.raises(RunDirectoryError, match=r"differs from the one step_00000004 was trained with: "
                                              r"FederatedRun.client_learning_rate: 0.1 -> 0.2"):
    FederatedRun(output_dir=str(tmp_path / "stopped"), rounds=6).run()


def test_a_bad_recipe_value_fails_in_one_line_naming_it(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "combinax.cli.federated", f"--config_file={RECIPE}",
       "--config=split_clients.scheme = 'random'", f"--output_dir={tmp_path / 'run'}"],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "combinax-federated: split_clients: scheme must be one of ('iid', 'dirichlet', " \
      "'pathological'), got 'random'" in lines[0]
  assert not list((tmp_path / "run").glob("step_*"))


@pytest.mark.parametrize("binding, message", [
    ("split_clients.n_clients = 0", "combinax-federated: split_clients: n_clients must be an integer >= 1, got 0"),
    ("train/image_examples.corpus = 'nope'", "combinax-federated: DataError: unknown corpus 'nope'; available: "),
])
def test_a_run_refused_as_it_starts_leaves_no_directory_behind(tmp_path, binding, message):
  result = subprocess.run(
      [sys.executable, "-m", "combinax.cli.federated", f"--config_file={RECIPE}", f"--config={binding}",
       f"--output_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode in (1, 2), result.stderr
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(message), line
  assert not (tmp_path / "run").exists()   # (it held only its .lock)
