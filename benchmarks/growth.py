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

FLOPs are XLA's count (`cost_analysis`) of one compiled training step of the large model (forward and backward) on
one batch; operator steps are counted at the large model's cost, as in the paper, and the small model's training is
reported separately. Savings: 1 - (FLOPs until the run's held-out loss first reaches scratch's final loss, mean over
seeds) / (scratch's FLOPs: its whole run). Writes `<runs>/growth.json` and the plot `benchmarks/growth.png`.
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


def step_flops(d_model: int, d_ff: int, n_layers: int, n_heads: int, batch=16, length=64, vocab=8192) -> float:
  """XLA's FLOP count of one training step's forward and backward pass of the recipe's LM."""
  import jax
  import jax.numpy as jnp

  from combinax import layers as cl
  from combinax.models import TransformerLM
  model = TransformerLM(vocab, d_model=d_model, d_ff=d_ff, n_layers=n_layers, n_heads=n_heads, positions="rotary",
                        max_len=length, tie_embeddings=True)
  x = jnp.zeros((batch, length), jnp.int32)
  params, _ = model.init(jax.random.key(0), x)
  loss = cl.WeightedCategoryCrossEntropy()

  def value(params, x):
    logits, _ = model.apply(params, {}, x, rng=jax.random.key(1), train=True)
    return loss.apply({}, {}, (logits, x, jnp.ones(x.shape, jnp.float32)))[0]
  compiled = jax.jit(jax.grad(value)).lower(params, x).compile()
  analysis = compiled.cost_analysis()
  return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


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
    offset = results["operator_steps"] if method == "ligo" else 0
    flops = (steps + offset) * results["large_step_flops"] / 1e12
    ax.plot(flops, losses.mean(0), label=f"{method} ({len(runs)} seeds)")
    ax.fill_between(flops, losses.min(0), losses.max(0), alpha=0.2)
  ax.axhline(target, color="grey", linestyle=":", label="scratch's final loss")
  ax.set_xlabel("training FLOPs of the large model (TFLOP; LiGO's operator steps included)")
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
  args = parser.parse_args()
  if args.speed:
    return speed()
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
  large_flops = step_flops(256, 1024, 8, 8)
  small_flops = step_flops(128, 512, 4, 4)
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
  scratch_steps = float(args.scratch_steps)   # scratch gets to its final loss at its last step, by definition
  print(f"small LM: {int(small_steps[-1])} steps, held-out loss {small_losses[-1]:.3f}, "
        f"{small_flops * small_steps[-1] / 1e12:.1f} TFLOP (not counted below)")
  print(f"large LM step: {large_flops / 1e9:.1f} GFLOP (XLA); target = scratch's final held-out loss {target:.4f}")
  print("| method | final held-out loss (mean ± sd) | steps to target (per seed) | FLOPs to target | saving |")
  print("|---|---|---|---|---|")
  for method in args.methods:
    finals = [c["losses"][-1] for c in curves[method]]
    extra = operator_steps if method == "ligo" else 0
    to_target = [r + extra for r in reach[method]]
    mean = float(np.mean(to_target))
    saving = 1 - mean / scratch_steps
    print(f"| {method} | {np.mean(finals):.4f} ± {np.std(finals):.4f} | "
          f"{', '.join(f'{r:.0f}' for r in to_target)} | {mean * large_flops / 1e12:.1f} TFLOP | "
          f"{saving * 100:.1f}% |")
  results = {"curves": curves, "target": target, "large_step_flops": large_flops, "small_step_flops": small_flops,
             "operator_steps": operator_steps, "reach": reach}
  (runs / "growth.json").write_text(json.dumps(results, indent=1))
  plot(results, target, ROOT / "benchmarks" / "growth.png")
  print(f"wrote {runs / 'growth.json'} and benchmarks/growth.png")


if __name__ == "__main__":
  main()
