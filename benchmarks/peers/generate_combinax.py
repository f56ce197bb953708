"""combinax worker for `benchmarks/inference.py`: SmolLM2 decoded by `decoding.autoregressive_sample` (prefill in
one call, then the whole loop in one jitted `while_loop`), with the weights of `--weights`:

  float32  the cached float32 import (the GGUF dequantized once, at first import)
  int8     float32 quantized by `combinax.quant` into llama.cpp's Q8_0 layout (int8, groups of 32, float16 scales)
  gguf     the GGUF file's own blocks kept packed (`pretrained.load(packed=True)`: Q4_1 kernels, a Q8_0 table)
"""

import generation

args = generation.parse_args(__doc__, weights=(str, "float32", "float32 | int8 | gguf"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import combinax  # noqa: E402
from combinax import decoding, pretrained, quant  # noqa: E402
from combinax.pretrained import llama  # noqa: E402

NAME = "smollm2-135m-instruct"
INT8 = [("blocks/*kernel", quant.QuantSpec("int8", 32)), ("embed/embedding", quant.QuantSpec("int8", 32))]


def main():
  prompt = np.asarray(args.prompt, np.int32)[None]
  options = dict(mode="predict", max_len=prompt.shape[1] + args.new)
  if args.weights == "gguf":
    model, params, _ = pretrained.load(NAME, packed=True, **options)
  elif args.weights in ("float32", "int8"):
    model, params, _ = pretrained.load(NAME, **options)
    if args.weights == "int8":
      params = quant.quantize(params, INT8)
  else:
    raise SystemExit(f"--weights: float32, int8 or gguf, got {args.weights!r}")
  params = jax.block_until_ready(jax.device_put(params))
  start = llama.start_id(pretrained.config(NAME))   # None: the prompt as it is, as the peers feed it

  def generate(n):
    return np.asarray(decoding.autoregressive_sample(model, params, prompt, max_length=n, temperature=0.0,
                                                     start_id=start))[0]

  generation.serve(generate, args.new, engine=f"combinax {combinax.__version__} (JAX {jax.__version__}), "
                   f"{args.weights}", weights_mb=quant.nbytes(params) / 1e6)


if __name__ == "__main__":
  main()
