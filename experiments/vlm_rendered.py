"""configs/vlm_smollm2_rendered.gin: how well the image-prefix SmolLM2 reads held-out rendered phrases (character
error rate) and answers held-out scene questions (exact match), greedy decoding with the image filled once.

1. Train: `combinax-train --config_file=configs/vlm_smollm2_rendered.gin` (`KIND="scenes"`, `HEIGHT=WIDTH=64` for
   scenes), unless `--run` names a finished run.
2. Decode the first `--test_size` examples of the test split (phrases with words the training split never shows;
   scenes of colour pairs it never shows) with their prompts, greedily (`combinax-decode --image`'s path:
   `cli.decode.load_run`, `decoding.autoregressive_sample(..., inputs=(images, prompt lengths))`), and score them:
   words, the character error rate (Levenshtein distance / the phrase's length, summed over phrases); scenes, exact
   match of the answer, per kind of question too. The same on `--test_size` training examples says how much of the
   gap is generalisation.

    python experiments/vlm_rendered.py --kind scenes --run runs/vlm_scenes [--test_size 512]
    python experiments/vlm_rendered.py --kind words --run runs/vlm_words
    python experiments/vlm_rendered.py --kind words --run runs/vlm_ppocr --config_file configs/vlm_smollm2_ppocr.gin

Run by hand, not by CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def train(kind: str, run: str, extra: list[str], config_file: str) -> float:
  settings = [f'KIND="{kind}"'] + (["HEIGHT=64", "WIDTH=64"] if kind == "scenes" else []) + extra
  command = [sys.executable, "-m", "combinax.cli.train", f"--config_file={config_file}",
             f"--output_dir={run}"] + [f"--config={s}" for s in settings]
  start = time.time()
  subprocess.run(command, check=True)
  return time.time() - start


def edit_distance(a: str, b: str) -> int:
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    previous, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
  return row[-1]


def question_kind(question: str) -> str:
  return ("colour" if question.startswith("what colour") else "shape" if question.startswith("what shape") else
          "relation: which" if question.startswith("what is") else "relation: yes/no")


def answers(lm, kind: str, split: str, size: int, n: int, height: int, width: int, batch: int = 32):
  """(examples' (prompt, truth), the model's answers) for the first `n` examples of the split."""
  from combinax import data, decoding
  from combinax.cli.decode import text_of
  source = data.Rendered(kind, split, size, height=height, width=width, repeat=False)()
  examples = [next(source) for _ in range(n)]
  asked = [data.prompt_and_answer(e) for e in examples]
  said = [None] * n
  by_length = {}
  for i, (prompt, _) in enumerate(asked):   # a batch's prompts are its prefix: one length per call
    by_length.setdefault(len(data.prompt_ids(lm.tokenizer, prompt)), []).append(i)
  decoder = lm.build(256)
  for length, indices in sorted(by_length.items()):
    for start in range(0, len(indices), batch):
      chunk = indices[start:start + batch]
      images = np.stack([np.asarray(examples[i][0], np.float32) / 255 for i in chunk])
      prompts = np.stack([data.prompt_ids(lm.tokenizer, asked[i][0]) for i in chunk])
      out = decoding.autoregressive_sample(decoder, lm.params, prompts, max_length=12, temperature=0,
                                           eos_id=lm.tokenizer.eos_id,
                                           inputs=(images, np.full((len(chunk),), length, np.int32)))
      for i, ids in zip(chunk, np.asarray(out)):
        said[i] = text_of(lm, ids).strip()
  return asked, said


def score(kind: str, asked, said) -> dict:
  if kind == "words":
    errors = sum(edit_distance(s, truth) for (_, truth), s in zip(asked, said))
    return {"cer": errors / sum(len(truth) for _, truth in asked),
            "phrases_exact": float(np.mean([s == truth for (_, truth), s in zip(asked, said)]))}
  right = [s == truth for (_, truth), s in zip(asked, said)]
  out = {"exact_match": float(np.mean(right))}
  for name in sorted({question_kind(q) for q, _ in asked}):
    picked = [r for (q, _), r in zip(asked, right) if question_kind(q) == name]
    out[f"exact_match ({name}, {len(picked)})"] = float(np.mean(picked))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kind", choices=("words", "scenes"), default="scenes")
  parser.add_argument("--run", default=None, help="a finished run directory (else one is trained)")
  parser.add_argument("--config_file", default="configs/vlm_smollm2_rendered.gin",
                      help="the recipe to train (configs/vlm_smollm2_ppocr.gin: PP-OCR's pretrained tower, words)")
  parser.add_argument("--config", action="append", default=[], help="extra bindings for training")
  parser.add_argument("--test_size", type=int, default=512)
  parser.add_argument("--decode_config", action="append", default=[],
                      help="bindings added to the run's configuration when loading it (e.g. 'image/ViT.channels = 3' "
                           "for a run trained before the recipe named its channels)")
  args = parser.parse_args()
  run = args.run or f"runs/vlm_{args.kind}"
  seconds = None if args.run and Path(run, "config.gin").exists() else \
      train(args.kind, run, args.config, args.config_file)
  from combinax.cli.decode import load_run
  lm = load_run(Path(run), args.decode_config)
  height, width = lm.image[:2]
  result = {"kind": args.kind, "run": run, "train_seconds": seconds}
  for split, size in (("test", 1024), ("train", 20000)):
    start = time.time()
    asked, said = answers(lm, args.kind, split, size, args.test_size, height, width)
    result[split] = {**score(args.kind, asked, said), "decode_seconds": round(time.time() - start, 1),
                     "examples": [f"{p} -> {s!r} (truth {t!r})" for (p, t), s in list(zip(asked, said))[:6]]}
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
