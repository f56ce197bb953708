"""A ViT classification recipe's hyperparameters chosen on validation images, then its test accuracy over seeds.

Recipes (`--recipe`):
- digits: configs/vit_digits.gin on the bundled 8x8 digits. Validation: every 5th training image ("validation"),
  the runs that choose training on the rest ("fit").
- glyphs: configs/vit_glyphs.gin on rendered characters (data.rendered "glyphs", 36 classes). Validation: 5,000
  images of the "validation" split (drawn as the training images are, from their own seeds); the runs that choose
  train on the whole training split, as the reported runs do.

1. Choose: each setting of the recipe's grid trains `combinax-train --config_file=<recipe>` and is evaluated on the
   validation images, never on the test split. The best validation accuracy at the end of the run wins (ties: lower
   loss).
2. Report: the chosen setting trains on the whole training split for each seed and is evaluated once, at its last
   step, on the test images; mean, standard deviation and range over the seeds.

    python experiments/vit_classification.py --recipe digits [--seeds 0 1 2] [--json out.json]   # ~15 min, 2 cores
    python experiments/vit_classification.py --recipe glyphs [--seeds 0 1 2] [--json out.json]   # ~65 min, 2 cores

Run by hand, not by CI. Each run is its own `combinax-train` process, so each line of the output can be rerun alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RECIPES = {
    "digits": {
        "config": "configs/vit_digits.gin",
        "grid": {   # (binding, values): every combination runs once on fit/validation
            "train/image_pipeline.max_shift": [0, 1],
            "ViT.dropout": [0.1, 0.2],
            "optax.adamw.weight_decay": [0.05, 0.3],
        },
        "validation": ['train/image_pipeline.split="fit"', 'eval/image_pipeline.split="validation"',
                       "eval/image_pipeline.batch_size=287"],
        "seed": ["train/image_pipeline.seed={seed}"],
        "target": 0.97,
    },
    "glyphs": {
        "config": "configs/vit_glyphs.gin",
        "grid": {"cosine.peak": [1e-3, 2e-3]},
        "validation": ['eval/glyph_pipeline.split="validation"'],
        "seed": ["train/glyph_pipeline.seed={seed}"],
        "target": None,
    },
}


def run(recipe: dict, bindings: dict, *, seed: int, held_out: str, output_dir: str) -> dict:
  """One `combinax-train` run of the recipe with `bindings`; returns its last eval record and its wall time."""
  evaluation = recipe["validation"] if held_out == "validation" else []
  settings = [f"{k}={v}" for k, v in bindings.items()] + evaluation + [
      f"Trainer.seed={seed}", *(s.format(seed=seed) for s in recipe["seed"]), "Trainer.log_every=500"]
  command = [sys.executable, "-m", "combinax.cli.train", f"--config_file={recipe['config']}",
             f"--output_dir={output_dir}"]
  command += [f"--config={s}" for s in settings]
  start = time.time()
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  with open(os.path.join(output_dir, "metrics.jsonl")) as f:
    evals = [r for r in map(json.loads, f) if "eval/accuracy" in r]
  return {"settings": settings, "accuracy": evals[-1]["eval/accuracy"], "loss": evals[-1]["eval/loss"],
          "step": evals[-1]["step"], "seconds": round(time.time() - start, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--recipe", choices=sorted(RECIPES), default="digits")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--json", help="write every run's record here")
  args = parser.parse_args()
  recipe = RECIPES[args.recipe]
  records = {"recipe": args.recipe, "choose": [], "report": []}
  with tempfile.TemporaryDirectory() as root:
    for i, values in enumerate(itertools.product(*recipe["grid"].values())):
      bindings = dict(zip(recipe["grid"], values))
      record = run(recipe, bindings, seed=0, held_out="validation", output_dir=os.path.join(root, f"choose{i}"))
      records["choose"].append({"bindings": bindings, **record})
      print(f"validation  {bindings}  accuracy {record['accuracy']:.4f}  loss {record['loss']:.4f}  "
            f"({record['seconds']} s)", flush=True)
    best = max(records["choose"], key=lambda r: (r["accuracy"], -r["loss"]))["bindings"]
    print(f"chosen on validation: {best}", flush=True)
    for seed in args.seeds:
      record = run(recipe, best, seed=seed, held_out="test", output_dir=os.path.join(root, f"report{seed}"))
      records["report"].append({"seed": seed, **record})
      print(f"test  seed {seed}  accuracy {record['accuracy']:.4f}  loss {record['loss']:.4f}  "
            f"({record['seconds']} s)", flush=True)
  accuracies = [r["accuracy"] for r in records["report"]]
  spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
  target = f"; target >= {recipe['target']}" if recipe["target"] else ""
  print(f"test accuracy over seeds {args.seeds}: {statistics.mean(accuracies):.4f} +- {spread:.4f} "
        f"(range {min(accuracies):.4f}-{max(accuracies):.4f}){target}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(records, f, indent=1)


if __name__ == "__main__":
  main()
