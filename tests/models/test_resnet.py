"""Residual CNNs and DigitsCNN: shape agreement, readable paths, exact residual identities, BatchNorm state,
parameter counts, errors, and short training runs on synthetic 8x8 digits."""

import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import combinax as cx
from combinax import layers as cl
from combinax.models.mlp import MLP
from combinax.models.resnet import (BasicBlock, BottleneckBlock, DigitsCNN, PreActBlock, ResNet, Resnet50,
                                    WideResnet)

KEY = jax.random.key(0)


def tiny_resnet(**kwargs):
  return ResNet(stage_sizes=(1, 1), d_hidden=8, n_output_classes=10, **kwargs)


# --- Synthetic digits: 10 fixed 6x5 glyphs, shifted inside an 8x8 canvas, plus noise ---------------------------

GLYPHS = [
    [".###.", "#...#", "#...#", "#...#", "#...#", ".###."],
    ["..#..", ".##..", "..#..", "..#..", "..#..", ".###."],
    [".###.", "#...#", "...#.", "..#..", ".#...", "#####"],
    ["####.", "....#", ".###.", "....#", "....#", "####."],
    ["#..#.", "#..#.", "#####", "...#.", "...#.", "...#."],
    ["#####", "#....", "####.", "....#", "....#", "####."],
    [".###.", "#....", "####.", "#...#", "#...#", ".###."],
    ["#####", "....#", "...#.", "..#..", ".#...", ".#..."],
    [".###.", "#...#", ".###.", "#...#", "#...#", ".###."],
    [".###.", "#...#", "#...#", ".####", "....#", ".###."],
]
TEMPLATES = np.array([[[c == "#" for c in row] for row in glyph] for glyph in GLYPHS], np.float32)  # (10, 6, 5)


