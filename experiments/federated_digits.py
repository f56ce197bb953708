"""FedAvg vs FedSGD on the bundled digits, pathological non-IID (McMahan et al., 2017, Table 2 in miniature).

The 1,438 training images are sorted by label, cut into 2K shards and dealt 2 to each of K clients (most clients
hold 2 digits); each client then keeps `--val_fraction` of its own images aside (seeded), and those held-out images
of all clients are the validation set. Each round samples `--clients_per_round` clients, which train on the rest:

  FedAvg   E = 5 local epochs of batches of B = 10 (`--local_epochs`, `--local_batch_size`), client SGD
  FedSGD   E = 1, one full batch per client (B = inf), client SGD: one gradient step of the round's data

Learning rates are chosen on the validation set, never on the test set. For each seed and algorithm, every client
learning rate of its grid runs from the same initialisation, and each question takes the rate that is best on the
validation set: rounds to a target (fewest rounds to that validation accuracy; ties and rates that never reach it
by mean validation accuracy over the run) and final accuracy (mean validation accuracy over the last 10 rounds).
Where a question's best rate is the smallest or largest rate run, the grid is widened by a factor `--grid_factor`
on that side (up to `--max_widen` times), so every reported rate has a worse rate on both sides of it (a rate whose
loss is not finite counts as worst). Only then is the test set read: the rounds where the chosen rate's global model
first reaches each target *test* accuracy (both sets are evaluated every round), and its test accuracy after
`--fedavg_rounds` rounds.

Centralised = the same model trained with minibatch SGD (B = 10) on all the clients' training images for
`--central_epochs` epochs, its learning rate chosen the same way. It runs on one device, unsharded: a batch of 10
cannot be split over (say) 8 simulated devices, and B = 10 is FedAvg's client batch.

Each seed draws its own client split, validation images, initialisation and client sampling; the summary gives
every seed's numbers and their mean, standard deviation and range.

    python experiments/federated_digits.py [--seeds 0 1 2] [--json out.json]     # 12 min on 2 CPU cores
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
from combinax import sharding
from combinax.federated.run import Evaluator
from combinax.models import MLP, DigitsCNN
from combinax.train.step import TrainStep

LOSS = cl.WeightedCategoryCrossEntropy()
# "cnn": the project's small digits CNN (13,706 params); "mlp": the paper's "2NN" shape (2 hidden layers of 200 ReLU
# units) on the 64 pixels.
MODELS = {"cnn": DigitsCNN, "mlp": lambda: MLP((200, 200, 10))}
FINAL_WINDOW = 10     # rounds (or epochs) averaged for the final-accuracy choice: one round's 216 images move by 0.5%


def grid(text: str) -> list[float]:
  return [float(v) for v in text.split(",")]


def first_round_at(curve, target):
  """The first round (1-based) whose accuracy is >= target, or None."""
  return next((r for r, accuracy in enumerate(curve, 1) if accuracy >= target), None)


class Setup(NamedTuple):
  """What every run of one seed shares."""
  model: Any
  train: tuple            # (images, labels) of the clients' training images (validation images excluded)
  clients: fed.ClientData
  validation: Evaluator   # accuracy on the images the clients held out
  test: Evaluator         # accuracy on the test split, read only for the reported numbers
  targets: list
  seed: int


def hold_out(shards, fraction: float, seed: int):
  """Each client's shard split into (kept for training, held out for validation): a seeded `fraction` of its own
  examples, at least one, so the validation set has the clients' label mix."""
  rng = np.random.default_rng([seed, 1])
  kept, held = [], []
  for shard in shards:
    order = rng.permutation(shard)
    n = max(1, int(round(fraction * len(shard))))
    held.append(np.sort(order[:n]))
    kept.append(np.sort(order[n:]))
  return kept, np.concatenate(held)


