"""Data pipeline throughput vs what a TransformerLM train step consumes, in tokens per second.

    python benchmarks/data_pipeline.py [--corpus kjv] [--batches 400] [--steps 20] [--prefetch]
    python benchmarks/data_pipeline.py --text-file some.txt      # any UTF-8 text file, one example a line

The pipeline: corpus -> SentencePiece (8192, trained once and cached) -> Shuffle(1024) -> PackLM(128) ->
Batch(16). The step: TransformerLM(vocab 8192, d_model 256, d_ff 1024, 4 layers, 4 heads) on (16, 128), a jitted
value_and_grad + optax.adamw update. Prints both rates and their ratio (the pipeline should be >= 10x faster, so
it never starves the step), and what saving the pipeline's position costs.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from combinax import data
from combinax import layers as cl
from combinax.models import TransformerLM


def pipeline_for(args, tokenizer):
  if args.text_file:
    source = data.TextLines(args.text_file, skip_blank=True, shuffle=True, seed=0, repeat=True)
  else:
    source = data.Corpus(args.corpus, keys=("text",), shuffle=True, seed=0, repeat=True)
  return data.Serial(
      source,
      data.Tokenize(tokenizer, keys=(0,), append_eos=True),
      data.Shuffle(buffer_size=1024, seed=0),
      data.PackLM(length=args.seq),
      data.Batch(args.batch),
      *([data.Prefetch(4)] if args.prefetch else []))


def pipeline_rate(args, tokenizer):
  """(tokens/s, seconds to save the position as JSON) of the pipeline, after a warm-up."""
  stream = pipeline_for(args, tokenizer)()
  for _ in range(20):
    next(stream)
  start = time.perf_counter()
  tokens = 0
  for _ in range(args.batches):
    inputs, _, weights = next(stream)
    tokens += inputs.size
  elapsed = time.perf_counter() - start
  start = time.perf_counter()
  saved = data.dumps_state(stream.get_state())
  save_time = time.perf_counter() - start
  stream.close()
  return tokens / elapsed, save_time, len(saved)


def step_rate(args, vocab_size):
  """Tokens/s of a jitted TransformerLM train step (value_and_grad + adamw), after compiling."""
  model = TransformerLM(vocab_size, d_model=256, d_ff=1024, n_layers=4, n_heads=4, dropout=0.0, max_len=args.seq)
  loss_layer = cl.WeightedCategoryCrossEntropy()
  shape = (args.batch, args.seq)
  params, state = model.init(jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.int32))
  optimizer = optax.adamw(1e-3)
  opt_state = optimizer.init(params)

  def loss_fn(params, inputs, targets, weights):
    logits, _ = model.apply(params, state, inputs, train=True, rng=jax.random.key(1))
    return loss_layer.apply({}, {}, (logits, targets, weights))[0]

  @jax.jit
  def train_step(params, opt_state, inputs, targets, weights):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, weights)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  batch = rng.integers(2, vocab_size, shape).astype(np.int32)
  batch = (jax.device_put(batch), jax.device_put(batch), jax.device_put(np.ones(shape, np.float32)))
  params, opt_state, loss = train_step(params, opt_state, *batch)    # compile
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(args.steps):
    params, opt_state, loss = train_step(params, opt_state, *batch)
  jax.block_until_ready(loss)
  return args.batch * args.seq * args.steps / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus", default="kjv")
  parser.add_argument("--text-file", default=None)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--batches", type=int, default=400)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--prefetch", action="store_true")
  args = parser.parse_args()

  start = time.perf_counter()
  if args.text_file:
    lines = [line for (line,) in data.TextLines(args.text_file, skip_blank=True)()]
    tokenizer = data.SentencePieceTokenizer.train(lines, vocab_size=args.vocab)
  else:
    tokenizer = data.tokenizer_for(args.corpus, "sentencepiece", args.vocab)
  print(f"tokenizer: SentencePiece, {tokenizer.vocab_size} pieces, ready in {time.perf_counter() - start:.1f} s "
        f"(trained on first use, then cached)")

  rate, save_time, state_bytes = pipeline_rate(args, tokenizer)
  print(f"pipeline : {rate:12,.0f} tokens/s  ({args.batches} batches of {args.batch}x{args.seq}"
        f"{', prefetch' if args.prefetch else ''}; saving its position: {save_time * 1e3:.1f} ms, "
        f"{state_bytes / 1024:.0f} KiB of JSON)")
  consumed = step_rate(args, max(args.vocab, tokenizer.vocab_size))
  print(f"train step: {consumed:12,.0f} tokens/s  (TransformerLM d_model 256, 4 layers, adamw; "
        f"{jax.devices()[0].device_kind})")
  print(f"ratio    : {rate / consumed:12.1f}x  (pipeline / step; aim >= 10x)")


if __name__ == "__main__":
  main()
