"""Prototype for issue 32, item 1: what multiplying int8 activations by int8 weights (XLA's s8 x s8 -> s32 dot) would
cost SmolLM2-135M in perplexity and buy in decoding speed, before it is built into `combinax.quant`.

    python experiments/integer_activations.py [--tokens 2048] [--repeats 3] [--groups 64 192]
    python experiments/integer_activations.py --kernel [--tokens 2048] [--repeats 3]

--kernel compares instead the ways `combinax.quant.kernels` gives (Q8_0 and Q4_1 weights, groups of 32): XLA's dot
on each weight dequantized just before it (the path before the kernel), the kernel with float32 activations (what
`contract` now uses for decoding), and the kernel with int8 activations (llama.cpp's arithmetic, for every row).

Integer contractions stand in for `QuantizedArray._contract_rows` (the one place a quantized weight meets its
inputs), swapped in for a measurement and put back after it (a prototype's shortcut: the built feature will be an
option the user names):
- per channel: weights int8 with one scale per output, each input row quantized to int8 with one scale, one dot;
- per channel, 2 rows: the same with a single decoding row padded to two (XLA sends a one-row s8 dot to its own
  loop after converting the weight, two rows to a library kernel: benchmarks/int8_dots.py);
- groups of 32 (llama.cpp's Q8_0 x Q8_0): scales per 32 inputs on both sides, a dot batched over the groups;
- groups of --groups (64 and 192: 9 and 3 groups of SmolLM2's 576 inputs), the same with a decoding row padded to
  two, and those weights dequantized (what the coarser groups alone cost in perplexity).
Perplexity over the first --tokens KJV test tokens as `benchmarks/quant_fidelity.py` scores it; ms a token of greedy
decoding after a 16-token prompt ((80 - 16 tokens) / 64, median of --repeats, interleaved).
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quant_fidelity  # noqa: E402

from combinax import decoding, pretrained, quant  # noqa: E402
from combinax.quant import kernels  # noqa: E402
from combinax.quant.weights import QuantizedArray  # noqa: E402

NAME = quant_fidelity.NAME
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
DEQUANTIZED = QuantizedArray._contract_rows


def _int8_rows(x):
  """x (..., k) float32 -> (int8 values, float32 scale (..., 1)): one scale over the last axis."""
  scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127.0
  return jnp.round(x / jnp.where(scale == 0, 1.0, scale)).astype(jnp.int8), scale


def per_channel(pad_to: int):
  def contract(weight, rows):
    n, n_groups, group = weight.values.shape
    if weight.kind != "int8" or n_groups != 1:
      return DEQUANTIZED(weight, rows)
    b = rows.shape[0]
    xq, xs = _int8_rows(jnp.pad(rows, ((0, max(0, pad_to - b)), (0, 0))))
    acc = lax.dot_general(xq, weight.values.reshape(n, group), (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.int32)
    return (acc.astype(jnp.float32) * xs * weight.scale.astype(jnp.float32).reshape(1, n))[:b]
  return contract


def blocked(size: int, pad_to: int = 1):
  """Weights int8 in groups of `size` inputs, each input row quantized to int8 per group of `size` (one scale per
  row and group), a dot batched over the groups, scales applied after; other weights as today."""
  def contract(weight, rows):
    n, n_groups, group = weight.values.shape
    if weight.kind != "int8" or group != size:
      return DEQUANTIZED(weight, rows)
    b = rows.shape[0]
    padded = jnp.pad(rows, ((0, max(0, pad_to - b)), (0, 0)))
    xq, xs = _int8_rows(padded.reshape(padded.shape[0], n_groups, group))
    acc = lax.dot_general(xq, weight.values, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.int32)
    return jnp.einsum("gbn,bg,ng->bn", acc.astype(jnp.float32), xs[..., 0], weight.scale.astype(jnp.float32))[:b]
  return contract


groups_of_32 = blocked(32)


@contextlib.contextmanager
def contracting_with(fn):
  QuantizedArray._contract_rows = fn
  try:
    yield
  finally:
    QuantizedArray._contract_rows = DEQUANTIZED


XLA_DOT, KERNEL, KERNEL_INT8 = "XLA's dot", "kernel, float32 x", "kernel, int8 x"
QDOT, MAX_ROWS = kernels.qdot, kernels.MAX_ROWS


@contextlib.contextmanager
def computing_by(way):
  """XLA_DOT: every contraction by XLA's dot; KERNEL: as `contract` does (the kernel for up to MAX_ROWS rows);
  KERNEL_INT8: the kernel's int8 arithmetic for every contraction, however many rows (perplexity included)."""
  kernels.MAX_ROWS = {XLA_DOT: -1, KERNEL: MAX_ROWS, KERNEL_INT8: 2 ** 30}[way]
  if way == KERNEL_INT8:
    kernels.qdot = lambda x, weight: QDOT(x, weight, activations="int8")
  try:
    yield
  finally:
    kernels.MAX_ROWS, kernels.qdot = MAX_ROWS, QDOT


def decoding_runs(weights, prompt, context, *, max_len: int) -> dict:
  """{n: a call greedily decoding n tokens after `prompt` with `weights` inside `context()`, compiled once}, for
  n = 16 and 80 (a fresh model object: its own jit cache)."""
  decoder = pretrained.model(NAME, mode="predict", max_len=max_len)
  runs = {}
  for n in (16, 80):
    def run(n=n):
      with context():
        return jax.block_until_ready(decoding.autoregressive_sample(decoder, weights, prompt, max_length=n,
                                                                    temperature=0.0, start_id=None))
    run()
    runs[n] = run
  return runs


