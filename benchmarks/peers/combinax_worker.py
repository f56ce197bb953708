"""combinax worker for `benchmarks/compare.py`: the work of `work.py` with combinax models and the real
`TrainStep` (the jitted, donated step `combinax-train` runs), AdamW without clipping, as the peers."""

import sys

import protocol
import work

if __name__ == "__main__":  # (profile_step.py imports model_for)
  args = protocol.parse_args(__doc__)
  protocol.limit_xla_threads(args.threads)

import jax  # noqa: E402
import optax  # noqa: E402

import combinax as cx  # noqa: E402
from combinax import layers as cl  # noqa: E402
from combinax.models import TransformerLM  # noqa: E402
from combinax.train import objective  # noqa: E402
from combinax.train.step import TrainStep  # noqa: E402


def model_for(name: str, config: dict) -> cl.Layer:
  if name == "transformer":
    return TransformerLM(config["vocab"], d_model=config["d_model"], d_ff=config["d_ff"],
                         n_layers=config["n_layers"], n_heads=config["n_heads"], dropout=config["dropout"],
                         max_len=config["seq"])
  return cl.Serial(cl.ShiftRight(), cl.Embedding(config["vocab"], config["d_embed"]),
                   *[cl.LSTM(config["d_hidden"]) for _ in range(config["n_layers"])], cl.Dense(config["vocab"]))


def main():
  config = work.WORKS[args.work]
  model = model_for(args.work, config)
  optimizer = optax.adamw(config["lr"], weight_decay=config["weight_decay"])
  step_fn = TrainStep(model, objective.fused_head(model, cl.CategoryCrossEntropy()), optimizer)   # both end in a Dense
  # The LM shifts its inputs right inside: the targets are its inputs.
  batches = [jax.device_put(b[:, 1:]) for b in work.batches(args.work)]
  batches = [(b, b) for b in batches]
  train_state = step_fn.init(jax.random.key(0), batches[0])
  holder = {"state": train_state}

  def step(i):
    holder["state"], metrics = step_fn(holder["state"], batches[i % len(batches)])
    return float(metrics["loss"])

  protocol.serve(step, args.warmup, cx.count_params(train_state.params), f"combinax (JAX {jax.__version__})",
                 matmul=protocol.jax_matmul())


if __name__ == "__main__":
  sys.exit(main())
