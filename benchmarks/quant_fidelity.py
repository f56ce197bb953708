"""What weight quantization costs SmolLM2-135M in accuracy, and what it saves in memory.

    python benchmarks/quant_fidelity.py [--tokens 2048] [--prompts 8] [--new 32]

For float32, int8 (per output channel) and 4-bit (q4, q4_1: groups of 32, llama.cpp's Q4_0 / Q4_1 arithmetic)
weights of every matmul and of the (tied) embedding (4-bit matmuls with the table in 8 bits, as llama.cpp's 4-bit
files keep it, and with it in 4 bits too): the perplexity over the first `--tokens` tokens of the KJV
test split (windows of 512, each scored after token 0, as the model's eval mode feeds it), the share of greedy tokens
equal to float32's over `--prompts` prompts x `--new` tokens (free-running: after a first difference the rest
usually differ), the share of positions of those KJV tokens whose most likely next token is float32's (teacher-forced:
each position on its own), and the params' bytes. Issue 18's targets: int8 within
+1% perplexity and >= 90% greedy agreement; 4-bit within +5%; bytes <= 0.30x (int8) and <= 0.17x (4-bit).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from combinax import decoding, pretrained, quant
from combinax.data import corpora
from combinax.layers.losses import WeightedCategoryCrossEntropy

NAME = "smollm2-135m-instruct"
EMBED8 = ("embed/embedding", quant.QuantSpec("int8", 32))   # the tied table (the logits too) as Q8_0, as llama.cpp's
SETTINGS = {                                                  # 4-bit files keep it
    "float32": None,
    "int8": [("blocks/*kernel", "int8"), ("embed/embedding", "int8")],            # one scale per output channel
    "int8/32": [("blocks/*kernel", quant.QuantSpec("int8", 32)), EMBED8],        # llama.cpp's Q8_0
    "q4/32": [("blocks/*kernel", "q4"), EMBED8],                                  # Q4_0
    "q4_1/32": [("blocks/*kernel", "q4_1"), EMBED8],                              # Q4_1 (the bundled file's own)
    "q4_1 all": [("blocks/*kernel", "q4_1"), ("embed/embedding", "q4_1")],       # the table at 4 bits too
}


def kjv_tokens(tokenizer, n: int) -> np.ndarray:
  text = "\n".join(example["text"] for example in corpora.load("kjv", "test"))
  ids = np.asarray(tokenizer.encode(text[:20 * n]), np.int32)
  if len(ids) < n:
    raise SystemExit(f"the KJV test split has only {len(ids)} tokens")
  return ids[:n]


def score(model, params, ids: np.ndarray, window: int = 512) -> tuple[float, np.ndarray]:
  """(perplexity, the argmax token at every position): teacher-forced, so one early difference does not decide the
  rest, unlike free-running greedy decoding."""
  loss = WeightedCategoryCrossEntropy()
  rows = ids[:len(ids) // window * window].reshape(-1, window)

  @jax.jit
  def nll(params, batch):
    logits, _ = model.apply(params, {}, batch)
    value, _ = loss.apply({}, {}, (logits, batch, jnp.ones(batch.shape, jnp.float32)))
    return value, jnp.argmax(logits, axis=-1)

  values, tops = zip(*[nll(params, jnp.asarray(row[None])) for row in rows])
  return float(np.exp(np.mean([float(v) for v in values]))), np.concatenate([np.asarray(t)[0] for t in tops])


def greedy(decoder, params, prompts, new: int, eos_id):
  return [np.asarray(decoding.autoregressive_sample(decoder, params, p[None], max_length=new, temperature=0.0))[0]
          for p in prompts]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tokens", type=int, default=2048)
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--new", type=int, default=32)
  args = parser.parse_args()
  model, params, tokenizer = pretrained.load(NAME, mode="eval")
  decoder = pretrained.model(NAME, mode="predict", max_len=128)
  ids = kjv_tokens(tokenizer, args.tokens)
  starts = np.linspace(0, args.tokens - 16, args.prompts).astype(int)
  prompts = [ids[s:s + 16] for s in starts]   # 16-token KJV passages to continue
  print(f"{NAME}: {args.tokens} KJV test tokens, {args.prompts} prompts x {args.new} greedy tokens")
  print(f"{'weights':>9} {'perplexity':>11} {'vs float32':>10} {'greedy same':>12} {'top-1 same':>9} {'params MB':>10} {'x float32':>9}")
  reference_ppl, reference_tokens, reference_top, reference_bytes = None, None, None, quant.nbytes(params)
  for name, rules in SETTINGS.items():
    started = time.perf_counter()
    weights = params if rules is None else jax.jit(lambda p, rules=rules: quant.quantize(p, rules))(params)
    ppl, top = score(model, weights, ids)
    tokens = greedy(decoder, weights, prompts, args.new, tokenizer.eos_id)
    reference_ppl = reference_ppl or ppl
    reference_tokens = reference_tokens or tokens
    reference_top = top if reference_top is None else reference_top
    same = np.mean([np.mean(a == b) for a, b in zip(tokens, reference_tokens)])
    size = quant.nbytes(weights)
    print(f"{name:>9} {ppl:11.3f} {ppl / reference_ppl - 1:+10.2%} {same:12.1%} {np.mean(top == reference_top):9.1%} "
          f"{size / 1e6:10.1f} {size / reference_bytes:9.3f}   ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
