"""SigLIP's and CLIP's losses: against a float64 hand computation (value and gradient), sharded = unsharded, and a
dual encoder that learns to pair images with their captions in the training step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import combinax as cx

from combinax import layers as cl
from combinax.models import DualEncoder, TextTower, TransformerEncoder
from combinax.models.contrastive import encode_images, encode_texts, retrieval_recall, zero_shot_accuracy
from combinax.train.step import TrainStep


def unit(key, shape):
  x = jax.random.normal(key, shape)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def pairs(batch=16, d=8):
  k1, k2 = jax.random.split(jax.random.key(3))
  images, texts = unit(k1, (batch, d)), unit(k2, (batch, d))
  texts = unit(jax.random.key(4), (batch, d)) * 0.3 + images   # related pairs, as after some training
  return images, texts / jnp.linalg.norm(texts, axis=-1, keepdims=True)


def hand_sigmoid(x, y, log_t, b):
  """SigLIP's loss and its gradients, float64: L = -1/B sum_ij log sigmoid(s_ij (t x_i.y_j + b))."""
  x, y = np.float64(x), np.float64(y)
  t, n = np.exp(log_t), len(x)
  z = t * x @ y.T + b
  s = 2 * np.eye(n) - 1
  loss = np.sum(np.logaddexp(0, -s * z)) / n                  # -log sigmoid(u) = log(1 + exp(-u))
  dz = -s / (1 + np.exp(s * z)) / n                            # dL/dz = -s sigmoid(-s z) / B
  return loss, (dz @ y * t, dz.T @ x * t, np.sum(dz * z - dz * b), np.sum(dz))


def hand_softmax(x, y, log_t):
  x, y = np.float64(x), np.float64(y)
  z = np.exp(log_t) * x @ y.T
  def ce(logits):
    top = logits.max(axis=1, keepdims=True)
    return np.mean(np.log(np.sum(np.exp(logits - top), axis=1)) + top[:, 0] - np.diagonal(logits))
  return (ce(z) + ce(z.T)) / 2


def loss_fn(layer):
  return lambda x, y, scale: layer.apply({}, {}, (x, y, scale))[0]


