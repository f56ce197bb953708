"""The `Trainer`'s own cost: steps/s of the real training loop (`combinax-train`'s) vs its bare jitted step.

    python benchmarks/trainer_overhead.py [--steps 120] [--log-every 10] [--rounds 2]

The work is `peers/work.py`'s Transformer LM (AdamW, no clipping) on the bundled KJV corpus: the loop reads
`lm_pipeline` batches (SentencePiece 8k, packed to 128, batch 16), logs every `--log-every` steps (metrics.jsonl,
TensorBoard, a progress line) and saves a checkpoint at the end. Its rate is the median of the steps/s it logs,
the first interval (compilation) left out. The bare step is the same `TrainStep` on the same batches, held in
memory and run back to back. The two alternate `--rounds` times; the overhead is bare / loop - 1 (aim <= 3%).
"""

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import work  # noqa: E402

from combinax import data  # noqa: E402
from combinax import layers as cl  # noqa: E402
from combinax.models import TransformerLM  # noqa: E402
from combinax.store.logging import read_metrics  # noqa: E402
from combinax.train import Trainer, TrainStep, TrainTask, objective, schedules  # noqa: E402

CONFIG = work.WORKS["transformer"]


def model():
  return TransformerLM(CONFIG["vocab"], d_model=CONFIG["d_model"], d_ff=CONFIG["d_ff"],
                       n_layers=CONFIG["n_layers"], n_heads=CONFIG["n_heads"], dropout=CONFIG["dropout"],
                       max_len=CONFIG["seq"])


def pipeline():
  return data.lm_pipeline("kjv", length=CONFIG["seq"], batch_size=CONFIG["batch"],
                          tokenizer=data.tokenizer_for("kjv", "sentencepiece", CONFIG["vocab"]))


def loop_rate(steps: int, log_every: int) -> float:
  """Median steps/s the Trainer logs, after its first logging interval."""
  task = TrainTask(data=pipeline(), optimizer=optax.adamw, schedule=schedules.constant(CONFIG["lr"]),
                   weight_decay=CONFIG["weight_decay"], clip_norm=None, fuse_loss=True)
  with tempfile.TemporaryDirectory() as output_dir, contextlib.redirect_stdout(io.StringIO()):
    Trainer(model(), task, output_dir=output_dir, steps=steps, log_every=log_every,
            checkpoint_every=10 ** 9, progress=False).run()
    rates = [r["steps_per_sec"] for r in read_metrics(output_dir) if "steps_per_sec" in r]
  return statistics.median(rates[1:])


def bare_rate(steps: int, chunk: int) -> float:
  """Median steps/s of the bare TrainStep over chunks of `chunk` steps (one host sync per chunk)."""
  lm = model()
  step = TrainStep(lm, objective.fused_head(lm, cl.WeightedCategoryCrossEntropy()),
                   optax.adamw(CONFIG["lr"], weight_decay=CONFIG["weight_decay"]))
  stream = pipeline()()
  batches = [next(stream) for _ in range(16)]
  state = step.init(jax.random.key(0), batches[0])
  state, metrics = step(state, batches[0])
  float(metrics["loss"])
  rates = []
  for start in range(0, steps, chunk):
    begin = time.perf_counter()
    for i in range(start, start + chunk):
      state, metrics = step(state, batches[i % len(batches)])
    float(metrics["loss"])
    rates.append(chunk / (time.perf_counter() - begin))
  return statistics.median(rates)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=120)
  parser.add_argument("--log-every", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  bare, loop = [], []
  for _ in range(args.rounds):
    bare.append(bare_rate(args.steps, args.log_every))
    loop.append(loop_rate(args.steps, args.log_every))
  bare_median, loop_median = statistics.median(bare), statistics.median(loop)
  tokens = CONFIG["batch"] * CONFIG["seq"]
  print(f"Transformer LM of peers/work.py on KJV batches, {args.rounds} rounds of {args.steps} steps, "
        f"logging every {args.log_every}")
  print(f"bare TrainStep : {bare_median:6.3f} steps/s  {bare_median * tokens:7,.0f} tokens/s  (rounds: "
        + ", ".join(f"{r:.3f}" for r in bare) + ")")
  print(f"Trainer loop   : {loop_median:6.3f} steps/s  {loop_median * tokens:7,.0f} tokens/s  (rounds: "
        + ", ".join(f"{r:.3f}" for r in loop) + ")")
  print(f"overhead       : {(bare_median / loop_median - 1) * 100:+6.1f}%  (aim <= 3%)")


if __name__ == "__main__":
  main()
