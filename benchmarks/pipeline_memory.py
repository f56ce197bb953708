"""GPipe's memory effect, from the compiled training step of a Transformer LM: per-device peak memory with K pipeline
stages vs the plain model, the deepest LM that fits a per-device budget, the schedule's utilisation, and compile time
against M.

    python benchmarks/pipeline_memory.py [--budget-layers 4] [--d-model 256] [--seq 128] [--batch 32] [--vocab 8192]

Runs on 8 simulated CPU devices (XLA_FLAGS is set here). Nothing is executed: each step is compiled, and
`compiled.memory_analysis()` gives its per-device arguments, outputs and temporaries. The budget is what the plain,
not rematerialised LM of `--budget-layers` blocks needs on one device; for each setting the script finds the deepest
LM (a multiple of K layers, so the stages split it) whose per-device peak stays within it. The embeddings and the
logits are not pipelined: every device holds them, as in GPipe. Wall-clock
speed-up cannot be measured here: the 8 simulated devices share the machine's cores, so only the schedule's
utilisation M / (M + K - 1) is reported for it.
"""

import os

os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    "--xla_force_host_platform_device_count=8"]).strip()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from combinax import layers as cl  # noqa: E402
from combinax.models import TransformerLM  # noqa: E402
from combinax.parallel import schedule  # noqa: E402
from combinax import sharding  # noqa: E402

LOSS = cl.CategoryCrossEntropy()


def compiled_step(model, n_devices_data: int, stages: int, x):
  """The compiled gradient step of `model` on token ids `x` under a (stage, data) mesh; the blocks on their stages
  (the Trainer's `pipeline_rules`), everything else replicated."""
  mesh = Mesh(np.array(jax.devices()[:stages * n_devices_data]).reshape(stages, n_devices_data), ("stage", "data"))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x)[0])
  rules = sharding.pipeline_rules() if stages > 1 else []
  step = jax.jit(jax.grad(lambda p, x: LOSS.apply({}, {}, (model.apply(p, {}, x)[0], x))[0]),
                 in_shardings=(sharding.tree_shardings(params, mesh, rules), NamedSharding(mesh, P(None))),
                 out_shardings=None)
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    compiled = step.lower(params, x).compile()
    return compiled, time.perf_counter() - start


def peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def make(n_layers: int, options: dict, stages: int, microbatches: int, remat):
  return TransformerLM(n_layers=n_layers, **options, remat=remat, pipeline_stages=stages, microbatches=microbatches)


def deepest(options, x, stages, microbatches, remat, budget, limit=4096) -> int:
  """The most layers (a multiple of `stages`) whose per-device peak fits `budget`: doubling, then bisection."""
  fits = lambda n: peak_bytes(compiled_step(make(n, options, stages, microbatches, remat), 1, stages, x)[0]) <= budget
  low, high = 0, stages
  while high <= limit and fits(high):
    low, high = high, high * 2
  while high - low > stages:
    middle = (low + high) // (2 * stages) * stages
    low, high = (middle, high) if fits(middle) else (low, middle)
  return low


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget-layers", type=int, default=4)
  parser.add_argument("--d-model", type=int, default=256)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--vocab", type=int, default=8192)
  args = parser.parse_args()
  options = dict(vocab_size=args.vocab, d_model=args.d_model, d_ff=4 * args.d_model, n_heads=4, dropout=0.0,
                 max_len=args.seq)
  x = jax.ShapeDtypeStruct((args.batch, args.seq), jnp.int32)
  print(f"TransformerLM vocab {args.vocab}, d_model {args.d_model}, d_ff {4 * args.d_model}, batch {args.batch} x "
        f"{args.seq}; {jax.device_count()} simulated {jax.devices()[0].platform} devices; per-device peak from "
        "memory_analysis()")

  print("\nper-device peak of the training step, 32 layers (M = 4K micro-batches):")
  print(f"{'setting':<34} {'peak MB':>9} {'x plain':>8}")
  plain = peak_bytes(compiled_step(make(32, options, 1, 1, False), 1, 1, x)[0])
  for stages, remat in [(1, False), (1, True), (2, False), (2, True), (4, True), (8, False), (8, True)]:
    peak = peak_bytes(compiled_step(make(32, options, stages, 4 * stages, remat), 1, stages, x)[0])
    name = "plain" if stages == 1 else f"K={stages}, M={4 * stages}"
    print(f"{name + (', remat' if remat else ''):<34} {peak / 2**20:>9.1f} {peak / plain:>7.2f}x")

  budget = peak_bytes(compiled_step(make(args.budget_layers, options, 1, 1, False), 1, 1, x)[0])
  print(f"\ndeepest LM within {budget / 2**20:.1f} MB per device (the plain {args.budget_layers}-layer step's):")
  base = None
  for stages, remat in [(1, False), (1, True), (2, True), (4, True), (8, False), (8, True)]:
    n = deepest(options, x, stages, 4 * stages, remat, budget)
    base = base or n
    name = "plain" if stages == 1 else f"K={stages}, M={4 * stages}"
    print(f"  {name + (', remat' if remat else ''):<20} {n:>5} layers  ({n / base:.1f}x the plain LM)")

  print("\ncompile time of a 32-layer K=4 step against M (one scan over M + K - 1 iterations):")
  for microbatches in (4, 8, 32):
    _, seconds = compiled_step(make(32, options, 4, microbatches, True), 1, 4, x)
    print(f"  M={microbatches:<3} {seconds:6.2f} s")

  print("\nschedule utilisation M / (M + K - 1), from `schedule` (1 - bubble):")
  for stages in (2, 4, 8):
    cells = [f"M={m}: {1 - (schedule(stages, m) < 0).mean():.2f}" for m in (stages, 4 * stages, 8 * stages)]
    print(f"  K={stages}: " + ", ".join(cells))


if __name__ == "__main__":
  main()
