"""Decoding speed: the KV cache vs re-running the whole prefix for every new token.

    python benchmarks/decoding_speed.py [--lengths 128 512] [--batch 4]

Both decoders are greedy, jitted once, and run their whole loop on the device (`lax` loops); only the algorithm
differs. Prints tokens/s (median of --repeats runs after a warm-up) and the speed-up of the cache.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from combinax import decoding
from combinax.models import TransformerLM


def recompute_decoder(model, params, batch, length):
  """Greedy decoding that runs the full model on the whole (fixed-size, causal) buffer for every token."""
  @jax.jit
  def run(params):
    def step(t, tokens):
      logits, _ = model.apply(params, {}, tokens)          # position t's logits depend on tokens < t only
      return tokens.at[:, t].set(jnp.argmax(logits[:, t], axis=-1).astype(jnp.int32))
    return lax.fori_loop(0, length, step, jnp.zeros((batch, length), jnp.int32))
  return run


def timed(fn, repeats):
  jax.block_until_ready(fn())                                # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  config = dict(d_model=256, d_ff=1024, n_layers=4, n_heads=4, dropout=0.0)
  print(f"TransformerLM vocab 8192, {config}, batch {args.batch}, greedy; {jax.devices()[0].device_kind}")
  print(f"{'tokens':>7} {'cached tok/s':>13} {'recompute tok/s':>16} {'speed-up':>9}")
  for length in args.lengths:
    model = TransformerLM(8192, max_len=length, **config)
    decoder = TransformerLM(8192, max_len=length, mode="predict", **config)
    params, _ = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, length), jnp.int32))
    no_prompt = jnp.zeros((args.batch, 0), jnp.int32)
    cached = timed(lambda: decoding.autoregressive_sample(decoder, params, no_prompt, max_length=length,
                                                          temperature=0.0), args.repeats)
    recompute = timed(lambda: recompute_decoder(model, params, args.batch, length)(params), args.repeats)
    n = args.batch * length
    print(f"{length:>7} {n / cached:>13.0f} {n / recompute:>16.0f} {recompute / cached:>8.1f}x")


if __name__ == "__main__":
  main()