def digits(n: int, seed: int, noise: float = 0.3):
  """`n` images (n, 8, 8, 1) of random digits at random offsets (3 x 4 positions) with Gaussian noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n)
  images = rng.normal(0.0, noise, (n, 8, 8)).astype(np.float32)
  for image, label, top, left in zip(images, labels, rng.integers(0, 3, n), rng.integers(0, 4, n)):
    image[top:top + 6, left:left + 5] += TEMPLATES[label]
  return images[..., None], labels.astype(np.int32)


def train(model, steps: int, optimizer, batch_size: int = 64):
  """Trains on fresh synthetic batches; returns (losses, accuracy on held-out images with train=False)."""
  x, y = digits(steps * batch_size, seed=1)
  params, state = model.init(KEY, cx.ShapeDtype((batch_size, 8, 8, 1)))
  opt_state = optimizer.init(params)

  def loss_fn(params, state, x, y):
    logits, state = model.apply(params, state, x, train=True)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), state

  @jax.jit
  def step(params, state, opt_state, x, y):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  losses = []
  for i in range(steps):
    batch = slice(i * batch_size, (i + 1) * batch_size)
    params, state, opt_state, loss = step(params, state, opt_state, x[batch], y[batch])
    losses.append(float(loss))
  x_test, y_test = digits(512, seed=2)
  logits, _ = jax.jit(lambda p, s, x: model.apply(p, s, x))(params, state, x_test)
  return np.array(losses), float(np.mean(np.argmax(logits, axis=-1) == y_test))


def test_digits_cnn_learns_synthetic_digits():
  losses, accuracy = train(DigitsCNN(), steps=80, optimizer=optax.adam(1e-2))
  assert losses[0] > 2.0                                  # about log(10) at the start
  assert np.mean(losses[-5:]) < 0.5 * losses[0], losses
  assert accuracy > 0.7, accuracy                          # chance is 0.1


def test_tiny_resnet_learns_synthetic_digits():
  model = tiny_resnet(norm=functools.partial(cl.BatchNorm, momentum=0.9))
  losses, accuracy = train(model, steps=80, optimizer=optax.adam(2e-2))
  assert np.mean(losses[-5:]) < 0.5 * losses[0], losses
  assert accuracy > 0.7, accuracy                          # evaluated with the running statistics


# --- Shapes, paths, counts -----------------------------------------------------------------------------------

def eval_shape_init(model, shape):
  """Params and state as shapes only: no memory is used, however big the model."""
  return jax.eval_shape(lambda: model.init(KEY, cx.ShapeDtype(shape)))


def filled(tree):
  """Arrays of the shapes in `tree`, drawn with NumPy (no compilation); positive, so variances stay valid."""
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.uniform(0.5, 1.0, s.shape).astype(s.dtype)), tree)


MODELS = {
    "digits_cnn": (DigitsCNN, (3, 8, 8, 1), (3, 10)),
    "resnet_basic": (tiny_resnet, (2, 8, 8, 1), (2, 10)),
    "resnet_bottleneck": (lambda: ResNet((1, 1), d_hidden=4, n_output_classes=5, block="bottleneck"),
                          (2, 8, 8, 3), (2, 5)),
    "resnet_preact_imagenet_stem": (lambda: ResNet((1, 2), d_hidden=4, block="preact", stem="imagenet"),
                                    (2, 20, 20, 3), (2, 10)),
    "resnet50_narrow": (lambda: Resnet50(d_hidden=2, n_output_classes=7), (1, 32, 32, 3), (1, 7)),
    "wide_resnet": (lambda: WideResnet(n_blocks=1, widen_factor=2, n_output_classes=4), (2, 16, 16, 3), (2, 4)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_signature_agrees_with_apply(name):
  make, shape, out = MODELS[name]
  model = make()
  sig = cx.ShapeDtype(shape)
  # Shapes need no real initial values (the other tests run the real init): compiling a deep model's init, with
  # one truncated-normal sampler per kernel shape, takes far longer on CPU than the apply we check here.
  params, state = filled(eval_shape_init(model, shape))
  x = jax.random.normal(KEY, shape)
  y, new_state = jax.jit(lambda p, s, x: model.apply(p, s, x, train=True))(params, state, x)
  assert model.output_signature(sig) == cx.signature(y) == cx.ShapeDtype(out)
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  # Integer images work too (the models start with ToFloat).
  assert model.output_signature(cx.ShapeDtype(shape, jnp.uint8)) == cx.ShapeDtype(out)


def test_jit_and_grad_of_a_tiny_resnet():
  model = tiny_resnet()
  x = jax.random.normal(KEY, (4, 8, 8, 1))
  params, state = model.init(KEY, x)
  eager, eager_state = model.apply(params, state, x, train=True)
  jitted, jitted_state = jax.jit(lambda p, s, x: model.apply(p, s, x, train=True))(params, state, x)
  np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), jitted_state,
                         eager_state)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, state, x, train=True)[0] ** 2)))(params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  assert sum(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads)) > 0.9 * len(jax.tree_util.tree_leaves(grads))


def test_tiny_resnet_paths_are_readable_and_stable():
  params, state = tiny_resnet().init(KEY, cx.ShapeDtype((2, 8, 8, 1)))
  block = ["BatchNorm_0/bias", "BatchNorm_0/scale", "BatchNorm_1/bias", "BatchNorm_1/scale",
           "Conv_0/bias", "Conv_0/kernel", "Conv_1/bias", "Conv_1/kernel"]
  assert cx.paths(params) == (
      ["head/Dense_0/bias", "head/Dense_0/kernel"]
      + [f"stage_0/block_0/{p}" for p in block]
      + [f"stage_1/block_0/{p}" for p in block]
      + ["stage_1/block_0/shortcut/BatchNorm_0/bias", "stage_1/block_0/shortcut/BatchNorm_0/scale",
         "stage_1/block_0/shortcut/Conv_0/bias", "stage_1/block_0/shortcut/Conv_0/kernel"]
      + ["stem/BatchNorm_0/bias", "stem/BatchNorm_0/scale", "stem/Conv_0/bias", "stem/Conv_0/kernel"])
  assert cx.paths(state) == [p.replace("bias", "mean").replace("scale", "var") for p in cx.paths(params)
                             if "BatchNorm" in p]
  assert params["stage_1"]["block_0"]["shortcut"]["Conv_0"]["kernel"].shape == (1, 1, 8, 16)
  assert cx.paths(tiny_resnet().init(jax.random.key(3), cx.ShapeDtype((5, 12, 12, 3)))[0]) == cx.paths(params)


def test_resnet50_shapes_paths_and_count():
  model = Resnet50(n_output_classes=1000)
  assert model.output_signature(cx.ShapeDtype((2, 224, 224, 3))) == cx.ShapeDtype((2, 1000))
  assert model.output_signature(cx.ShapeDtype((1, 64, 64, 3))) == cx.ShapeDtype((1, 1000))
  params, state = eval_shape_init(model, (1, 224, 224, 3))
  # Keras' ResNet50 (which, like Trax's, has conv biases): 25,583,592 trainable, 53,120 BatchNorm statistics.
  assert cx.count_params(params) == 25_583_592
  assert cx.count_params(state) == 53_120
  assert params["stem"]["Conv_0"]["kernel"].shape == (7, 7, 3, 64)
  assert params["stage_0"]["block_0"]["shortcut"]["Conv_0"]["kernel"].shape == (1, 1, 64, 256)
  assert params["stage_3"]["block_2"]["Conv_2"]["kernel"].shape == (1, 1, 512, 2048)
  assert params["head"]["Dense_0"]["kernel"].shape == (2048, 1000)
  assert [sorted(params[f"stage_{i}"]) for i in range(4)] == [[f"block_{j}" for j in range(n)] for n in (3, 4, 6, 3)]


def wide_resnet_count(n: int, k: int, classes: int) -> int:
  """Trax's WideResnet, counted by hand: conv 3x3 (+bias), BatchNorm (scale, bias) before each conv in a block,
  a 3x3 conv shortcut in each group's first block, and the final BatchNorm and Dense."""
  conv = lambda c_in, c_out: 9 * c_in * c_out + c_out  # noqa: E731
  total, c_in = conv(3, 16), 16
  for c in (16 * k, 32 * k, 64 * k):
    total += 2 * c_in + conv(c_in, c) + 2 * c + conv(c, c) + conv(c_in, c)
    total += (n - 1) * (2 * c + conv(c, c) + 2 * c + conv(c, c))
    c_in = c
  return total + 2 * c_in + c_in * classes + classes


