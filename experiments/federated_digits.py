"""FedAvg vs FedSGD on the bundled digits, pathological non-IID (McMahan et al., 2017, Table 2 in miniature).

The 1,438 training images are sorted by label, cut into 2K shards and dealt 2 to each of K clients (most clients
hold 2 digits); each round samples `--clients_per_round` of them. For each algorithm, every client learning rate
of its grid is run from the same initialisation, and the best one (fewest rounds) is reported:

  FedAvg   E = 5 local epochs of batches of B = 10 (`--local_epochs`, `--local_batch_size`), client SGD
  FedSGD   E = 1, one full batch per client (B = inf), client SGD: one gradient step of the round's data

Rounds to a target = the first round whose global model reaches that test accuracy (each of `--targets`; evaluated
every round on the 359 test images). Centralised = the same model trained with minibatch SGD (B = 10) on all the
training data for `--central_epochs` epochs, best learning rate of its grid. FedAvg's final accuracy is after
`--fedavg_rounds` rounds, best learning rate of its grid.

    python experiments/federated_digits.py [--clients 50 --clients_per_round 10 --targets 0.95,0.97] [--json out.json]
    python experiments/federated_digits.py --scheme=iid      # the same over an IID split, for comparison

Run by hand, not by CI. It prints one line per run and a summary table.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from combinax import federated as fed
from combinax import layers as cl
from combinax.federated.run import Evaluator
from combinax.models import MLP, DigitsCNN
from combinax.train.step import TrainStep

LOSS = cl.WeightedCategoryCrossEntropy()
# "cnn": the project's small digits CNN (13,706 params); "mlp": the paper's "2NN" shape (2 hidden layers of 200 ReLU
# units) on the 64 pixels.
MODELS = {"cnn": DigitsCNN, "mlp": lambda: MLP((200, 200, 10))}


def grid(text: str) -> list[float]:
  return [float(v) for v in text.split(",")]


def first_round_at(curve, target):
  """The first round (1-based) whose accuracy is >= target, or None."""
  return next((r for r, accuracy in enumerate(curve, 1) if accuracy >= target), None)


class Setup(NamedTuple):
  """What every run of the experiment shares."""
  model: Any
  train: tuple            # (images, labels) of all the training data
  clients: fed.ClientData
  evaluator: Evaluator    # test accuracy
  targets: list
  seed: int


def run_federated(setup: Setup, name: str, options: fed.FedAvgOptions, *, lr: float, rounds: int,
                  stop_at_target: bool) -> dict:
  """Rounds to reach each target (None if not), final accuracy, the accuracy curve and seconds of one run."""
  fedavg = fed.FedAvg(setup.model, LOSS, optax.sgd(lr), options=options)
  server = fedavg.init(jax.random.key(setup.seed), setup.clients)
  curve, start = [], time.perf_counter()
  for _ in range(rounds):
    server, metrics = fedavg.round(server, setup.clients)
    curve.append(setup.evaluator(server.params, server.state)["accuracy"])
    if not np.isfinite(float(metrics["loss"])) or (stop_at_target and curve[-1] >= max(setup.targets)):
      break
  seconds = time.perf_counter() - start
  targets = setup.targets
  reached = {t: first_round_at(curve, t) for t in targets}
  print(f"{name:7s} lr {lr:<6g} rounds to " + ", ".join(f"{t:.0%}: {reached[t] or f'> {len(curve)}'}" for t in targets)
        + f"   accuracy after {len(curve)} rounds {curve[-1]:.4f} (best {max(curve):.4f})   {seconds:.0f} s",
        flush=True)
  return {"lr": lr, "rounds_to_target": {str(t): r for t, r in reached.items()}, "rounds_run": len(curve),
          "final_accuracy": curve[-1], "best_accuracy": max(curve), "seconds": seconds, "curve": curve}


def run_central(setup: Setup, *, lr: float, epochs: int, batch_size: int = 10) -> dict:
  """Test accuracy of minibatch SGD on all the training data (shuffled each epoch, the last partial batch dropped)."""
  step = TrainStep(setup.model, LOSS, optax.sgd(lr))
  arrays, n = setup.train, len(setup.train[0])
  weights = np.ones(batch_size, np.float32)
  state = step.init(jax.random.key(setup.seed), (arrays[0][:batch_size], arrays[1][:batch_size], weights))
  order_rng = np.random.default_rng(setup.seed)
  for _ in range(epochs):
    order = order_rng.permutation(n)
    for i in range(n // batch_size):
      take = order[i * batch_size:(i + 1) * batch_size]
      state, _ = step(state, (arrays[0][take], arrays[1][take], weights))
  accuracy = setup.evaluator(state.params, state.state)["accuracy"]
  print(f"central lr {lr:<6g} accuracy after {epochs} epochs {accuracy:.4f}", flush=True)
  return {"lr": lr, "accuracy": accuracy}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
  parser.add_argument("--clients", type=int, default=50)
  parser.add_argument("--scheme", choices=fed.SCHEMES, default="pathological", help="how the clients' data is split")
  parser.add_argument("--alpha", type=float, default=0.5, help="--scheme=dirichlet: its concentration")
  parser.add_argument("--clients_per_round", type=int, default=10)
  parser.add_argument("--targets", type=grid, default=grid("0.95,0.97"),
                      help="test accuracies to count rounds to (FedSGD stops at the highest)")
  parser.add_argument("--local_epochs", type=int, default=5, help="FedAvg's E")
  parser.add_argument("--local_batch_size", type=int, default=10, help="FedAvg's B")
  parser.add_argument("--fedavg_rounds", type=int, default=200)
  parser.add_argument("--fedsgd_rounds", type=int, default=2000)
  parser.add_argument("--fedavg_lrs", type=grid, default=grid("0.05,0.1,0.2"))
  parser.add_argument("--fedsgd_lrs", type=grid, default=grid("0.2,0.3,0.5,0.7"))   # (1.0 diverges)
  parser.add_argument("--central_lrs", type=grid, default=grid("0.05,0.1"))
  parser.add_argument("--central_epochs", type=int, default=30)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="write every number (and the accuracy curves) here")
  args = parser.parse_args()

  train = fed.read_examples(fed.image_examples("digits", "train"))
  test = fed.read_examples(fed.image_examples("digits", "test"))
  model = MODELS[args.model]()
  shards = fed.split_clients(train[1], args.clients, scheme=args.scheme, alpha=args.alpha, shards_per_client=2,
                             seed=args.seed)
  clients = fed.pack_clients(train, shards)
  setup = Setup(model, train, clients, Evaluator(model, test), args.targets, args.seed)
  labels_per_client = [len(np.unique(train[1][s])) for s in shards]
  print(f"{args.model} on digits: {len(train[0])} train / {len(test[0])} test; {args.clients} clients "
        f"({args.scheme}: {np.mean(labels_per_client):.2f} labels a client on average, "
        f"{clients.sizes.min()}-{clients.sizes.max()} examples); {args.clients_per_round} clients a round; "
        f"devices: {jax.device_count()} {jax.default_backend()}", flush=True)

  fedavg_options = fed.FedAvgOptions(clients_per_round=args.clients_per_round, local_epochs=args.local_epochs,
                                     local_batch_size=args.local_batch_size)
  fedsgd_options = fed.fedsgd_options(clients_per_round=args.clients_per_round)
  results = {"args": vars(args), "fedavg": [], "fedsgd": [], "central": []}
  for lr in args.fedavg_lrs:
    results["fedavg"].append(run_federated(setup, "FedAvg", fedavg_options, lr=lr, rounds=args.fedavg_rounds,
                                           stop_at_target=False))
  for lr in args.fedsgd_lrs:
    results["fedsgd"].append(run_federated(setup, "FedSGD", fedsgd_options, lr=lr, rounds=args.fedsgd_rounds,
                                           stop_at_target=True))
  for lr in args.central_lrs:
    results["central"].append(run_central(setup, lr=lr, epochs=args.central_epochs))

  def best(runs, target):
    reached = [(r["rounds_to_target"][str(target)], r["lr"]) for r in runs if r["rounds_to_target"][str(target)]]
    return min(reached) if reached else None

  central = max(r["accuracy"] for r in results["central"])
  final = max(r["final_accuracy"] for r in results["fedavg"])
  for target in args.targets:
    fedavg, fedsgd = best(results["fedavg"], target), best(results["fedsgd"], target)
    show = lambda run, budget: f"{run[0]} (lr {run[1]:g})" if run else f"not reached in {budget}"
    print(f"\nrounds to {target:.0%} test accuracy (best learning rate of each):")
    print(f"  FedAvg (E={args.local_epochs}, B={args.local_batch_size}):  {show(fedavg, args.fedavg_rounds)}")
    print(f"  FedSGD (E=1, B=inf): {show(fedsgd, args.fedsgd_rounds)}")
    if fedavg and fedsgd:
      print(f"  FedAvg needs {fedavg[0] / fedsgd[0]:.3f} of FedSGD's rounds ({fedsgd[0] / fedavg[0]:.1f}x fewer)")
  print(f"final accuracy: FedAvg {final:.4f} after {args.fedavg_rounds} rounds (best lr); centralised {central:.4f} "
        f"({args.central_epochs} epochs of SGD, B=10, best lr); difference {100 * (central - final):.2f} points")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f)


if __name__ == "__main__":
  main()
