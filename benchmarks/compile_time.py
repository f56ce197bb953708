"""Compile time of a TransformerLM training step at several depths, blocks scanned vs unrolled.

    python benchmarks/compile_time.py [--layers 4 12 24]

Scanned blocks (`Repeat(scan=True)`, the default) compile one block whatever the depth; unrolled ones compile every
block. Prints the seconds `jax.jit(...).lower(...).compile()` takes for a loss-and-gradient step.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from combinax import layers as cl
from combinax.models import TransformerLM


def compile_seconds(n_layers: int, scan: bool) -> float:
  model = TransformerLM(8192, d_model=256, d_ff=1024, n_layers=n_layers, n_heads=4, scan_layers=scan)
  tokens = jax.ShapeDtypeStruct((16, 128), jnp.int32)
  params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))
  loss_layer = cl.CategoryCrossEntropy()

  def loss(params, tokens, rng):
    logits, _ = model.apply(params, state, tokens, rng=rng, train=True)
    return loss_layer.apply({}, {}, (logits, tokens))[0]

  step = jax.jit(jax.value_and_grad(loss))
  start = time.perf_counter()
  step.lower(params, tokens, jax.random.key(0)).compile()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, nargs="+", default=[4, 12, 24])
  args = parser.parse_args()
  print("TransformerLM d_model 256, d_ff 1024, 4 heads, vocab 8192, batch 16 x 128; value_and_grad step")
  print(f"{'layers':>6} {'scanned s':>10} {'unrolled s':>11}")
  for n in args.layers:
    print(f"{n:>6} {compile_seconds(n, True):>10.2f} {compile_seconds(n, False):>11.2f}")


if __name__ == "__main__":
  main()
