"""How well the bundled PP-OCRv4 recogniser ("ppocr-v4-rec") reads the project's rendered phrases by itself: greedy
CTC decoding of the first `--n` test phrases (each holds a word the training split never shows; the recogniser
never saw any of them), at the line sizes given. The reference for configs/vlm_smollm2_ppocr.gin, which puts the
same recogniser's features before SmolLM2.

    python experiments/ppocr_rendered.py --n 512 --widths 192 256

Run by hand, not by CI.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--n", type=int, default=512)
  parser.add_argument("--widths", type=int, nargs="+", default=[192, 256])
  parser.add_argument("--split", default="test")
  args = parser.parse_args()
  from vlm_rendered import edit_distance

  from combinax import data, pretrained
  from combinax.models.ocr import HEIGHT, ctc_greedy
  model, params, chars = pretrained.load("ppocr-v4-rec")
  apply = jax.jit(model.apply)
  results = {}
  for width in args.widths:
    source = data.Rendered("words", args.split, 1024 if args.split == "test" else 20000, height=HEIGHT, width=width,
                           repeat=False)()
    examples = [next(source) for _ in range(args.n)]
    truth = [data.prompt_and_answer(e)[1] for e in examples]
    images = np.stack([np.asarray(e[0], np.float32) / 255 for e in examples])
    said = []
    for start in range(0, args.n, 64):
      logits, _ = apply(params, {}, images[start:start + 64])
      said += [chars.decode(ids).strip() for ids in ctc_greedy(logits)]
    errors = sum(edit_distance(s, t) for s, t in zip(said, truth))
    results[f"{HEIGHT}x{width}"] = {"cer": errors / sum(len(t) for t in truth),
                                    "phrases_exact": float(np.mean([s == t for s, t in zip(said, truth)])),
                                    "examples": [f"{s!r} (truth {t!r})" for s, t in list(zip(said, truth))[:6]]}
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
