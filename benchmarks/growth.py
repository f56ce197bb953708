"""LiGO against stacking, Net2Net and scratch: held-out loss of the large LM against training FLOPs.

    python benchmarks/growth.py [--seeds 0 1 2] [--runs runs/growth_bench] [--large-steps 1000]
                                [--scratch-steps 3000] [--small-steps 2000] [--operator-steps 100]
    python benchmarks/growth.py --speed      (the operator phase's step time against the large model's)

Every run is `combinax-train` on the shipped recipes (configs/grow_lm_kjv.gin and its scratch baseline), so this
measures the code users run. The small LM (4 layers, d 128) is trained once (seed 0, 2,000 steps) and shared; for each
seed the large LM (8 layers, d 256) is then
  - ligo:    grown by the LiGO operator trained for 100 steps, then trained for `--large-steps`;
  - stack:   grown by the operator's StackBERT setting (depth stacking, cyclic width copies), not trained;
  - net2net: grown by its function-preserving setting (identity layers, cyclic copies), not trained;
  - scratch: trained from random initialisation for `--scratch-steps` (3x longer by default: a grown model starts
             below what scratch reaches in the grown runs' 1,000 steps, so that target would say nothing);
each with the recipe's cosine schedule over its own length and the same data order, evaluated every 50 steps (and
the grown params before any large step) on 16 held-out batches. Seeds change initialisation, operator noise and
dropout.

FLOPs are XLA's count (`cost_analysis`) of one compiled training step (forward and backward, on one batch) of each
model with its stack of blocks unrolled (`benchmarks/flops.py`: XLA counts a scanned stack as one block, which made
the large step 18.9 GFLOP instead of 61.3). An operator step is charged its own count (the operator's expansion and
its gradient on top of the large model's step: 1.15x), the small model's training is reported apart and with it.
Savings: 1 - (FLOPs until the run's held-out loss first reaches scratch's final loss, mean over seeds) / (scratch's
FLOPs: its whole run). Writes `<runs>/growth.json` and the plot `benchmarks/growth.png`.

    python benchmarks/growth.py --from-steps ligo=825,802,844 stack=803,856,822 net2net=908,938,915

prints the table's FLOP figures from steps to target already measured (large-model steps per seed, LiGO's operator
steps not included), without training: the FLOP accounting alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "ligo": [],
    "stack": ["GrowthRun.options = @stack/GrowthOptions()", "GrowthRun.steps = 0"],
    "net2net": ["GrowthRun.options = @net2net/GrowthOptions()", "GrowthRun.steps = 0"],
    "scratch": None,
}


def train(output_dir: Path, method: str, seed: int, args):
  config = ROOT / "configs" / ("grow_lm_kjv_scratch.gin" if METHODS[method] is None else "grow_lm_kjv.gin")
  steps = args.large_steps if METHODS[method] is not None else args.scratch_steps
  bindings = (METHODS[method] or []) + [
      f"large/Trainer.seed = {seed}", f"large/Trainer.steps = {steps}",
      f"large/cosine.total_steps = {steps}", f"small/Trainer.steps = {args.small_steps}",
      f"small/cosine.total_steps = {args.small_steps}", "EvalTask.n_batches = 16", "large/Trainer.progress = False",
      "small/Trainer.progress = False"] + ([f"GrowthRun.steps = {args.operator_steps}"] if method == "ligo" else [])
  command = [str(Path(sys.executable).parent / "combinax-train"), f"--config_file={config}",
             f"--output_dir={output_dir}"] + [f"--config={b}" for b in bindings]
  subprocess.run(command, check=True, cwd=ROOT)


def eval_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
  """(steps, held-out loss) from a run's metrics.jsonl (the last record of each step wins: resumed runs)."""
  losses = {}
  for line in (run / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "eval/loss" in record:
      losses[record["step"]] = record["eval/loss"]
  steps = np.array(sorted(losses))
  return steps, np.array([losses[s] for s in steps])


def grown_loss(run: Path) -> float:
  """The held-out loss of a growth run's materialised params (grown/), before the large model trains: the same 16
  batches as the runs' evaluations."""
  import itertools

  import jax
  import jax.numpy as jnp

  from combinax import layers as cl
  from combinax.data.recipes import corpus_tokenizer, lm_pipeline
  from combinax.models import TransformerLM
  from combinax.store import checkpoints
  model = TransformerLM(8192, d_model=256, d_ff=1024, n_layers=8, n_heads=8, positions="rotary", max_len=64,
                        tie_embeddings=True)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.ShapeDtypeStruct((16, 64), jnp.int32))[0])
  params, _ = checkpoints.restore(checkpoints.latest(run / "grown"), template, prefix="params")
  stream = lm_pipeline(corpus="kjv", split="test", tokenizer=corpus_tokenizer("kjv", vocab_size=8192), length=64,
                       batch_size=16, repeat=False)()
  loss = cl.WeightedCategoryCrossEntropy()
  evaluate = jax.jit(lambda params, x, w: loss.apply({}, {}, (model.apply(params, {}, x)[0], x, w))[0])
  return float(np.mean([evaluate(params, jnp.asarray(b[0]), jnp.asarray(b[2], jnp.float32))
                        for b in itertools.islice(stream, 16)]))


