"""Greedy decoding speed of SmolLM2-135M at batch 1 with float32, int8 and 4-bit weights (combinax.quant).

    python benchmarks/inference.py [--new 128] [--repeats 5]

A 22-token prompt, then `--new` tokens (greedy; the EOS is ignored, so every run makes them all), each setting
compiled first and then timed `--repeats` times, the settings interleaved so that the machine's drift hits all of
them alike; the best time of each is reported (tokens/s), with the time to the first token (the prompt's prefill
and one token) and the params' bytes. Issue 18's targets: int8 >= 1.5x float32's tokens/s, and the peers (PyTorch
transformers, llama.cpp) in the same run: not yet here.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from combinax import decoding, pretrained, quant

NAME = "smollm2-135m-instruct"
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
EMBED8 = ("embed/embedding", quant.QuantSpec("int8", 32))
SETTINGS = {
    "float32": None,
    "int8/32": [("blocks/*kernel", quant.QuantSpec("int8", 32)), EMBED8],   # llama.cpp's Q8_0
    "q4_1/32": [("blocks/*kernel", "q4_1"), EMBED8],                       # the bundled file's own Q4_1
}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  _, params, tokenizer = pretrained.load(NAME, mode="eval")
  prompt = np.asarray(tokenizer.encode(PROMPT), np.int32)[None]
  decoder = pretrained.model(NAME, mode="predict", max_len=prompt.shape[1] + args.new + 1)
  weights = {name: params if rules is None else jax.block_until_ready(quant.quantize(params, rules))
             for name, rules in SETTINGS.items()}

  def generate(w, n):
    return np.asarray(decoding.autoregressive_sample(decoder, w, prompt, max_length=n, temperature=0.0))

  outputs = {name: (generate(w, args.new), generate(w, 1)) for name, w in weights.items()}   # compiles
  best = {name: [np.inf, np.inf] for name in weights}
  for _ in range(args.repeats):
    for name, w in weights.items():
      for i, n in enumerate((args.new, 1)):
        started = time.perf_counter()
        generate(w, n)
        best[name][i] = min(best[name][i], time.perf_counter() - started)
  print(f"{NAME}, batch 1, prompt of {prompt.shape[1]} tokens + {args.new} new (greedy), best of {args.repeats}, "
        f"{jax.device_count()} device(s)")
  print(f"{'weights':>9} {'tokens/s':>9} {'vs float32':>10} {'first token ms':>15} {'params MB':>10} {'same tokens':>12}")
  reference = best["float32"][0]
  for name, (total, first) in best.items():
    same = np.mean(outputs[name][0] == outputs["float32"][0])
    print(f"{name:>9} {args.new / total:9.1f} {reference / total:9.2f}x {first * 1e3:15.1f} "
          f"{quant.nbytes(weights[name]) / 1e6:10.1f} {same:12.1%}")


if __name__ == "__main__":
  main()
