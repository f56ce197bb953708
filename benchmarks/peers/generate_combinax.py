"""combinax worker for `benchmarks/inference.py`: SmolLM2 decoded by `decoding.autoregressive_sample` (prefill in
one call, then the whole loop in one jitted `while_loop`), with the weights of `--weights`:

  float32  the cached float32 import (the GGUF dequantized once, at first import)
  int8     llama.cpp's Q8_0 layout (int8, groups of 32, float16 scales; `quant.for_decoding`)
  gguf     the GGUF file's own blocks kept packed (Q4_1 kernels, a Q8_0 table)

both loaded as `combinax-decode --pretrained --quantize` loads them: from the quantized weights kept in the
pretrained cache (`pretrained.load_quantized`; the first load makes them), so no float32 copy is built here.

With `--draft DIR` (a combinax-train run of a small LM with SmolLM2's tokenizer, e.g. the distilled student of
experiments/distill_smollm2.py), `decoding.speculative_sample` proposes `--draft_k` tokens at a time with it, its
weights in the same form; the output is the same greedy text, and the draft's acceptance rate is reported.
"""

import sys
from pathlib import Path

import generation

args = generation.parse_args(__doc__, weights=(str, "float32", "float32 | int8 | gguf"),
                             draft=(str, "", "a run directory: speculative decoding with its model as the draft"),
                             draft_k=(int, 4, "tokens the draft proposes at a time"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import combinax  # noqa: E402
from combinax import decoding, pretrained, quant  # noqa: E402
from combinax.pretrained import llama  # noqa: E402
from combinax.cli import decode as decode_command  # noqa: E402

NAME = "smollm2-135m-instruct"
INT8 = [("blocks/*kernel", quant.QuantSpec("int8", 32)), ("embed/embedding", quant.QuantSpec("int8", 32))]


def main():
  prompt = np.asarray(args.prompt, np.int32)[None]
  # Built for --context positions as a user would (512 by default); decoding sizes its caches to the call (issue 32).
  options = dict(mode="predict", max_len=max(args.context, prompt.shape[1] + args.new))
  if args.weights in ("int8", "gguf"):
    _, params, _ = pretrained.load_quantized(NAME, args.weights)
    model = pretrained.model(NAME, **options)
  elif args.weights == "float32":
    model, params, _ = pretrained.load(NAME, **options)
  else:
    raise SystemExit(f"--weights: float32, int8 or gguf, got {args.weights!r}")
  params = jax.block_until_ready(jax.device_put(params))
  start = llama.start_id(pretrained.config(NAME))   # None: the prompt as it is, as the peers feed it

  if args.draft:
    generate, name = speculative(prompt, options, params, start), f"{args.weights} + draft (k={args.draft_k})"
  else:
    def generate(n):
      return np.asarray(decoding.autoregressive_sample(model, params, prompt, max_length=n, temperature=0.0,
                                                       start_id=start))[0]
    name = args.weights
  generation.serve(generate, args.new, engine=f"combinax {combinax.__version__} (JAX {jax.__version__}), "
                   f"{name}", weights_mb=quant.nbytes(params) / 1e6)


def speculative(prompt, options, params, start):
  """`generate` with the draft of --draft proposing (its weights int8 when the target's are)."""
  options = dict(options, max_len=options["max_len"] + args.draft_k + 1)
  target = pretrained.model(NAME, **options)
  draft = decode_command.load_run(Path(args.draft))
  draft_params = draft.params if args.weights == "float32" else quant.quantize(draft.params, INT8)
  draft_model = draft.build(options["max_len"])

  def generate(n):
    tokens, stats = decoding.speculative_sample(target, params, draft_model, draft_params, prompt, max_length=n,
                                                k=args.draft_k, temperature=0.0, start_id=start)
    print(f"acceptance {stats.acceptance_rate:.3f} over {stats.rounds} rounds", file=sys.stderr, flush=True)
    return np.asarray(tokens)[0]

  return generate


if __name__ == "__main__":
  main()
