"""Quantization-aware training: the forward pass is the quantized model's, the gradient reaches the float weights
straight through, and fine-tuning that way leaves the quantized model better than fine-tuning without it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from combinax import layers as cl
from combinax import quant
from combinax.models import TransformerLM
from combinax.train import objective
from combinax.train.step import TrainStep

RULES = [("blocks/*kernel", ("q4", 64)), ("embed/embedding", ("int8", 32))]


def test_the_forward_pass_is_the_quantized_weights_and_the_gradient_goes_straight_through():
  w = jax.random.normal(jax.random.key(0), (64, 8))
  params = {"Dense_0": {"kernel": w}}
  fake = quant.fake_quantize(params, [("*kernel", ("q4", 32))])["Dense_0"]["kernel"]
  exact = quant.dequantize(quant.quantize(params, [("*kernel", ("q4", 32))]))["Dense_0"]["kernel"]
  np.testing.assert_array_equal(fake, exact)
  x = jax.random.normal(jax.random.key(1), (4, 64))
  loss = lambda kernel: jnp.sum(jnp.tanh(x @ kernel))
  through = jax.grad(lambda p: loss(quant.fake_quantize(p, [("*kernel", ("q4", 32))])["Dense_0"]["kernel"]))(params)
  # d loss / d w is taken as d loss / d q(w), evaluated at the quantized weights.
  np.testing.assert_allclose(through["Dense_0"]["kernel"], jax.grad(loss)(exact), rtol=1e-6)
  with pytest.raises(ValueError, match=r"fake_quantize: no param matches \['\*bias'\]"):
    quant.fake_quantize(params, [("*bias", "int8")])


def _batches(n, seed):
  """Next-token prediction of sequences that count up by a per-sequence step (mod 32): learnable by a small LM."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    start, stride = rng.integers(0, 32, (16, 1)), rng.integers(1, 4, (16, 1))
    ids = ((start + stride * np.arange(17)) % 32).astype(np.int32)
    out.append((ids[:, :-1], ids[:, 1:], np.ones((16, 16), np.float32)))
  return out


def test_fine_tuning_for_4_bit_weights_leaves_the_4_bit_model_better_than_plain_fine_tuning():
  model = TransformerLM(32, d_model=64, d_ff=128, n_layers=2, n_heads=4, max_len=16, dropout=0.0)
  loss = cl.WeightedCategoryCrossEntropy()
  train, held_out = _batches(160, 0), _batches(16, 1)

  def fit(step, state, batches):
    for batch in batches:   # one step at a time: a long queue of 8-device steps stalled XLA:CPU's all-reduce
      state = jax.block_until_ready(step(state, batch)[0])
    return state

  plain = TrainStep(model, loss, optax.adam(3e-3))
  trained = fit(plain, plain.init(jax.random.key(0), train[0]), train[:100])

  @jax.jit
  def batch_loss(small, batch):
    return loss.apply({}, {}, (model.apply(small, {}, batch[0])[0], batch[1], batch[2]))[0]

  def losses(params):
    """(the float model's loss, its 4-bit form's loss) on held-out batches."""
    small = jax.device_get(quant.quantize(jax.device_get(params), RULES))
    return tuple(float(np.mean([batch_loss(p, b) for b in held_out])) for p in (params, small))

  # The same 60 further steps, from the same state: one sees the 4-bit weights in its forward pass.
  aware = TrainStep(model, objective.quantization_aware(RULES)(objective.plain(model, loss)), optax.adam(3e-4))
  again = TrainStep(model, loss, optax.adam(3e-4))
  start = lambda: jax.tree_util.tree_map(jnp.copy, trained._replace(opt_state=optax.adam(3e-4).init(trained.params)))
  float_aware, quantized_aware = losses(fit(aware, start(), train[100:]).params)   # (steps donate: copies)
  float_plain, quantized_plain = losses(fit(again, start(), train[100:]).params)
  # The 4-bit model is better after quantization-aware fine-tuning, and loses far less to the rounding. Measured
  # with this test's data and init (seed 0) and with 3 other seeds standing in for another machine's rounding:
  # the 4-bit model's loss 0.0145 / 0.0150 / 0.0051 / 0.0164 lower than after plain fine-tuning, and the aware
  # model's 4-bit form no worse than its float form. (With Adam at 1e-3 and 4 held-out batches, as first written,
  # the first margin was -0.0065 to 0.0149 over the same seeds: a machine's rounding decided it, and CI failed.)
  assert quantized_aware < quantized_plain
  assert quantized_aware - float_aware < 0.5 * (quantized_plain - float_plain)