def make_setup(args, seed: int) -> Setup:
  train = fed.read_examples(fed.image_examples("digits", "train"))
  test = fed.read_examples(fed.image_examples("digits", "test"))
  model = MODELS[args.model]()
  shards = fed.split_clients(train[1], args.clients, scheme=args.scheme, alpha=args.alpha, shards_per_client=2,
                             seed=seed)
  kept, held = hold_out(shards, args.val_fraction, seed)
  clients = fed.pack_clients(train, kept)
  pool = np.concatenate(kept)
  setup = Setup(model, tuple(a[pool] for a in train), clients, Evaluator(model, tuple(a[held] for a in train)),
                Evaluator(model, test), args.targets, seed)
  labels_per_client = [len(np.unique(train[1][s])) for s in shards]
  print(f"seed {seed}: {args.model} on digits: {len(pool)} client training / {len(held)} validation (held out by "
        f"the clients) / {len(test[0])} test; {args.clients} clients ({args.scheme}: "
        f"{np.mean(labels_per_client):.2f} labels a client on average, {clients.sizes.min()}-{clients.sizes.max()} "
        f"training examples); {args.clients_per_round} clients a round; devices: {jax.device_count()} "
        f"{jax.default_backend()}", flush=True)
  return setup


def run_federated(setup: Setup, name: str, options: fed.FedAvgOptions, *, lr: float, rounds: int,
                  stop_at_target: bool) -> dict:
  """Validation and test accuracy curves of one run. With `stop_at_target`, it stops once both have reached the
  highest target (what the rounds-to-target questions need)."""
  fedavg = fed.FedAvg(setup.model, LOSS, optax.sgd(lr), options=options)
  server = fedavg.init(jax.random.key(setup.seed), setup.clients)
  val, test, start, finite = [], [], time.perf_counter(), True
  for _ in range(rounds):
    server, metrics = fedavg.round(server, setup.clients)
    val.append(setup.validation(server.params, server.state)["accuracy"])
    test.append(setup.test(server.params, server.state)["accuracy"])
    finite = bool(np.isfinite(float(metrics["loss"])))
    if not finite or (stop_at_target and min(val[-1], max(test)) >= max(setup.targets)
                      and max(val) >= max(setup.targets)):
      break
  seconds = time.perf_counter() - start
  run = {"lr": lr, "finite": finite, "rounds_run": len(val), "val": val, "test": test, "seconds": seconds,
         "val_rounds": {str(t): first_round_at(val, t) for t in setup.targets}}
  print(f"  seed {setup.seed} {name:7s} lr {lr:<7g} validation rounds to "
        + ", ".join(f"{t:.0%}: {run['val_rounds'][str(t)] or f'> {len(val)}'}" for t in setup.targets)
        + f"   validation accuracy after {len(val)} rounds {val[-1]:.4f}{'' if finite else ' (diverged)'}"
        f"   {seconds:.0f} s", flush=True)
  return run