def steps_to_reach(steps, losses, target: float) -> float:
  """The (linearly interpolated) step where the curve first reaches `target`; nan if it never does."""
  below = np.nonzero(losses <= target)[0]
  if not len(below):
    return float("nan")
  i = below[0]
  if i == 0:
    return float(steps[0])
  s0, s1, l0, l1 = steps[i - 1], steps[i], losses[i - 1], losses[i]
  return float(s0 + (l0 - target) / (l0 - l1) * (s1 - s0))


def step_costs(operator_steps: int) -> dict:
  """FLOPs of one step of each kind (benchmarks/flops.py: XLA's count, every block counted)."""
  import flops
  small, large = flops.lm(**flops.SMALL, dropout=0.1), flops.lm(**flops.LARGE, dropout=0.1)
  costs = {"small": flops.step_flops(small), "large": flops.step_flops(large)}
  costs["operator"] = flops.operator_step_flops(small, large) if operator_steps else 0.0
  return costs


def flops_table(reach: dict, costs: dict, operator_steps: int, scratch_steps: int, small_steps: int) -> dict:
  """Per method: FLOPs to scratch's final loss for each seed (large steps at the large step's cost, LiGO's operator
  steps at their own), their mean, and the saving against scratch's whole run, without and with the small model."""
  scratch = scratch_steps * costs["large"]
  small = small_steps * costs["small"]
  table = {}
  for method, steps in reach.items():
    if method == "scratch":
      continue
    extra = operator_steps * costs["operator"] if method == "ligo" else 0.0
    per_seed = [s * costs["large"] + extra for s in steps]
    mean = float(np.mean(per_seed))
    table[method] = {"flops": per_seed, "mean": mean, "saving": 1 - mean / scratch,
                     "saving_per_seed": [1 - f / scratch for f in per_seed],
                     "with_small": mean + small, "saving_with_small": 1 - (mean + small) / scratch}
  return table


def print_flops(table: dict, costs: dict, operator_steps: int, scratch_steps: int, small_steps: int):
  scratch = scratch_steps * costs["large"]
  print(f"one step: large {costs['large'] / 1e9:.2f} GFLOP, small {costs['small'] / 1e9:.2f}, operator "
        f"{costs['operator'] / 1e9:.2f} ({costs['operator'] / costs['large']:.3f}x the large step); scratch's "
        f"{scratch_steps} steps {scratch / 1e12:.1f} TFLOP; the small model's {small_steps} steps "
        f"{small_steps * costs['small'] / 1e12:.1f} TFLOP")
  print("| method | FLOPs to target (mean) | saving (per seed) | with the small model's training |")
  print("|---|---|---|---|")
  for method, row in table.items():
    print(f"| {method} | {row['mean'] / 1e12:.1f} TFLOP | {row['saving'] * 100:.1f}% "
          f"({', '.join(f'{s * 100:.1f}' for s in row['saving_per_seed'])}) | {row['with_small'] / 1e12:.1f} TFLOP, "
          f"{row['saving_with_small'] * 100:.1f}% |")


def speed(rounds: int = 5, steps: int = 20):
  """Median step time of the operator phase (`Grown`, only growth/* trained) and of the large model's ordinary
  training step, interleaved round by round on the same batch."""
  import time

  import jax
  import jax.numpy as jnp
  import optax

  from combinax import growth
  from combinax import layers as cl
  from combinax.models import TransformerLM
  from combinax.train import TrainStep
  lm = lambda d, layers, heads: TransformerLM(8192, d_model=d, d_ff=4 * d, n_layers=layers, n_heads=heads,
                                              positions="rotary", max_len=64, tie_embeddings=True)
  small, large = lm(128, 4, 4), lm(256, 8, 8)
  x = jax.random.randint(jax.random.key(0), (16, 64), 0, 8192)
  batch = (x, x, jnp.ones(x.shape, jnp.float32))
  loss = cl.WeightedCategoryCrossEntropy()
  runs = {"large step": TrainStep(large, loss, optax.adamw(1e-3)),
          "operator step": TrainStep(growth.Grown(small, large), loss, optax.adam(1e-3), trainable=growth.TRAINABLE)}
  states = {name: step.init(jax.random.key(0), batch) for name, step in runs.items()}
  times = {name: [] for name in runs}
  for name, step in runs.items():    # compile and warm up
    for _ in range(3):
      states[name], metrics = step(states[name], batch)
    jax.block_until_ready(metrics)
  for _ in range(rounds):
    for name, step in runs.items():
      start = time.perf_counter()
      for _ in range(steps):
        states[name], metrics = step(states[name], batch)
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - start) / steps)
  medians = {name: float(np.median(t)) for name, t in times.items()}
  for name, median in medians.items():
    print(f"{name}: {median * 1e3:.1f} ms (median of {rounds} rounds of {steps}; "
          f"{min(times[name]) * 1e3:.1f}-{max(times[name]) * 1e3:.1f})")
  print(f"operator step / large step: {medians['operator step'] / medians['large step']:.3f} (target <= 1.3)")