@pytest.mark.parametrize("n_blocks, widen_factor", [(3, 1), (4, 10)])
def test_wide_resnet_shapes_and_count(n_blocks, widen_factor):
  model = WideResnet(n_blocks=n_blocks, widen_factor=widen_factor)
  assert model.output_signature(cx.ShapeDtype((2, 32, 32, 3))) == cx.ShapeDtype((2, 10))
  params, state = eval_shape_init(model, (2, 32, 32, 3))
  assert cx.count_params(params) == wide_resnet_count(n_blocks, widen_factor, 10)
  assert params["stage_0"]["block_0"]["shortcut"]["Conv_0"]["kernel"].shape == (3, 3, 16, 16 * widen_factor)
  assert params["stage_2"]["block_0"]["Conv_0"]["kernel"].shape == (3, 3, 32 * widen_factor, 64 * widen_factor)
  assert set(params["head"]) == {"BatchNorm_0", "Dense_0"}       # pre-activation: norm before pooling
  assert "BatchNorm_0" not in params["stem"]


def layers_in(layer):
  """Every layer in the tree below `layer`, itself included."""
  yield layer
  for child in layer.sublayers:
    yield from layers_in(child)


def test_wide_resnet_uses_its_bn_momentum_and_trax_shortcuts():
  model = WideResnet(n_blocks=2, bn_momentum=0.5)
  norms = [l for l in layers_in(model) if isinstance(l, cl.BatchNorm)]
  assert len(norms) == 3 * 2 * 2 + 1 and {l.momentum for l in norms} == {0.5}
  # Each group's first block has a 3x3 convolution shortcut, even group 0 where the shape does not change.
  params, _ = eval_shape_init(model, (1, 32, 32, 3))
  assert [sorted(params[f"stage_{i}"]["block_0"]["shortcut"]) for i in range(3)] == [["Conv_0"]] * 3
  assert all("shortcut" not in params[f"stage_{i}"]["block_1"] for i in range(3))


# --- Exact residual identities and BatchNorm state -----------------------------------------------------------

