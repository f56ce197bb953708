"""configs/kws_spoken.gin: which of 30 spoken words was said, by speakers the model never heard, over seeds.

Each seed trains `combinax-train --config_file=configs/kws_spoken.gin` (the seed sets the initialisation, dropout
and the data's order; the examples are the same) unless its run directory is finished already, then evaluates the
last checkpoint on
- the test split: 1,024 words said by the held-out speakers (every fifth eSpeak NG variant, in every accent);
- 1,024 new words said by the training speakers (the training split's generator with another data seed), which
  separates what held-out speakers cost from what new utterances cost.
Prints each seed's accuracies and their mean +- sd. The recipe's settings are untuned.

    python experiments/kws_spoken.py [--seeds 0 1 2] [--runs runs/kws_spoken] [--json out.json]

Run by hand, not by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np


def train(run: str, seed: int):
  subprocess.run([sys.executable, "-m", "combinax.cli.train", "--config_file=configs/kws_spoken.gin",
                  f"--output_dir={run}", f"--config=Trainer.seed={seed}",
                  f"--config=train/spoken_pipeline.seed={seed}"],
                 check=True)


def load(run: str):
  """The trained model and its params, from the run directory's configuration and newest checkpoint."""
  import gin
  import combinax.train  # noqa: F401  (registers everything the stored configuration names)
  from combinax.paths import unflatten
  from combinax.store import checkpoints
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config(open(os.path.join(run, "config.gin")).read(), skip_unknown=True)
  model = gin.query_parameter("Trainer.model").scoped_configurable_fn()
  return model, unflatten(checkpoints.read_arrays(checkpoints.latest(run), prefix="params"))


def accuracy(model, params, split: str, data_seed: int, size: int = 1024) -> float:
  import jax
  from combinax import data
  batches = data.spoken_pipeline(split=split, size=size, batch_size=256, data_seed=data_seed, repeat=False)()
  apply = jax.jit(lambda p, x: model.apply(p, {}, x)[0])
  right = [np.asarray(apply(params, frames)).argmax(-1) == labels for frames, labels in batches]
  return float(np.mean(np.concatenate(right)))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--runs", default="runs/kws_spoken", help="run directories: this, then _seed1, _seed2, ...")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  results = []
  for seed in args.seeds:
    run = args.runs if seed == 0 else f"{args.runs}_seed{seed}"
    if not any(Path(run).glob("step_*")):
      train(run, seed)
    model, params = load(run)
    results.append({"seed": seed, "run": run, "held_out_speakers": accuracy(model, params, "test", 0),
                    "training_speakers_new_words": accuracy(model, params, "train", 1)})
    print(json.dumps(results[-1]))
  summary = {}
  for key in ("held_out_speakers", "training_speakers_new_words"):
    values = [r[key] for r in results]
    summary[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values}
    print(f"{key}: {100 * summary[key]['mean']:.2f}% +- {100 * summary[key]['sd']:.2f}% over seeds {args.seeds}")
  if args.json:
    Path(args.json).write_text(json.dumps({"runs": results, "summary": summary}, indent=1))


if __name__ == "__main__":
  main()
