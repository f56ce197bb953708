"""Flax NNX worker for `benchmarks/compare.py`: the work of `work.py`, written with `flax.nnx` modules and optax."""


import numpy as np

import protocol
import work

# Parsed before JAX is imported: XLA sizes its CPU thread pool when the backend starts.
ARGS = protocol.parse_args(__doc__)
protocol.limit_xla_threads(ARGS.threads)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402


def sinusoidal_positions(seq: int, d_model: int) -> np.ndarray:
  """The fixed (seq, d_model) table: sin on even features, cos on odd ones."""
  angles = np.arange(seq)[:, None] * np.exp(np.arange(0, d_model, 2) * (-np.log(10000.0) / d_model))
  table = np.zeros((seq, d_model), np.float32)
  table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
  return table


class DecoderBlock(nnx.Module):
  """Pre-LN block: x + drop(attn(ln(x))), then x + drop(W2 drop(relu(W1 ln(x))))."""

  def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, *, rngs: nnx.Rngs):
    self.attn_norm = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
    # Dropout on the attention weights, drawn per batch row and head (torch's nn.MultiheadAttention does the same;
    # NNX's default `broadcast_dropout=True` would share one mask across the batch and the heads).
    self.attn = nnx.MultiHeadAttention(num_heads=n_heads, in_features=d_model, dropout_rate=dropout,
                                       broadcast_dropout=False, decode=False, rngs=rngs)
    self.attn_dropout = nnx.Dropout(dropout, rngs=rngs)
    self.ff_norm = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
    self.ff_in = nnx.Linear(d_model, d_ff, rngs=rngs)
    self.ff_dropout = nnx.Dropout(dropout, rngs=rngs)
    self.ff_out = nnx.Linear(d_ff, d_model, rngs=rngs)
    self.out_dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attn_dropout(self.attn(self.attn_norm(x), mask=mask))
    h = self.ff_dropout(jax.nn.relu(self.ff_in(self.ff_norm(x))))
    return x + self.out_dropout(self.ff_out(h))


class TransformerLM(nnx.Module):
  """Decoder-only LM: embedding + sinusoidal positions, pre-LN blocks under a causal mask, final LayerNorm, untied
  output projection."""

  def __init__(self, vocab, d_model, n_layers, n_heads, d_ff, seq, dropout, *, rngs: nnx.Rngs, **_):
    self.embed = nnx.Embed(vocab, d_model, rngs=rngs)
    self.positions = nnx.Variable(jnp.asarray(sinusoidal_positions(seq, d_model)))  # a constant, not an nnx.Param
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.blocks = nnx.List([DecoderBlock(d_model, n_heads, d_ff, dropout, rngs=rngs) for _ in range(n_layers)])
    self.final_norm = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
    self.logits = nnx.Linear(d_model, vocab, rngs=rngs)

  def __call__(self, ids):
    x = self.dropout(self.embed(ids) + self.positions[:ids.shape[-1]])
    mask = nnx.make_causal_mask(ids)  # (batch, 1, seq, seq), from the shape only: a constant under jit
    for block in self.blocks:
      x = block(x, mask)
    return self.logits(self.final_norm(x))


class LSTMLM(nnx.Module):
  """Embedding -> stacked LSTMs (each an `nnx.RNN` scanning an `nnx.OptimizedLSTMCell` over time) -> output
  projection."""

  def __init__(self, vocab, d_embed, d_hidden, n_layers, *, rngs: nnx.Rngs, **_):
    self.embed = nnx.Embed(vocab, d_embed, rngs=rngs)
    widths = [d_embed] + [d_hidden] * n_layers
    self.lstms = nnx.List([nnx.RNN(nnx.OptimizedLSTMCell(d_in, d_hidden, rngs=rngs))
                           for d_in in widths[:-1]])
    self.logits = nnx.Linear(d_hidden, vocab, rngs=rngs)

  def __call__(self, ids):
    x = self.embed(ids)
    for lstm in self.lstms:
      x = lstm(x)  # batch-major (batch, seq, features), zero initial carry
    return self.logits(x)


@nnx.jit
def train_step(model, optimizer, inputs, targets):
  def loss_fn(model):
    logits = model(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def main():
  config = work.WORKS[ARGS.work]
  model = (TransformerLM if ARGS.work == "transformer" else LSTMLM)(**config, rngs=nnx.Rngs(0))
  model.train()  # dropout on (sets deterministic=False on every Dropout and MultiHeadAttention)
  optimizer = nnx.Optimizer(model, optax.adamw(config["lr"], weight_decay=config["weight_decay"]), wrt=nnx.Param)
  batches = [(jnp.asarray(b[:, :-1]), jnp.asarray(b[:, 1:])) for b in work.batches(ARGS.work)]

  def step(i):
    inputs, targets = batches[i % len(batches)]
    return float(train_step(model, optimizer, inputs, targets))

  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  import flax
  protocol.serve(step, ARGS.warmup, n_params, f"Flax NNX {flax.__version__} (JAX {jax.__version__})",
                 matmul=protocol.jax_matmul())


if __name__ == "__main__":
  main()
