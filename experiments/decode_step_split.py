"""Where a quantized decoding step's time goes (issue 32): SmolLM2-135M decoded greedily at batch 1 with its
weights as `combinax-decode --quantize=KIND` has them, timed as it runs and with every quantized matmul replaced by a
stand-in that costs nothing (a broadcast of x's sum: the rest of the step still depends on it, so XLA removes
nothing else). The difference is what the quantized matmuls (the kernel, or XLA's dot) cost a token; the rest is
attention, norms, the residual stream, sampling and the loop.

    python experiments/decode_step_split.py [--kinds int8 gguf] [--repeats 5]

ms a token = (time for 80 tokens - time for 16) / 64 after a 16-token prompt, median of --repeats, interleaved.
"""

import argparse
import contextlib

import jax.numpy as jnp
import numpy as np

from combinax import pretrained
from combinax.quant import kernels
from combinax.quant.weights import QuantizedArray
from integer_activations import decoding_runs, interleaved, ms_a_token   # (experiments/, the script's own folder)

NAME = "smollm2-135m-instruct"
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
CONTRACT = QuantizedArray.contract


def free_contract(weight, x, *, axis):
  """A stand-in for `QuantizedArray.contract` with the right shape and a dependence on x, and no matmul."""
  del axis
  n = weight.values.shape[-3]
  return jnp.broadcast_to(jnp.sum(x, axis=-1, keepdims=True) * 1e-9, x.shape[:-1] + (n,)).astype(x.dtype)


@contextlib.contextmanager
def contracting(way):
  QuantizedArray.contract = CONTRACT if way == "as it runs" else free_contract
  try:
    yield
  finally:
    QuantizedArray.contract = CONTRACT


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kinds", nargs="*", default=["int8", "gguf"])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  tokenizer = pretrained.tokenizer(NAME)
  prompt = np.asarray(tokenizer.encode(PROMPT), np.int32)[None]
  runs = {}
  for kind in args.kinds:
    _, params, _ = pretrained.load_quantized(NAME, kind)
    for way in ("as it runs", "matmuls free"):
      for n, run in decoding_runs(params, prompt, lambda way=way: contracting(way), max_len=512).items():
        runs[(kind, way, n)] = run
  times = interleaved(runs, args.repeats)
  print(f"SmolLM2-135M, batch 1, greedy, median of {args.repeats}; kernel: {kernels.isa()}")
  for kind in args.kinds:
    ms = {way: ms_a_token(times[(kind, way, 16)], times[(kind, way, 80)]) for way in ("as it runs", "matmuls free")}
    print(f"{kind:5s} step {ms['as it runs']:6.2f} ms; without the quantized matmuls {ms['matmuls free']:6.2f} ms; "
          f"the matmuls {ms['as it runs'] - ms['matmuls free']:6.2f} ms")


if __name__ == "__main__":
  main()
