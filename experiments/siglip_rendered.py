"""configs/siglip_rendered.gin: zero-shot accuracy of the SigLIP dual encoder on held-out rendered words or scenes.

1. Train: `combinax-train --config_file=configs/siglip_rendered.gin` (with `KIND="scenes"`, `HEIGHT=WIDTH=64` and
   `GROUP=4` for scenes; `--config GROUP=1` for none of the hard negatives), unless `--run` names a finished run.
2. Zero-shot: the test split's images (phrases with words the training split never shows; scenes of colour pairs it
   never shows) are each classified as the candidate caption nearest to it. Words: the candidates are the distinct
   phrases of the test images. Scenes: every caption the test colour pairs can make (2 shapes of 3 in order x 4
   relations x the held-out colour pairs). Also recall@1 and @5 of image -> text and text -> image among the pairs,
   and for scenes which parts of the nearest caption are right (colours, shapes, relation), on the held-out scenes
   and on 512 training scenes (among the 576 captions of the training colour pairs).

    python experiments/siglip_rendered.py --kind words [--run runs/siglip_words] [--test_size 1024]
    python experiments/siglip_rendered.py --kind scenes
    python experiments/siglip_rendered.py --kind words --config_file configs/siglip_ppocr.gin   # PP-OCR's tower

Run by hand, not by CI. The recipe's hyperparameters were not tuned (one run, one seed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def train(kind: str, run: str, extra: list[str], config_file: str) -> float:
  settings = [f'KIND="{kind}"'] + (["HEIGHT=64", "WIDTH=64", "GROUP=4"] if kind == "scenes" else []) + extra
  command = [sys.executable, "-m", "combinax.cli.train", f"--config_file={config_file}",
             f"--output_dir={run}"] + [f"--config={s}" for s in settings]
  start = time.time()
  subprocess.run(command, check=True)
  return time.time() - start


def candidates(kind: str, texts: list[str], split: str = "test") -> list[str]:
  from combinax.data import rendered
  return sorted(set(texts)) if kind == "words" else rendered.scene_captions(split)


def load(run: str):
  """The trained dual encoder and its params, from the run directory's configuration and newest checkpoint."""
  import gin
  from combinax.paths import unflatten
  from combinax.store import checkpoints
  import combinax.train  # noqa: F401  (registers everything the stored configuration names)
  with gin.unlock_config():
    gin.parse_config(open(os.path.join(run, "config.gin")).read(), skip_unknown=True)
  model = gin.query_parameter("Trainer.model").scoped_configurable_fn()
  params = unflatten(checkpoints.read_arrays(checkpoints.latest(run), prefix="params"))
  size = (gin.query_parameter("%HEIGHT"), gin.query_parameter("%WIDTH"))
  return model, params, gin.query_parameter("%TEXT_LENGTH"), size


def nearest_captions(model, params, length: int, image_size, kind: str, split: str, size: int, n: int):
  """(the n first images' captions, the candidates, each image's nearest candidate's index, their embeddings)."""
  from combinax import data
  from combinax.models.contrastive import encode_images, encode_texts
  height, width = image_size
  source = data.Rendered(kind, split, size, height=height, width=width)
  examples = [source.data()[i] for i in range(n)]
  images = np.stack([e[0] for e in examples]).astype(np.float32) / 255
  texts = [e[1] for e in examples]
  tokenizer = data.caption_tokenizer()
  def ids(strings):
    return np.stack([data.caption_ids(s, length, tokenizer) for s in strings]).astype(np.int32)
  image_embeddings = encode_images(model, params, images)
  options = candidates(kind, texts, split)
  nearest = np.argmax(image_embeddings @ encode_texts(model, params, ids(options)).T, axis=1)
  return texts, options, nearest, image_embeddings, encode_texts(model, params, ids(texts))


def parts_right(texts, options, nearest) -> dict:
  """Of scenes: how often the nearest caption has both colours, both shapes, the relation of the image's own."""
  right = lambda part: float(np.mean([part(options[p].split()) == part(t.split()) for p, t in zip(nearest, texts)]))
  return {"colours": right(lambda w: (w[1], w[-2])), "shapes": right(lambda w: (w[2], w[-1])),
          "relation": right(lambda w: " ".join(w[3:-3]))}


def evaluate(kind: str, run: str, test_size: int) -> dict:
  from combinax.models.contrastive import retrieval_recall
  model, params, length, size = load(run)
  texts, options, nearest, images, captions = nearest_captions(model, params, length, size, kind, "test",
                                                               test_size, test_size)
  record = {"zero_shot_top1": float(np.mean([options[p] == t for p, t in zip(nearest, texts)])),
            "candidates": len(options), "test_images": test_size, **retrieval_recall(images, captions)}
  if kind == "scenes":   # which parts of the caption it gets right, on held-out and on training scenes
    record["test_parts"] = parts_right(texts, options, nearest)
    texts, options, nearest, _, _ = nearest_captions(model, params, length, size, kind, "train", 20_000, 512)
    record["train_top1"] = float(np.mean([options[p] == t for p, t in zip(nearest, texts)]))
    record["train_candidates"] = len(options)
    record["train_parts"] = parts_right(texts, options, nearest)
  return record


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kind", choices=["words", "scenes"], default="words")
  parser.add_argument("--run", help="a finished run directory (default: train one at runs/siglip_<kind>, or "
                      "runs/<recipe>_<kind> for another --config_file)")
  parser.add_argument("--test_size", type=int, default=1024)
  parser.add_argument("--config_file", default="configs/siglip_rendered.gin",
                      help="the recipe to train (configs/siglip_ppocr.gin: PP-OCR's pretrained image tower, words)")
  parser.add_argument("--config", action="append", default=[], help="extra gin bindings for training")
  parser.add_argument("--json")
  args = parser.parse_args()
  record = {"kind": args.kind}
  recipe = os.path.splitext(os.path.basename(args.config_file))[0]
  run = args.run or ("runs/siglip" if recipe == "siglip_rendered" else f"runs/{recipe}") + f"_{args.kind}"
  if not args.run:
    record["train_seconds"] = round(train(args.kind, run, args.config, args.config_file), 1)
  record.update(evaluate(args.kind, run, args.test_size))
  print(json.dumps(record, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  main()