def plot(results: dict, target: float, path: Path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, runs in results["curves"].items():
    steps = np.array(runs[0]["steps"])
    losses = np.array([r["losses"] for r in runs])
    offset = results["operator_steps"] * results["operator_step_flops"] if method == "ligo" else 0.0
    flops = (steps * results["large_step_flops"] + offset) / 1e12
    ax.plot(flops, losses.mean(0), label=f"{method} ({len(runs)} seeds)")
    ax.fill_between(flops, losses.min(0), losses.max(0), alpha=0.2)
  ax.axhline(target, color="grey", linestyle=":", label="scratch's final loss")
  ax.set_xlabel("training FLOPs of the large model (TFLOP, every layer counted; LiGO's operator steps included)")
  ax.set_ylabel("held-out loss (KJV test split)")
  ax.set_ylim(target - 0.3, target + 1.5)
  ax.set_title("Growing a 4-layer d128 LM into 8 layers d256")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def run_name(method: str, seed: int, args) -> str:
  return f"scratch{args.scratch_steps}_{seed}" if METHODS[method] is None else f"{method}_{seed}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--runs", default="runs/growth_bench")
  parser.add_argument("--large-steps", type=int, default=1000)
  parser.add_argument("--scratch-steps", type=int, default=3000)
  parser.add_argument("--small-steps", type=int, default=2000)
  parser.add_argument("--operator-steps", type=int, default=100)
  parser.add_argument("--methods", nargs="+", default=list(METHODS))
  parser.add_argument("--speed", action="store_true", help="time the operator step against the large step, only")
  parser.add_argument("--from-steps", nargs="+", metavar="METHOD=S0,S1,...",
                      help="print the FLOP figures from these steps to target (large-model steps per seed), only")
  args = parser.parse_args()
  if args.speed:
    return speed()
  if args.from_steps:
    reach = {m: [float(s) for s in steps.split(",")] for m, steps in (a.split("=") for a in args.from_steps)}
    costs = step_costs(args.operator_steps)
    table = flops_table(reach, costs, args.operator_steps, args.scratch_steps, args.small_steps)
    return print_flops(table, costs, args.operator_steps, args.scratch_steps, args.small_steps)
  runs = (ROOT / args.runs).resolve()
  shared_small = runs / "small"
  for seed in args.seeds:
    for method in args.methods:
      out = runs / run_name(method, seed, args)
      if METHODS[method] is not None and shared_small.exists() and not (out / "small").exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / "small").symlink_to(shared_small)     # one small model for every growth run
      train(out, method, seed, args)
      if METHODS[method] is not None and not shared_small.exists():
        (out / "small").rename(shared_small)
        (out / "small").symlink_to(shared_small)
  costs = step_costs(args.operator_steps)
  small_steps, small_losses = eval_curve(shared_small)
  def curve(method, seed):
    run = runs / run_name(method, seed, args)
    steps, losses = eval_curve(run / ("" if METHODS[method] is None else "large"))
    if METHODS[method] is not None:   # the grown params before any large-model step
      steps, losses = np.concatenate([[0], steps]), np.concatenate([[grown_loss(run)], losses])
    return {"steps": steps.tolist(), "losses": losses.tolist()}
  curves = {m: [curve(m, s) for s in args.seeds] for m in args.methods}
  target = float(np.mean([c["losses"][-1] for c in curves["scratch"]]))
  operator_steps = args.operator_steps
  reach = {m: [steps_to_reach(np.array(c["steps"]), np.array(c["losses"]), target) for c in cs]
           for m, cs in curves.items()}
  print(f"small LM: {int(small_steps[-1])} steps, held-out loss {small_losses[-1]:.3f}")
  print(f"target = scratch's final held-out loss {target:.4f}")
  print("| method | final held-out loss (mean ± sd) | large-model steps to target (per seed) |")
  print("|---|---|---|")
  for method in args.methods:
    finals = [c["losses"][-1] for c in curves[method]]
    print(f"| {method} | {np.mean(finals):.4f} ± {np.std(finals):.4f} | "
          f"{', '.join(f'{r:.0f}' for r in reach[method])}"
          f"{f' (+ {operator_steps} operator steps)' if method == 'ligo' else ''} |")
  table = flops_table(reach, costs, operator_steps, args.scratch_steps, int(small_steps[-1]))
  print_flops(table, costs, operator_steps, args.scratch_steps, int(small_steps[-1]))
  results = {"curves": curves, "target": target, "large_step_flops": costs["large"],
             "small_step_flops": costs["small"], "operator_step_flops": costs["operator"],
             "operator_steps": operator_steps, "reach": reach, "flops": table}
  (runs / "growth.json").write_text(json.dumps(results, indent=1))
  plot(results, target, ROOT / "benchmarks" / "growth.png")
  print(f"wrote {runs / 'growth.json'} and benchmarks/growth.png")


if __name__ == "__main__":
  main()
