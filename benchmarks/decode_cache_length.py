"""What a decoding step costs against the model's `max_len`: SmolLM2-135M (float32, batch 1, greedy) built with
`--max_lens` positions, decoding as combinax does (the caches sized to what the call feeds, rounded up to
`CACHE_BLOCK`s: `decoding.cache_positions`; the attention reading only their filled blocks: `attention.attend_cached`)
against what every step did before (`CACHE_BLOCK` made larger than any cache: the caches keep `max_len` positions and
are read whole), interleaved in one run.

    python benchmarks/decode_cache_length.py [--max_lens 160 512 8192] [--repeats 5]

The same chat prompt for all (16 tokens); a token's time is (time for --long tokens - time for --short tokens) /
(long - short), so the prefill cancels; each figure is the median of --repeats after a warm-up, with the runs'
spread. (Issue 32, item 0: decoding speed should not depend on max_len.)
"""

import argparse
import statistics
import time

import jax
import numpy as np

from combinax import decoding, pretrained
from combinax.layers import attention

NAME = "smollm2-135m-instruct"
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
WHOLE = 1 << 30   # a block larger than any cache: caches of max_len positions, each read whole


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--max_lens", type=int, nargs="+", default=[160, 512, 8192])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--short", type=int, default=16)
  parser.add_argument("--long", type=int, default=80)
  args = parser.parse_args()
  _, params, tokenizer = pretrained.load(NAME)
  prompt = np.asarray(tokenizer.encode(PROMPT), np.int32)[None]
  runs = {}
  for max_len in args.max_lens:
    for read, block in (("sized, blocks", attention.CACHE_BLOCK), ("max_len, whole", WHOLE)):
      model = pretrained.model(NAME, mode="predict", max_len=max_len)   # (a model object of its own: its own jit)
      for n in (args.short, args.long):
        def run(model=model, n=n, block=block):
          saved, attention.CACHE_BLOCK = attention.CACHE_BLOCK, block   # read by the call and by its trace
          try:
            return jax.block_until_ready(decoding.autoregressive_sample(model, params, prompt, max_length=n,
                                                                        temperature=0))
          finally:
            attention.CACHE_BLOCK = saved
        run()                                                           # compile and warm up
        runs[(max_len, read, n)] = run
  times = {key: [] for key in runs}
  for _ in range(args.repeats):   # interleaved
    for key, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[key].append(time.perf_counter() - start)
  steps = args.long - args.short
  print(f"SmolLM2-135M float32, batch 1, {prompt.shape[1]}-token prompt, ms a token after the prefill (median of "
        f"{args.repeats}; runs' spread), {jax.devices()[0].platform}, block {attention.CACHE_BLOCK}")
  for max_len in args.max_lens:
    line = [f"max_len {max_len:6d}"]
    for read in ("sized, blocks", "max_len, whole"):
      per = [(b - a) / steps for a, b in zip(times[(max_len, read, args.short)], times[(max_len, read, args.long)])]
      median = (statistics.median(times[(max_len, read, args.long)]) -
                statistics.median(times[(max_len, read, args.short)])) / steps
      line.append(f"{read}: {1e3 * median:7.2f} ms ({1e3 * min(per):.2f}-{1e3 * max(per):.2f}), "
                  f"{1 / median:5.1f} tokens/s")
    print("  ".join(line))


if __name__ == "__main__":
  main()
