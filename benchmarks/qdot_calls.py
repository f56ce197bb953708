"""One quantized weight shape at a time, as a decoding step meets it: a `lax.scan` over a stack of L int8 weights
(Q8_0: groups of 32), one row of x, each layer read by `combinax.quant.kernels.qdot` (the layer in place) or by XLA's
dot on the dequantized layer (what `QuantizedArray.contract` did before the kernel). Prints microseconds a call
(best of 5 timings of 50 scans, divided by L) and the weights' bytes over that time.

    python benchmarks/qdot_calls.py      # ~1 min
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from combinax.quant import kernels, quantize_array

SHAPES = [(210, 64, 64), (210, 576, 64), (210, 576, 576), (30, 576, 1536)]   # (layers, k, n)


def best_seconds(f, *args, n=50):
  f(*args).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(n):
      y = f(*args)
    y.block_until_ready()
    best = min(best, (time.perf_counter() - start) / n)
  return best


def scan_of(stack, k, use_kernel):
  def f(x, stack):
    def body(x, i):
      layer = dataclasses.replace(stack, layer=i)
      y = kernels.qdot(x, layer) if use_kernel else layer.selected()._contract_xla(x)
      return x + jnp.pad(y, ((0, 0), (0, max(0, k - y.shape[1]))))[:, :k], None
    return jax.lax.scan(body, x, jnp.arange(stack.values.shape[0]))[0]
  return jax.jit(f)


def main():
  rng = np.random.default_rng(0)
  print(f"kernel: {kernels.isa()}")
  print("| layers x (k x n), int8/32 | kernel us a call | GB/s | XLA's dot us a call | GB/s |")
  print("|---|---|---|---|---|")
  for layers, k, n in SHAPES:
    stack = quantize_array(rng.normal(size=(layers, k, n)).astype(np.float32) * 0.03, "int8", group=32)
    x = jnp.asarray(rng.normal(size=(1, k)), jnp.float32)
    row = []
    for use_kernel in (True, False):
      us = 1e6 * best_seconds(scan_of(stack, k, use_kernel), x, stack) / layers
      row += [f"{us:.1f}", f"{stack.nbytes / layers / us / 1e3:.1f}"]
    print(f"| {layers} x ({k} x {n}) | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
  main()
