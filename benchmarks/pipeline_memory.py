"""GPipe's memory effect, from the compiled training step of a Transformer LM: per-device peak memory with K pipeline
stages vs the plain model, the deepest LM that fits a per-device budget, the schedule's utilisation, and compile time
against M.

    python benchmarks/pipeline_memory.py [--budget-layers 4] [--d-model 256] [--seq 128] [--batch 32] [--vocab 8192]

Runs on 8 simulated CPU devices (XLA_FLAGS is set here). Nothing is executed: each step is compiled, and
`compiled.memory_analysis()` gives its per-device arguments, outputs and temporaries. The step is the one training
runs: `TrainStep.update` with Adam, jitted as `TrainStep` jits it (the train state donated, the blocks and their
optimizer state on their stages by the Trainer's `pipeline_rules`), so the peak holds the params, Adam's two moments,
the gradients and the activations. The budget is what the plain, not rematerialised LM of `--budget-layers` blocks
needs on one device; for each setting the script finds the deepest LM (a multiple of K layers, so the stages split it)
whose per-device peak stays within it, and compares like with like: K stages with remat against the plain LM with
remat, K stages without against the plain LM without. The embeddings and the logits are not pipelined: every device
holds them (and their Adam moments), as in GPipe. Wall-clock speed-up cannot be measured here: the 8 simulated
devices share the machine's cores, so only the schedule's utilisation M / (M + K - 1) is reported for it.
"""

import os

os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    "--xla_force_host_platform_device_count=8"]).strip()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from combinax import layers as cl  # noqa: E402
from combinax.models import TransformerLM  # noqa: E402
from combinax.parallel import schedule  # noqa: E402
from combinax import sharding  # noqa: E402
from combinax.train import TrainStep  # noqa: E402

LOSS = cl.CategoryCrossEntropy()


def compiled_step(model, stages: int, x):
  """The compiled training step (Adam) of `model` on token ids `x` on `stages` devices: a (stage, data, model) mesh
  of K x 1 x 1 when pipelined (the blocks and their Adam moments on their stages, everything else replicated), one
  device when not. Returns (compiled, seconds to compile)."""
  mesh = sharding.make_mesh(devices=jax.devices()[:stages], pipeline_stages=stages)
  step = TrainStep(model, LOSS, optax.adam(1e-3), mesh=mesh, rules=sharding.pipeline_rules() if stages > 1 else [])
  batch = (x, x)
  state = jax.eval_shape(lambda: step.init(jax.random.key(0), batch))
  shardings = step.state_shardings(state)
  jitted = jax.jit(step.update, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
  with sharding.running_on(mesh):
    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    return compiled, time.perf_counter() - start


def peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def make(n_layers: int, options: dict, stages: int, microbatches: int, remat):
  return TransformerLM(n_layers=n_layers, **options, remat=remat, pipeline_stages=stages, microbatches=microbatches)


def deepest(options, x, stages, microbatches, remat, budget, limit=4096) -> int:
  """The most layers (a multiple of `stages`) whose per-device peak fits `budget`: doubling, then bisection."""
  fits = lambda n: peak_bytes(compiled_step(make(n, options, stages, microbatches, remat), stages, x)[0]) <= budget
  low, high = 0, stages
  while high <= limit and fits(high):
    low, high = high, high * 2
  while high - low > stages:
    middle = (low + high) // (2 * stages) * stages
    low, high = (middle, high) if fits(middle) else (low, middle)
  return low


SETTINGS = [(1, False), (1, True), (2, False), (2, True), (4, False), (4, True), (8, False), (8, True)]


def name(stages, remat) -> str:
  return ("plain" if stages == 1 else f"K={stages}, M={4 * stages}") + (", remat" if remat else "")


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
        f"{args.seq}; {jax.device_count()} simulated {jax.devices()[0].platform} devices; per-device peak of the "
        "training step (Adam; params, moments, gradients, activations) from memory_analysis()", flush=True)

  print("\nper-device peak of the training step, 32 layers (M = 4K micro-batches):")
  print(f"{'setting':<24} {'peak MB':>9} {'x plain, same remat':>20}")
  plain = {}
  for stages, remat in SETTINGS:
    peak = peak_bytes(compiled_step(make(32, options, stages, 4 * stages, remat), stages, x)[0])
    plain.setdefault(remat, peak)
    print(f"{name(stages, remat):<24} {peak / 2**20:>9.1f} {peak / plain[remat]:>19.2f}x", flush=True)

  budget = peak_bytes(compiled_step(make(args.budget_layers, options, 1, 1, False), 1, x)[0])
  print(f"\ndeepest LM within {budget / 2**20:.1f} MB per device (the plain {args.budget_layers}-layer step's, no "
        "remat), against the plain LM with the same remat:")
  base = {}
  for stages, remat in SETTINGS:
    n = deepest(options, x, stages, 4 * stages, remat, budget)
    base.setdefault(remat, n)
    print(f"  {name(stages, remat):<20} {n:>5} layers  ({n / base[remat]:.1f}x the plain LM"
          f"{' with remat' if remat else ''})", flush=True)

  print("\ncompile time of a 32-layer K=4 step against M (one scan over M + K - 1 iterations):")
  for microbatches in (4, 8, 32):
    _, seconds = compiled_step(make(32, options, 4, microbatches, True), 4, x)
    print(f"  M={microbatches:<3} {seconds:6.2f} s", flush=True)

  print("\nschedule utilisation M / (M + K - 1), from `schedule` (1 - bubble):")
  for stages in (2, 4, 8):
    cells = [f"M={m}: {1 - (schedule(stages, m) < 0).mean():.2f}" for m in (stages, 4 * stages, 8 * stages)]
    print(f"  K={stages}: " + ", ".join(cells))


if __name__ == "__main__":
  main()