def run_central(setup: Setup, *, lr: float, epochs: int, batch_size: int = 10) -> dict:
  """Minibatch SGD on all the clients' training images (shuffled each epoch, the last partial batch dropped), on
  one device; validation accuracy after every epoch, test accuracy at the end."""
  step = TrainStep(setup.model, LOSS, optax.sgd(lr), mesh=sharding.make_mesh(devices=jax.devices()[:1]))
  arrays, n = setup.train, len(setup.train[0])
  weights = np.ones(batch_size, np.float32)
  state = step.init(jax.random.key(setup.seed), (arrays[0][:batch_size], arrays[1][:batch_size], weights))
  order_rng = np.random.default_rng(setup.seed)
  val, finite = [], True
  for _ in range(epochs):
    order = order_rng.permutation(n)
    for i in range(n // batch_size):
      take = order[i * batch_size:(i + 1) * batch_size]
      state, metrics = step(state, (arrays[0][take], arrays[1][take], weights))
    val.append(setup.validation(state.params, state.state)["accuracy"])
    finite = bool(np.isfinite(float(metrics["loss"])))
    if not finite:
      break
  test = setup.test(state.params, state.state)["accuracy"]
  print(f"  seed {setup.seed} central lr {lr:<7g} validation accuracy after {epochs} epochs {val[-1]:.4f}"
        f"{'' if finite else ' (diverged)'}", flush=True)
  return {"lr": lr, "finite": finite, "val": val, "test_final": test}


def score_rounds(target):
  """A rate's score for 'rounds to `target`' (lower is better): validation rounds to it, then mean accuracy."""
  def score(run):
    if not run["finite"]:
      return (float("inf"), float("inf"))
    reached = run["val_rounds"][str(target)]
    return (reached if reached else float("inf"), -float(np.mean(run["val"])))
  return score


def score_final(run):
  """A rate's score for final accuracy (lower is better): minus the mean validation accuracy of the last rounds."""
  return float("inf") if not run["finite"] else -float(np.mean(run["val"][-FINAL_WINDOW:]))


def choose(runs: dict, scores: dict, run_one, factor: float, max_widen: int) -> dict:
  """The best rate of `runs` (lr -> run) for each question of `scores` (name -> score function), widening the grid
  by `factor` past any edge that is a best, at most `max_widen` times. Returns name -> (lr, at_edge)."""
  for _ in range(max_widen + 1):
    rates = sorted(runs)
    best = {name: min(rates, key=lambda lr: (score(runs[lr]), lr)) for name, score in scores.items()}
    widen = set()
    for name, lr in best.items():
      if lr == rates[0] and lr != rates[-1]:
        widen.add(rates[0] / factor)
      if lr == rates[-1] and runs[lr]["finite"]:
        widen.add(rates[-1] * factor)
    if not widen:
      return {name: (lr, False) for name, lr in best.items()}
    if _ == max_widen:
      break
    for lr in sorted(widen):
      runs[float(f"{lr:.4g}")] = run_one(float(f"{lr:.4g}"))
  return {name: (lr, lr in (min(runs), max(runs))) for name, lr in best.items()}


def one_seed(args, seed: int) -> dict:
  setup = make_setup(args, seed)
  fedavg_options = fed.FedAvgOptions(clients_per_round=args.clients_per_round, local_epochs=args.local_epochs,
                                     local_batch_size=args.local_batch_size)
  fedsgd_options = fed.fedsgd_options(clients_per_round=args.clients_per_round)
  targets = {f"rounds to {t:.0%}": score_rounds(t) for t in args.targets}

  run_fedavg = lambda lr: run_federated(setup, "FedAvg", fedavg_options, lr=lr, rounds=args.fedavg_rounds,
                                        stop_at_target=False)
  fedavg = {lr: run_fedavg(lr) for lr in args.fedavg_lrs}
  fedavg_best = choose(fedavg, {**targets, "final": score_final}, run_fedavg, args.grid_factor, args.max_widen)

  run_fedsgd = lambda lr: run_federated(setup, "FedSGD", fedsgd_options, lr=lr, rounds=args.fedsgd_rounds,
                                        stop_at_target=True)
  fedsgd = {lr: run_fedsgd(lr) for lr in args.fedsgd_lrs}
  fedsgd_best = choose(fedsgd, targets, run_fedsgd, args.grid_factor, args.max_widen)

  run_c = lambda lr: run_central(setup, lr=lr, epochs=args.central_epochs)
  central = {lr: run_c(lr) for lr in args.central_lrs}
  central_best = choose(central, {"final": score_final}, run_c, args.grid_factor, args.max_widen)

  result = {"seed": seed, "targets": {}, "edges": []}
  for target in args.targets:
    key = f"rounds to {target:.0%}"
    (a_lr, a_edge), (s_lr, s_edge) = fedavg_best[key], fedsgd_best[key]
    a, s = first_round_at(fedavg[a_lr]["test"], target), first_round_at(fedsgd[s_lr]["test"], target)
    result["targets"][str(target)] = {"fedavg": a, "fedavg_lr": a_lr, "fedsgd": s, "fedsgd_lr": s_lr,
                                      "ratio": a / s if a and s else None}
    result["edges"] += [f"FedAvg {key}"] * a_edge + [f"FedSGD {key}"] * s_edge
  f_lr, f_edge = fedavg_best["final"]
  c_lr, c_edge = central_best["final"]
  result.update(fedavg_final=fedavg[f_lr]["test"][-1], fedavg_final_lr=f_lr, central=central[c_lr]["test_final"],
                central_lr=c_lr, grids={"fedavg": sorted(fedavg), "fedsgd": sorted(fedsgd), "central": sorted(central)})
  result["edges"] += ["FedAvg final"] * f_edge + ["central"] * c_edge
  result["runs"] = {"fedavg": list(fedavg.values()), "fedsgd": list(fedsgd.values()), "central": list(central.values())}
  print(f"seed {seed}: " + "; ".join(
      f"{float(t):.0%}: FedAvg {r['fedavg']} (lr {r['fedavg_lr']:g}), FedSGD {r['fedsgd']} (lr {r['fedsgd_lr']:g})"
      for t, r in result["targets"].items())
      + f"; final FedAvg {result['fedavg_final']:.4f} (lr {f_lr:g}), central {result['central']:.4f} (lr {c_lr:g})"
      + (f"; AT THE GRID'S EDGE: {result['edges']}" if result["edges"] else ""), flush=True)
  return result


def spread(values, digits=1) -> str:
  """mean ± sd (min-max) of the values that exist, or what is missing."""
  have = [v for v in values if v is not None]
  if len(have) < len(values):
    return f"{len(values) - len(have)} of {len(values)} seeds never reached it"
  return (f"{np.mean(have):.{digits}f} ± {np.std(have):.{digits}f} ({min(have):.{digits}f}-{max(have):.{digits}f})")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
  parser.add_argument("--clients", type=int, default=50)
  parser.add_argument("--scheme", choices=fed.SCHEMES, default="pathological", help="how the clients' data is split")
  parser.add_argument("--alpha", type=float, default=0.5, help="--scheme=dirichlet: its concentration")
  parser.add_argument("--clients_per_round", type=int, default=10)
  parser.add_argument("--val_fraction", type=float, default=0.15,
                      help="of each client's images, held out as the validation set that chooses learning rates")
  parser.add_argument("--targets", type=grid, default=grid("0.95,0.97"),
                      help="accuracies to count rounds to (FedSGD stops once validation and test reach the highest)")
  parser.add_argument("--local_epochs", type=int, default=5, help="FedAvg's E")
  parser.add_argument("--local_batch_size", type=int, default=10, help="FedAvg's B")
  parser.add_argument("--fedavg_rounds", type=int, default=200)
  parser.add_argument("--fedsgd_rounds", type=int, default=1000)
  parser.add_argument("--fedavg_lrs", type=grid, default=grid("0.1,0.2,0.4"), help="the grid to start from")
  parser.add_argument("--fedsgd_lrs", type=grid, default=grid("0.1,0.2,0.4,0.8"), help="the grid to start from")
  parser.add_argument("--central_lrs", type=grid, default=grid("0.025,0.05,0.1"), help="the grid to start from")
  parser.add_argument("--grid_factor", type=float, default=2.0, help="how far each widening reaches")
  parser.add_argument("--max_widen", type=int, default=3, help="widenings of a grid at most")
  parser.add_argument("--central_epochs", type=int, default=30)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--json", default=None, help="write every number (and the accuracy curves) here")
  args = parser.parse_args()

  start = time.perf_counter()
  results = {"args": vars(args), "seeds": []}
  for seed in args.seeds:
    results["seeds"].append(one_seed(args, seed))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(results, f)
  seeds = results["seeds"]
  print(f"\n{args.scheme} split, {len(seeds)} seeds ({', '.join(map(str, args.seeds))}); learning rates chosen on the "
        f"validation set; test accuracy; mean ± sd (min-max); {time.perf_counter() - start:.0f} s in all")
  for target in args.targets:
    rows = [s["targets"][str(target)] for s in seeds]
    print(f"rounds to {target:.0%} test accuracy:")
    print(f"  FedAvg (E={args.local_epochs}, B={args.local_batch_size}): {spread([r['fedavg'] for r in rows])}"
          f"   per seed {[r['fedavg'] for r in rows]} at lr {[r['fedavg_lr'] for r in rows]}")
    print(f"  FedSGD (E=1, B=inf): {spread([r['fedsgd'] for r in rows])}"
          f"   per seed {[r['fedsgd'] for r in rows]} at lr {[r['fedsgd_lr'] for r in rows]}")
    print(f"  FedAvg / FedSGD: {spread([r['ratio'] for r in rows], 3)}   per seed "
          f"{[None if r['ratio'] is None else round(r['ratio'], 3) for r in rows]}")
  final, central = [s["fedavg_final"] for s in seeds], [s["central"] for s in seeds]
  print(f"test accuracy: FedAvg after {args.fedavg_rounds} rounds {spread(final, 4)} (lr {[s['fedavg_final_lr'] for s in seeds]}); "
        f"centralised ({args.central_epochs} epochs of SGD, B=10) {spread(central, 4)} (lr "
        f"{[s['central_lr'] for s in seeds]}); difference {spread([100 * (c - f) for c, f in zip(central, final)], 2)} "
        "points")
  edges = [(s["seed"], e) for s in seeds for e in s["edges"]]
  print("every chosen rate is inside its grid" if not edges else
        f"chosen at the edge of the widened grid (widen further): {edges}")


if __name__ == "__main__":
  main()
