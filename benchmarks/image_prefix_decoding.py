"""Decoding with an image prefix: per-token time after the prefill, SmolLM2-135M alone vs SmolLM2 under
configs/vlm_smollm2_rendered.gin's ViT (the image filled once, in the first call, by `cl.Prefill`).

    python benchmarks/image_prefix_decoding.py [--repeats 5] [--batch 1] [--max_len 256]

Both decoders use SmolLM2's bundled weights (the ViT and projector are randomly initialised: speed does not depend
on them), the same prompt, the same KV-cache size (`--max_len`) and greedy decoding with no EOS, so every call makes
its tokens. A token's time after the prefill is (time for --long tokens - time for --short tokens) / (long - short):
the prefill (the image and the prompt) cancels. The two models' runs are interleaved, each a median of --repeats
after a warm-up. Prints one line per model and the ratio.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from combinax import decoding, models, pretrained

NAME = "smollm2-135m-instruct"


def vision():
  """configs/vlm_smollm2_rendered.gin's ViT on 64 x 64 scenes: 64 image tokens."""
  return models.ViT(None, 192, patch_size=8, d_ff=384, n_layers=4, n_heads=4, pool="none", dropout=0.0,
                    image_size=(64, 64))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--max_len", type=int, default=256)
  parser.add_argument("--short", type=int, default=16)
  parser.add_argument("--long", type=int, default=80)
  args = parser.parse_args()
  _, lm_params, tokenizer = pretrained.load(NAME)
  text_lm = pretrained.model(NAME, mode="predict", max_len=args.max_len)
  image_lm = pretrained.image_prefix_model(NAME, vision(), mode="predict", max_len=args.max_len)
  images = np.random.default_rng(0).uniform(size=(args.batch, 64, 64, 3)).astype(np.float32)
  prompt = np.tile(np.asarray(tokenizer.encode("what colour is the circle?"), np.int32), (args.batch, 1))
  eval_model = pretrained.image_prefix_model(NAME, vision())
  image_params, _ = eval_model.init(jax.random.key(0), (images, np.full((args.batch,), prompt.shape[1], np.int32),
                                                        prompt))
  image_params = {**image_params, **lm_params}   # the LM's own weights; image/... random
  inputs = (images, np.full((args.batch,), prompt.shape[1], np.int32))
  n_image = decoding.prefilled_positions(image_lm, inputs)

  def run(model, params, n, extra):
    return lambda: decoding.autoregressive_sample(model, params, prompt, max_length=n, temperature=0, **extra)

  runs = {("text", n): run(text_lm, lm_params, n, {}) for n in (args.short, args.long)}
  runs.update({("image", n): run(image_lm, image_params, n, {"inputs": inputs}) for n in (args.short, args.long)})
  times = {key: [] for key in runs}
  for fn in runs.values():
    jax.block_until_ready(fn())   # compile and warm up
  for _ in range(args.repeats):   # interleaved
    for key, fn in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[key].append(time.perf_counter() - start)
  median = {key: statistics.median(t) for key, t in times.items()}
  per_token = {}
  for name in ("text", "image"):
    per_token[name] = (median[(name, args.long)] - median[(name, args.short)]) / (args.long - args.short)
    spread = [(b - a) / (args.long - args.short) for a, b in zip(times[(name, args.short)], times[(name, args.long)])]
    print(f"{name:5s}  prefix {n_image if name == 'image' else 0:3d} image + {prompt.shape[1]} prompt tokens  "
          f"{1e3 * per_token[name]:6.2f} ms/token after the prefill ({1 / per_token[name]:6.1f} tokens/s; runs "
          f"{min(spread) * 1e3:.2f}-{max(spread) * 1e3:.2f} ms)  first {args.short} tokens in "
          f"{median[(name, args.short)]:.3f} s")
  print(f"image / text per token: {per_token['image'] / per_token['text']:.3f} (batch {args.batch}, max_len "
        f"{args.max_len}, {jax.devices()[0].platform})")


if __name__ == "__main__":
  main()
