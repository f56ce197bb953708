"""Train a small combinax MLP with optax on two interleaved spirals, and print the loss falling.

    python examples/train_mlp.py [--steps 300]

The main job until the Trainer (`combinax-train`) lands: it shows the layer contract end to end.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import combinax as cx
from combinax import layers as cl


def spirals(n_per_class: int, seed: int = 0):
  """Two interleaved spirals in the plane: points (n, 2) float32 and labels (n,) int32."""
  rng = np.random.default_rng(seed)
  t = np.sqrt(rng.uniform(0.05, 1.0, n_per_class)) * 3 * np.pi
  arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
  points = np.concatenate([arm, -arm]) + rng.normal(0, 0.02, (2 * n_per_class, 2))
  labels = np.concatenate([np.zeros(n_per_class), np.ones(n_per_class)])
  return points.astype(np.float32), labels.astype(np.int32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()

  model = cl.Serial(cl.Dense(64), cl.Relu(), cl.Dense(64), cl.Relu(), cl.Dense(2))
  loss_layer = cl.CategoryCrossEntropy()
  accuracy = cl.WeightedCategoryAccuracy()
  x, y = spirals(500)
  print(model)

  params, state = model.init(jax.random.key(0), cx.ShapeDtype(x.shape))
  print(f"{cx.count_params(params)} parameters at {cx.paths(params)}")
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)

  def loss_fn(params, x, y):
    logits, _ = model.apply(params, state, x)
    return loss_layer.apply({}, {}, (logits, y))[0], logits

  @jax.jit
  def train_step(params, opt_state, x, y):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    acc = accuracy.apply({}, {}, (logits, y, jnp.ones(y.shape)))[0]
    return optax.apply_updates(params, updates), opt_state, loss, acc

  for step in range(1, args.steps + 1):
    params, opt_state, loss, acc = train_step(params, opt_state, x, y)
    if step == 1 or step % 50 == 0 or step == args.steps:
      print(f"step {step:4d}  loss {float(loss):.4f}  accuracy {float(acc):.3f}")


if __name__ == "__main__":
  main()
