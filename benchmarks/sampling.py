"""The cost of top-k / top-p sampling over a large vocabulary: `decoding.sampled_logits` (a bisection over the
logits' ordered bit keys) against the sort-based masks it replaced (kept below as the peer), in interleaved rounds,
then what that means for batched sampling from SmolLM2-135M (if installed).

    python benchmarks/sampling.py [--batch 32] [--vocab 49152] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from combinax import decoding


def sorted_masks(logits, temperature: float, top_k=None, top_p=None):
  """The masks as combinax computed them before: lax.top_k's k-th value, and an argsort with a cumulative sum."""
  logits = logits / temperature
  if top_k is not None:
    kth = lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p is not None:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
    logits = jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
  return logits


def timed(f, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--vocab", type=int, default=49152)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--new", type=int, default=64, help="tokens sampled from SmolLM2 per round")
  args = parser.parse_args()
  logits = jax.random.normal(jax.random.key(0), (args.batch, args.vocab)) * 3
  cases = {"top_k=40": dict(top_k=40), "top_p=0.95": dict(top_p=0.95), "top_k=40, top_p=0.95": dict(top_k=40,
                                                                                                   top_p=0.95)}
  print(f"masks of {args.batch} rows x {args.vocab} logits, ms (median of {args.rounds} interleaved rounds)")
  print("| mask | sorting (before) | bisection (combinax) | same tokens kept |")
  print("|---|---|---|---|")
  for name, options in cases.items():
    before = jax.jit(lambda x, o=options: sorted_masks(x, 0.8, **o))
    after = jax.jit(lambda x, o=options: decoding.sampled_logits(x, 0.8, **o))
    same = np.mean(np.isfinite(np.asarray(before(logits))) == np.isfinite(np.asarray(after(logits))))
    times = {"before": [], "after": []}
    for _ in range(args.rounds):
      times["before"].append(timed(before, logits))
      times["after"].append(timed(after, logits))
    print(f"| {name} | {1e3 * statistics.median(times['before']):.1f} | "
          f"{1e3 * statistics.median(times['after']):.1f} | {same:.6f} |")

  from combinax import pretrained
  from combinax.pretrained import llama, registry
  name = "smollm2-135m-instruct"
  if registry.source_files(name) is None:
    print(f"({name} is not installed: {registry.download_command(name)})")
    return
  model, params, tokenizer = pretrained.load(name, mode="predict", max_len=16 + args.new)
  prompt = np.asarray([tokenizer.encode("And it came to pass")] * args.batch, np.int32)
  start = llama.start_id(pretrained.config(name))
  print(f"\nSmolLM2-135M, batch {args.batch}, {args.new} tokens sampled (temperature 0.8), tokens/s:")
  print("| sampling | tokens/s |")
  print("|---|---|")
  for label, options in {"greedy": dict(temperature=0.0), "top_k=40": dict(temperature=0.8, top_k=40),
                         "top_p=0.95": dict(temperature=0.8, top_k=None, top_p=0.95)}.items():
    sample = lambda seed, o=options: decoding.autoregressive_sample(model, params, prompt, max_length=args.new,
                                                                    start_id=start, rng=jax.random.key(seed), **o)
    timed(sample, 0)
    rates = [args.batch * args.new / timed(sample, r + 1) for r in range(args.rounds)]
    print(f"| {label} | {statistics.median(rates):.0f} |")


if __name__ == "__main__":
  main()