@pytest.mark.parametrize("make, channels, last", [
    (lambda: BasicBlock(4), 4, ("BatchNorm_1", "scale")),
    (lambda: BottleneckBlock(2), 8, ("BatchNorm_2", "scale")),
    (lambda: PreActBlock(4), 4, ("Conv_1", "kernel")),
])
@pytest.mark.parametrize("train", [False, True])
def test_block_is_the_identity_when_its_last_layer_is_zeroed(make, channels, last, train):
  block = make()
  x = jnp.abs(jax.random.normal(KEY, (2, 5, 5, channels)))   # >= 0, as after a Relu: v1 blocks end with one
  params, state = block.init(KEY, x)
  apply = jax.jit(lambda p, x: block.apply(p, state, x, train=train)[0])
  y = apply(params, x)
  assert not np.allclose(y, x)
  layer, weight = last
  zeroed = {**params, layer: {**params[layer], weight: jnp.zeros_like(params[layer][weight])}}
  if layer.startswith("Conv"):
    zeroed[layer]["bias"] = jnp.zeros_like(params[layer]["bias"])
  np.testing.assert_array_equal(apply(zeroed, x), x)


def test_projection_shortcut_when_the_shape_changes():
  block = BasicBlock(6, strides=2, project=True)
  x = jnp.abs(jax.random.normal(KEY, (2, 6, 6, 3)))
  params, state = block.init(KEY, x)
  params = {**params, "BatchNorm_1": {"scale": jnp.zeros(6), "bias": jnp.zeros(6)}}   # the main path gives 0
  y, _ = jax.jit(lambda p, x: block.apply(p, state, x))(params, x)
  # What is left is Relu(BatchNorm(1x1 conv with stride 2)); BatchNorm's initial statistics are mean 0, var 1.
  conv, norm = params["shortcut"]["Conv_0"], params["shortcut"]["BatchNorm_0"]
  projected = np.asarray(x)[:, ::2, ::2, :] @ np.asarray(conv["kernel"])[0, 0] + np.asarray(conv["bias"])
  expected = np.maximum(projected / np.sqrt(1 + 1e-5) * np.asarray(norm["scale"]) + np.asarray(norm["bias"]), 0)
  assert y.shape == (2, 3, 3, 6)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_batchnorm_statistics_change_only_when_training():
  model = tiny_resnet()
  x = 3.0 + jax.random.normal(KEY, (4, 8, 8, 1))
  params, state = model.init(KEY, x)
  _, trained = model.apply(params, state, x, train=True)
  _, evaluated = model.apply(params, state, x, train=False)
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), state, trained)
  assert all(jax.tree_util.tree_leaves(changed)), changed
  jax.tree_util.tree_map(np.testing.assert_array_equal, evaluated, state)
  # momentum 0.999: running = 0.999 * 0 + 0.001 * batch mean; the stem's BatchNorm sees the stem conv's output.
  assert float(jnp.max(jnp.abs(trained["stem"]["BatchNorm_0"]["mean"]))) > 0


# --- Errors and configuration --------------------------------------------------------------------------------

def test_wrong_rank_image_names_the_layer():
  with pytest.raises(cx.LayerError) as info:
    DigitsCNN().init(KEY, cx.ShapeDtype((4, 8, 8)))              # no channel axis
  assert info.value.path == "DigitsCNN/Conv[1]"
  assert "rank >= 4" in str(info.value) and "(4, 8, 8) float32" in str(info.value)
  model = tiny_resnet()
  params, state = model.init(KEY, cx.ShapeDtype((2, 8, 8, 1)))
  with pytest.raises(cx.LayerError) as info:
    model.apply(params, state, jnp.ones((2, 8, 8, 3)))          # three channels, built for one
  assert info.value.path == "ResNet/stem[1]/Conv[0]"
  assert "expected: (..., 1)" in str(info.value) and "(2, 8, 8, 3) float32" in str(info.value)


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="unknown block 'wide'"):
    ResNet(block="wide")
  with pytest.raises(ValueError, match="unknown stem"):
    ResNet(stem="cifar")
  with pytest.raises(cx.LayerError, match="unknown mode"):
    Resnet50(mode="training")


def test_models_are_gin_configurable():
  try:
    gin.parse_config(["combinax.models.MLP.layer_widths = (5, 3)", "combinax.models.ResNet.d_hidden = 4"])
    assert MLP().output_signature(cx.ShapeDtype((2, 7))) == cx.ShapeDtype((2, 3))
    params, _ = eval_shape_init(ResNet(), (1, 8, 8, 1))
    assert params["stem"]["Conv_0"]["kernel"].shape == (3, 3, 1, 4)
  finally:
    gin.clear_config()