def ms_a_token(seconds_16: list, seconds_80: list) -> float:
  """Milliseconds a token after the prompt: (median time for 80 tokens - median for 16) / 64."""
  return 1e3 * (statistics.median(seconds_80) - statistics.median(seconds_16)) / 64


def interleaved(runs: dict, repeats: int) -> dict:
  """{key: [seconds of each of `repeats` calls of runs[key]]}, the runs taking turns."""
  times = {key: [] for key in runs}
  for _ in range(repeats):
    for key, run in runs.items():
      start = time.perf_counter()
      run()
      times[key].append(time.perf_counter() - start)
  return times


def measure(ways, context, weights_of, tokens, repeats):
  """{way: (perplexity, ms a token)}: each way's weights `weights_of(way)` scored and decoded inside `context(way)`,
  the decoding timed interleaved."""
  model, params, tokenizer = pretrained.load(NAME)
  ids = quant_fidelity.kjv_tokens(tokenizer, tokens)
  prompt = np.asarray(tokenizer.encode(PROMPT), np.int32)[None]
  perplexity, runs = {}, {}
  for way in ways:
    weights = weights_of(way, params)
    with context(way):
      perplexity[way], _ = quant_fidelity.score(pretrained.model(NAME), weights, ids)   # a model object: its own jit
    for n, run in decoding_runs(weights, prompt, lambda way=way: context(way), max_len=160).items():
      runs[(way, n)] = run
  times = interleaved(runs, repeats)
  ms = {way: ms_a_token(times[(way, 16)], times[(way, 80)]) for way in ways}
  return {way: (perplexity[way], ms[way]) for way in ways}


def kernel_ways(args):
  """--kernel: float32, then Q8_0 and Q4_1 weights (groups of 32, the table in Q8_0) each way of KERNEL_WAYS."""
  rules = {kind: [("blocks/*kernel", quant.QuantSpec(kind, 32)), quant_fidelity.EMBED8] for kind in ("int8", "q4_1")}
  ways = ["float32"] + [f"{kind}/32, {way}" for kind in rules for way in (XLA_DOT, KERNEL, KERNEL_INT8)]
  weights_of = lambda way, params: params if way == "float32" else quant.quantize(params, rules[way.split("/")[0]])
  context = lambda way: computing_by(way.split(", ", 1)[1] if ", " in way else XLA_DOT)
  found = measure(ways, context, weights_of, args.tokens, args.repeats)
  base = found["float32"][0]
  print(f"SmolLM2-135M, {args.tokens} KJV test tokens; greedy decoding, batch 1, median of {args.repeats}; kernel "
        f"{kernels.isa()}")
  for way, (ppl, ms) in found.items():
    print(f"{way:36s} perplexity {ppl:.3f} ({100 * (ppl / base - 1):+.2f}%)  {ms:6.2f} ms a token")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tokens", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--groups", type=int, nargs="*", default=[64, 192],
                      help="group sizes (dividing 576 and 1536) of the blocked integer path, beside 32")
  parser.add_argument("--kernel", action="store_true", help="compare the ways of combinax.quant.kernels instead")
  args = parser.parse_args()
  if args.kernel:
    return kernel_ways(args)
  per_channel_rules = [("blocks/*kernel", "int8"), quant_fidelity.EMBED8]
  by_group = lambda size: [("blocks/*kernel", quant.QuantSpec("int8", size)), quant_fidelity.EMBED8]
  ways = {"float32": (None, DEQUANTIZED),
          "int8 per channel, dequantized (today)": (per_channel_rules, DEQUANTIZED),
          "int8 per channel, s8 x s8": (per_channel_rules, per_channel(1)),
          "int8 per channel, s8 x s8, rows padded to 2": (per_channel_rules, per_channel(2)),
          "int8/32 (Q8_0), dequantized (today)": (by_group(32), DEQUANTIZED),
          "int8/32 (Q8_0), s8 x s8 per 32": (by_group(32), groups_of_32)}
  for size in args.groups:   # coarser groups: fewer, longer contractions in the batched dot
    ways[f"int8/{size}, dequantized"] = (by_group(size), DEQUANTIZED)
    ways[f"int8/{size}, s8 x s8 per {size}, rows padded to 2"] = (by_group(size), blocked(size, 2))
  weights_of = lambda way, params: params if ways[way][0] is None else quant.quantize(params, ways[way][0])

  @contextlib.contextmanager
  def context(way):   # the prototypes replace XLA's path: the kernel is kept out
    with computing_by(XLA_DOT), contracting_with(ways[way][1]):
      yield

  found = measure(list(ways), context, weights_of, args.tokens, args.repeats)
  base = found["float32"][0]
  print(f"SmolLM2-135M, {args.tokens} KJV test tokens; greedy decoding, batch 1, median of {args.repeats}")
  for way, (ppl, ms) in found.items():
    print(f"{way:45s} perplexity {ppl:.3f} ({100 * (ppl / base - 1):+.2f}%)  {ms:6.2f} ms a token")


if __name__ == "__main__":
  main()