def test_the_sigmoid_loss_and_its_gradient_equal_a_float64_hand_computation():
  x, y = pairs()
  scale = jnp.array([np.log(10.0), -10.0], jnp.float32)
  loss, grads = jax.value_and_grad(loss_fn(cl.SigmoidContrastiveLoss()), argnums=(0, 1, 2))(x, y, scale)
  want, (dx, dy, dlog_t, db) = hand_sigmoid(x, y, float(scale[0]), float(scale[1]))
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(grads[0], dx, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(grads[1], dy, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(grads[2], [dlog_t, db], rtol=1e-4)


def test_the_softmax_loss_equals_a_float64_hand_computation_and_ignores_the_bias():
  x, y = pairs()
  for bias in (0.0, -10.0):
    loss = loss_fn(cl.SoftmaxContrastiveLoss())(x, y, jnp.array([np.log(1 / 0.07), bias], jnp.float32))
    np.testing.assert_allclose(loss, hand_softmax(x, y, np.log(1 / 0.07)), rtol=1e-5)


@pytest.mark.parametrize("loss", [cl.SigmoidContrastiveLoss(), cl.SoftmaxContrastiveLoss()], ids=["sigmoid", "softmax"])
@pytest.mark.parametrize("layout", [(8, 1), (4, 2), (2, 4)])
def test_sharded_over_the_data_axis_the_loss_and_gradients_equal_the_unsharded(loss, layout):
  x, y = pairs(batch=16)
  scale = jnp.array([np.log(10.0), -10.0], jnp.float32)
  step = jax.jit(jax.value_and_grad(loss_fn(loss), argnums=(0, 1, 2)))
  want, want_grads = step(x, y, scale)
  mesh = Mesh(np.array(jax.devices()).reshape(layout), ("data", "model"))
  with jax.set_mesh(mesh):
    got, grads = step(x, y, scale)
    program = jax.jit(loss_fn(loss)).lower(x, y, scale).as_text()
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(grads, want_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  if isinstance(loss, cl.SigmoidContrastiveLoss):   # each device's texts go round the ring: n - 1 permutes
    assert program.count("collective_permute") == layout[0] - 1 and "all_gather" not in program
  else:
    assert program.count("all_gather") >= 2


def test_a_batch_the_devices_do_not_divide_is_computed_whole_and_bad_inputs_are_named():
  x, y = pairs(batch=6)
  scale = jnp.array([0.5, -1.0])
  with jax.set_mesh(Mesh(np.array(jax.devices()), ("data",))):
    got = jax.jit(loss_fn(cl.SigmoidContrastiveLoss()))(x, y, scale)
  np.testing.assert_allclose(got, hand_sigmoid(x, y, 0.5, -1.0)[0], rtol=1e-6)
  with pytest.raises(cx.LayerError, match=r"images \(B, d\), texts \(B, d\), \(log_temperature, bias\) \(2,\)"):
    cl.SigmoidContrastiveLoss().apply({}, {}, (x, y[:5], scale))
  with pytest.raises(cx.LayerError, match="temperature > 0"):
    cl.TemperatureAndBias(temperature=0.0)


def test_the_scale_starts_as_siglip_and_clip_say():
  params, _ = cl.TemperatureAndBias().init(jax.random.key(0), ())
  np.testing.assert_allclose([params["log_temperature"], params["bias"]], [np.log(10.0), -10.0], rtol=1e-6)
  params, _ = cl.TemperatureAndBias(1 / 0.07, 0.0).init(jax.random.key(0), ())
  np.testing.assert_allclose(np.exp(params["log_temperature"]), 1 / 0.07, rtol=1e-6)


def toy_pairs(key, n=16):
  """n images, each with one of the 16 pixels of a 4x4 image lit (each pixel once, in a random order), and captions
  naming the pixel (token 1 + pixel) with a random filler token: every pair in a batch is the only one of its kind."""
  pixels = np.asarray(jax.random.permutation(key, 16))[:n]
  images = np.zeros((n, 16), np.float32)
  images[np.arange(n), pixels] = 1.0
  images = images.reshape(n, 4, 4, 1) + 0.1 * np.asarray(jax.random.normal(key, (n, 4, 4, 1)))
  fillers = np.asarray(jax.random.randint(jax.random.fold_in(key, 1), (n,), 17, 20))
  return images, np.stack([pixels + 1, fillers, np.zeros(n, int)], axis=1).astype(np.int32), pixels


def test_a_dual_encoder_learns_to_pair_images_with_captions_in_the_sharded_training_step():
  # (An MLP image tower: on these one-pixel images a 1-layer ViT reached 0.44 zero-shot accuracy in 200 steps, the
  # MLP 1.0; this test is of the loss in the training step. ViT towers train in configs/ on rendered images.)
  model = DualEncoder(cl.Serial(cl.Flatten(), cl.Dense(32), cl.Relu()),
                      TextTower(TransformerEncoder(20, None, 16, d_ff=32, n_layers=1, n_heads=2, dropout=0.0)),
                      d_embed=8)
  step = TrainStep(model, cl.SigmoidContrastiveLoss(), optax.adam(3e-3))   # 8 devices on the data axis: a ring
  images, ids, _ = toy_pairs(jax.random.key(0))
  state = step.init(jax.random.key(0), (images, ids))
  assert {p.split("/")[0] for p in cx.paths(state.params)} == {"image", "text", "scale"}
  assert {"image/projection/kernel", "text/projection/kernel", "scale/log_temperature", "scale/bias",
          "text/embed/embedding", "image/Dense_0/kernel"} <= set(cx.paths(state.params))
  losses = []
  for i in range(200):
    images, ids, _ = toy_pairs(jax.random.key(100 + i))
    state, metrics = step(state, (images, ids))
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])   # measured 10.5 -> 0.3
  images, _, pixels = toy_pairs(jax.random.key(7))
  captions = np.array([[c + 1, 17, 0] for c in range(16)], np.int32)   # one caption per pixel, a filler of its own
  accuracy = zero_shot_accuracy(encode_images(model, state.params, images), pixels,
                                encode_texts(model, state.params, captions))
  assert accuracy >= 0.9   # measured 1.0; chance is 1/16


def test_retrieval_recall_counts_the_pairs_found_within_k():
  images = np.eye(3)
  texts = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])   # pair 0 right, pairs 1 and 2 swapped
  recall = retrieval_recall(images, texts, ks=(1, 2))
  assert recall == {"image_to_text@1": 1 / 3, "image_to_text@2": 1.0, "text_to_image@1": 1 / 3,
                    "text_to_image@2": 1.0}
