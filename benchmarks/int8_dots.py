"""One weight's product with a few activation rows, every way XLA:CPU can be asked to do it (issue 32, item 1): is an
int8 x int8 -> int32 dot faster than dequantizing the weight to float32 first, and does the number of rows matter?

    python benchmarks/int8_dots.py [--rows 1 2 4 16] [--repeats 5]

SmolLM2-135M's three matmul shapes (576 -> 1536, 1536 -> 576, 576 -> 576), each way jitted alone and timed over 200
calls, median of --repeats, interleaved:
- float32: `x @ w`, the weight in float32 (4 bytes a weight);
- dequantized, per channel / groups of 32: combinax's int8 path today (`QuantizedArray.contract`: the int8 weight
  converted to float32 just before a float32 dot);
- s8 x s8, per channel: the rows quantized to int8 (one scale a row) inside the jitted call, one int8 x int8 dot
  accumulating in int32 (`preferred_element_type=int32`), scales applied after;
- s8 x s8, groups of 32 (Q8_0's layout): the same with one scale per 32 inputs on both sides, a dot batched over
  the groups, then the scaled sum over them;
- the s8 dot alone (rows already quantized).
It then prints what the compiled s8 dot became (a library call or XLA's own loop) for 1 and 2 rows.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from combinax.quant.weights import quantize_array

SHAPES = [(576, 1536), (1536, 576), (576, 576)]
GROUP = 32


def _rows_int8(x, group=None):
  """x (b, k) -> (int8 values, float32 scales): one scale per row, or per `group` inputs of a row."""
  shaped = x if group is None else x.reshape(x.shape[0], -1, group)
  scale = jnp.max(jnp.abs(shaped), axis=-1, keepdims=True) / 127.0
  q = jnp.round(shaped / jnp.where(scale == 0, 1.0, scale)).astype(jnp.int8)
  return q, scale


def s8_per_channel(x, wq, ws):
  """wq (n, k) int8, ws (n,) float32."""
  xq, xs = _rows_int8(x)
  acc = lax.dot_general(xq, wq, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)   # (b, n)
  return acc.astype(jnp.float32) * xs * ws


def s8_groups(x, wq, ws):
  """wq (n, G, 32) int8, ws (n, G) float32."""
  xq, xs = _rows_int8(x, GROUP)                                                               # (b, G, 32), (b, G, 1)
  acc = lax.dot_general(xq, wq, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.int32)   # (G, b, n)
  return jnp.einsum("gbn,bg,ng->bn", acc.astype(jnp.float32), xs[..., 0], ws)


def s8_dot(xq, wq):
  return lax.dot_general(xq, wq, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)


def _timer(fn, *args):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))

  def once(n=200):
    start = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n
  return once


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 16])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  timers, checks = {}, {}
  for k, n in SHAPES:
    w = rng.normal(size=(k, n)).astype(np.float32) * 0.02
    per_channel, grouped = quantize_array(w, "int8", axis=-2), quantize_array(w, "int8", group=GROUP, axis=-2)
    wt = w.T
    ws = np.abs(wt).max(axis=1) / 127.0
    wq = np.round(wt / ws[:, None]).astype(np.int8)                                          # (n, k)
    wsg = np.abs(wt.reshape(n, -1, GROUP)).max(axis=-1) / 127.0
    wqg = np.round(wt.reshape(n, -1, GROUP) / wsg[..., None]).astype(np.int8)                # (n, G, 32)
    for b in args.rows:
      x = jnp.asarray(rng.normal(size=(b, k)).astype(np.float32))
      ways = {"float32": (lambda x, w: x @ w, x, jnp.asarray(w)),
              "dequantized, per channel": (lambda x, q: q.contract(x, axis=-2), x, per_channel),
              "dequantized, groups of 32": (lambda x, q: q.contract(x, axis=-2), x, grouped),
              "s8 x s8, per channel": (s8_per_channel, x, wq, ws),
              "s8 x s8, groups of 32": (s8_groups, x, wqg, wsg),
              "s8 dot alone": (s8_dot, _rows_int8(x)[0], wq)}
      exact = x @ w
      for way, (fn, *inputs) in ways.items():
        timers[(k, n, b, way)] = _timer(fn, *inputs)
        if way != "s8 dot alone":
          got = jax.jit(fn)(*inputs)
          checks[(k, n, b, way)] = float(jnp.max(jnp.abs(got - exact)) / jnp.max(jnp.abs(exact)))
  times = {key: [] for key in timers}
  for _ in range(args.repeats):   # interleaved
    for key, once in timers.items():
      times[key].append(once())
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}: microseconds a call (median of {args.repeats}, "
        "runs' spread); largest error / largest |output| against float32")
  for (k, n, b, way), ts in times.items():
    error = checks.get((k, n, b, way))
    print(f"{k:5d} -> {n:5d}  rows {b:3d}  {way:28s} {1e6 * statistics.median(ts):8.1f} us "
          f"({1e6 * min(ts):.1f}-{1e6 * max(ts):.1f})" + ("" if error is None else f"  error {error:.2e}"))
  for b in (1, 2):
    hlo = jax.jit(s8_dot).lower(jnp.zeros((b, 576), jnp.int8), jnp.zeros((1536, 576), jnp.int8)).compile().as_text()
    ops = [line.split("=", 1)[1].strip()[:140] for line in hlo.splitlines()
           if " dot(" in line or "custom-call" in line or "kind=kCustom" in line]
    print(f"the s8 dot of {b} row(s) compiles to: {ops}")


if __name__ == "__main__":
  main()
