"""Trax 1.4.1 worker for `benchmarks/compare.py`: the work of `work.py` with Trax's own models, loss, Adam and its
jitted `trax.optimizers.Trainer.one_step` (the step `trax.supervised.training.Loop` runs). Its environment comes from
`benchmarks/setup_trax.sh`."""

import importlib.metadata
import os

import numpy as np

import protocol
import work

# Parsed before JAX is imported: XLA sizes its CPU thread pool when the backend starts.
ARGS = protocol.parse_args(__doc__)
protocol.limit_xla_threads(ARGS.threads)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # `import trax` loads TensorFlow (unused here): keep it quiet

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import trax  # noqa: E402
from trax import layers as tl  # noqa: E402


def model_for(name: str, config: dict) -> tl.Layer:
  """Trax's own models; both shift their inputs right inside (`tl.ShiftRight`)."""
  if name == "transformer":
    return trax.models.TransformerLM(vocab_size=config["vocab"], d_model=config["d_model"], d_ff=config["d_ff"],
                                     n_layers=config["n_layers"], n_heads=config["n_heads"], max_len=config["seq"],
                                     dropout=config["dropout"], mode="train", ff_activation=tl.Relu)
  return tl.Serial(tl.ShiftRight(mode="train"), tl.Embedding(config["vocab"], config["d_embed"]),
                   *[lstm(config["d_hidden"]) for _ in range(config["n_layers"])],
                   tl.Dense(config["vocab"]))


def lstm(n_units: int) -> tl.Layer:
  """`tl.LSTM(n_units)` for any input width. Trax's `tl.LSTM` sizes its zero (c, h) state from its input's width
  (`MakeZeroState`), so it only accepts inputs `n_units` wide (the 256-wide embedding into LSTM(512) fails); here the
  zero state is sized by `n_units` and handed to the same `tl.LSTM` (`initial_state=True`): one `tl.LSTMCell` under
  `tl.Scan` over time, as before."""
  zero_state = tl.Fn("ZeroLSTMState", lambda x: jnp.zeros((x.shape[0], 2 * n_units), jnp.float32))
  return tl.Serial(tl.Branch([], zero_state), tl.LSTM(n_units, mode="train", initial_state=True))


def main():
  config = work.WORKS[ARGS.work]
  # Trax LMs take the targets as inputs (they shift right themselves): the batch is (ids, ids, weights).
  batches = []
  for b in work.batches(ARGS.work):
    ids = jnp.asarray(b[:, 1:])
    batches.append((ids, ids, jnp.ones(ids.shape, jnp.float32)))

  model = model_for(ARGS.work, config)
  model.init(trax.shapes.signature(batches[0][0]), rng=trax.fastmath.random.get_prng(0))
  n_params = sum(int(np.prod(w.shape)) for w in trax.fastmath.tree_flatten(model.weights))
  # As `Loop._init_trainer` does: the model followed by its loss layer, the optimizer's slots built on its weights.
  model_with_loss = tl.Serial(model, tl.WeightedCategoryCrossEntropy())
  # Trax's Adam decays weights by `weight_decay_rate` per step, not scaled by the learning rate: torch's AdamW
  # (lr, weight_decay) decays by lr * weight_decay, so that product is the matching rate. b1, b2, eps as torch's.
  optimizer = trax.optimizers.Adam(learning_rate=config["lr"], weight_decay_rate=config["lr"] * config["weight_decay"],
                                   b1=0.9, b2=0.999, eps=1e-8)
  optimizer.tree_init(model_with_loss.weights)
  trainer = trax.optimizers.Trainer(model_with_loss, optimizer)
  keys = [trax.fastmath.random.get_prng(1)]

  def step(i):
    keys[0], rng = trax.fastmath.random.split(keys[0])  # a fresh dropout key per step, as `Loop.new_rng`
    # step=i: Trax's Adam bias-corrects with step + 1, so the first update matches torch's (t = 1).
    loss, _ = trainer.one_step(batches[i % len(batches)], rng, step=i, learning_rate=config["lr"])
    return float(loss)

  a = jax.random.normal(jax.random.PRNGKey(1), (protocol.MATMUL_SIZE,) * 2)
  matmul = trax.fastmath.jit(trax.fastmath.numpy.dot)  # Trax's math backend: jax.numpy under jit
  framework = f"Trax {importlib.metadata.version('trax')} (JAX {jax.__version__})"
  protocol.serve(step, ARGS.warmup, n_params, framework, matmul=lambda: matmul(a, a).block_until_ready())


if __name__ == "__main__":
  main()
