"""Exact values of the core layers, activations, normalization, convolution, pooling, losses and initializers,
and numerical gradient checks of the custom math."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import combinax as cx
from combinax import layers as cl
from combinax.layers import initializers

KEY = jax.random.key(0)


def init_apply(layer, x, **kwargs):
  params, state = layer.init(KEY, x)
  return params, layer.apply(params, state, x, **kwargs)


def test_dense_is_affine():
  x = jax.random.normal(KEY, (2, 3, 4))
  params, (y, _) = init_apply(cl.Dense(5), x)
  np.testing.assert_allclose(y, np.asarray(x) @ np.asarray(params["kernel"]) + np.asarray(params["bias"]),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("leading", [(), (3,), (2, 3), (2, 1, 3), (0, 3)])
def test_dense_dot_is_dot_for_any_leading_axes_and_so_is_its_gradient(leading):
  from combinax.layers.core import dense_dot
  x = jax.random.normal(KEY, leading + (4,))
  kernel = jax.random.normal(jax.random.key(1), (4, 5))
  np.testing.assert_allclose(dense_dot(x, kernel), np.asarray(x) @ np.asarray(kernel), rtol=1e-5, atol=1e-6)
  cotangent = jax.random.normal(jax.random.key(2), leading + (5,))
  ours = jax.vjp(dense_dot, x, kernel)[1](cotangent)
  plain = jax.vjp(jnp.dot, x, kernel)[1](cotangent)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_initializers_are_selectable_per_layer():
  params, _ = cl.Dense(3, kernel_initializer="zeros", bias_initializer=initializers.ones()).init(
      KEY, cx.ShapeDtype((1, 2)))
  np.testing.assert_array_equal(params["kernel"], np.zeros((2, 3)))
  np.testing.assert_array_equal(params["bias"], np.ones(3))
  with pytest.raises(ValueError, match="unknown initializer 'glorot'"):
    cl.Dense(3, kernel_initializer="glorot")


@pytest.mark.parametrize("name, variance", [
    ("glorot_normal", 2 / (400 + 600)), ("glorot_uniform", 2 / (400 + 600)),
    ("lecun_normal", 1 / 400), ("lecun_uniform", 1 / 400),
    ("he_normal", 2 / 400), ("he_uniform", 2 / 400)])
def test_initializer_variances(name, variance):
  w = np.asarray(initializers.get(name)(KEY, (400, 600), jnp.float32))
  assert abs(w.mean()) < 0.01 * math.sqrt(variance) * 10
  assert w.var() == pytest.approx(variance, rel=0.03)


def test_other_initializers():
  q = np.asarray(initializers.orthogonal()(KEY, (5, 5), jnp.float32))
  np.testing.assert_allclose(q.T @ q, np.eye(5), atol=1e-5)
  u = np.asarray(initializers.uniform(0.5)(KEY, (10000,), jnp.float32))
  assert -0.5 <= u.min() and u.max() < 0.5 and u.var() == pytest.approx(1 / 12, rel=0.05)
  n = np.asarray(initializers.normal(0.3)(KEY, (10000,), jnp.float32))
  assert n.std() == pytest.approx(0.3, rel=0.05)
  assert np.all(np.asarray(initializers.ones()(KEY, (3,), jnp.float32)) == 1)


def test_embedding_looks_up_rows():
  ids = jnp.array([[0, 3], [3, 1]], jnp.int32)
  params, (y, _) = init_apply(cl.Embedding(4, 2), ids)
  np.testing.assert_array_equal(y, np.asarray(params["embedding"])[np.asarray(ids)])


def test_dropout_drops_with_probability_rate_and_rescales():
  x = jnp.ones((200_000,))
  layer = cl.Dropout(0.3)
  assert layer.apply({}, {}, x, train=False)[0] is x
  y = np.asarray(layer.apply({}, {}, x, rng=jax.random.key(1), train=True)[0])
  assert (y == 0).mean() == pytest.approx(0.3, abs=0.005)
  np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
  shared = np.asarray(cl.Dropout(0.5, shared_axes=[0]).apply({}, {}, jnp.ones((4, 100)), rng=KEY, train=True)[0])
  assert np.all(shared == shared[0:1])


def test_reductions_and_simple_layers():
  x = jnp.array([[1.0, 5.0, 3.0], [4.0, 2.0, 6.0]])
  assert cl.Mean().apply({}, {}, x)[0].tolist() == [3, 4]
  assert float(cl.Sum().apply({}, {}, x)[0]) == 21
  assert cl.Max(axis=0).apply({}, {}, x)[0].tolist() == [4, 5, 6]
  assert cl.ArgMax().apply({}, {}, x)[0].tolist() == [1, 2]
  np.testing.assert_allclose(jnp.sum(cl.Softmax().apply({}, {}, x)[0], axis=-1), [1, 1], rtol=1e-6)
  log_probs = cl.LogSoftmax().apply({}, {}, x)[0]
  np.testing.assert_allclose(log_probs, np.asarray(x) - np.log(np.exp(np.asarray(x)).sum(-1, keepdims=True)),
                             rtol=1e-5)
  assert cl.Flatten().apply({}, {}, jnp.zeros((2, 3, 4)))[0].shape == (2, 12)
  assert cl.ToFloat().apply({}, {}, jnp.array([1, 2]))[0].dtype == jnp.float32
  assert float(jax.grad(lambda v: jnp.sum(cl.StopGradient().apply({}, {}, v)[0] * v))(2.0 * jnp.ones(()))) == 2.0
  params, (w, _) = init_apply(cl.Weights("ones", shape=(2, 2)), ())
  np.testing.assert_array_equal(w, np.ones((2, 2)))


X = np.linspace(-3, 3, 13).astype(np.float32)
ERF = np.vectorize(math.erf)


@pytest.mark.parametrize("layer, expected", [
    (cl.Relu(), np.maximum(X, 0)),
    (cl.Gelu(), 0.5 * X * (1 + ERF(X / math.sqrt(2)))),
    (cl.FastGelu(), 0.5 * X * (1 + np.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X ** 3)))),
    (cl.Sigmoid(), 1 / (1 + np.exp(-X))),
    (cl.Tanh(), np.tanh(X)),
    (cl.Silu(), X / (1 + np.exp(-X))),
    (cl.Elu(), np.where(X > 0, X, np.exp(X) - 1)),
    (cl.Selu(), 1.0507009873554805 * np.where(X > 0, X, 1.6732632423543772 * (np.exp(X) - 1))),
    (cl.LeakyRelu(0.1), np.where(X > 0, X, 0.1 * X)),
    (cl.Softplus(), np.log1p(np.exp(X))),
    (cl.HardSwish(), X * np.clip(X + 3, 0, 6) / 6),
    (cl.HardSigmoid(), np.clip(X / 6 + 0.5, 0, 1)),
], ids=lambda v: getattr(v, "name", ""))
def test_activations(layer, expected):
  np.testing.assert_allclose(layer.apply({}, {}, jnp.asarray(X))[0], expected, rtol=1e-5, atol=1e-6)


def test_glu_gates_with_the_second_half():
  x = jnp.array([[1.0, 2.0, 0.0, 100.0]])
  np.testing.assert_allclose(cl.Glu().apply({}, {}, x)[0], [[0.5, 2.0]], rtol=1e-6)


def test_layer_norm_and_rms_norm():
  x = np.random.RandomState(0).randn(3, 5).astype(np.float32)
  _, (y, _) = init_apply(cl.LayerNorm(epsilon=1e-6), jnp.asarray(x))
  np.testing.assert_allclose(y, (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6),
                             rtol=1e-4, atol=1e-5)
  _, (y, _) = init_apply(cl.RMSNorm(epsilon=1e-6), jnp.asarray(x))
  np.testing.assert_allclose(y, x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6), rtol=1e-5)
  bf16 = cl.LayerNorm().apply(*cl.LayerNorm().init(KEY, x), jnp.asarray(x, jnp.bfloat16))[0]
  assert bf16.dtype == jnp.bfloat16


def test_batch_norm_uses_batch_statistics_when_training_and_running_ones_otherwise():
  x = np.random.RandomState(1).randn(8, 2, 3).astype(np.float32) * 3 + 1
  layer = cl.BatchNorm(momentum=0.9, epsilon=1e-5)
  params, state = layer.init(KEY, x)
  y, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
  mean, var = x.mean((0, 1)), x.var((0, 1))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new_state["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(new_state["var"], 0.9 + 0.1 * var, rtol=1e-5)
  y_eval, same_state = layer.apply(params, new_state, jnp.asarray(x), train=False)
  np.testing.assert_allclose(y_eval, (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5), rtol=1e-4, atol=1e-5)
  assert same_state is new_state


def _correlate(x, k):
  """Reference 2-D 'VALID' cross-correlation of (H, W, C) with (kh, kw, C, F)."""
  kh, kw = k.shape[:2]
  out = np.zeros((x.shape[0] - kh + 1, x.shape[1] - kw + 1, k.shape[-1]), np.float32)
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      out[i, j] = np.einsum("hwc,hwcf->f", x[i:i + kh, j:j + kw], k)
  return out


def test_conv2d_is_a_cross_correlation():
  x = np.random.RandomState(2).randn(2, 5, 6, 3).astype(np.float32)
  params, (y, _) = init_apply(cl.Conv(4, (2, 3)), jnp.asarray(x))
  k, b = np.asarray(params["kernel"]), np.asarray(params["bias"])
  for n in range(2):
    np.testing.assert_allclose(y[n], _correlate(x[n], k) + b, rtol=1e-4, atol=1e-5)
  assert cl.Conv(4, (3, 3), strides=(2, 2), padding="SAME").output_signature(x).shape == (2, 3, 3, 4)


def test_grouped_conv_convolves_each_group_of_channels_apart():
  x = np.random.RandomState(3).randn(2, 5, 6, 6).astype(np.float32)
  params, (y, _) = init_apply(cl.Conv(4, (2, 3), groups=2), jnp.asarray(x))
  k, b = np.asarray(params["kernel"]), np.asarray(params["bias"])
  assert k.shape == (2, 3, 3, 4)              # each filter sees its group's 3 channels
  for n in range(2):
    first, second = _correlate(x[n, ..., :3], k[..., :2]), _correlate(x[n, ..., 3:], k[..., 2:])
    np.testing.assert_allclose(y[n], np.concatenate([first, second], -1) + b, rtol=1e-4, atol=1e-5)
  depthwise = cl.Conv(6, (3, 3), padding="SAME", groups=6)
  assert depthwise.init(KEY, x)[0]["kernel"].shape == (3, 3, 1, 6)


def test_grouped_conv_refuses_groups_that_do_not_divide_the_channels():
  with pytest.raises(cl.LayerError, match="groups must divide the filters"):
    cl.Conv(5, (3, 3), groups=2)
  with pytest.raises(cl.LayerError, match="(?s)groups must divide the input.s channels.*multiple of groups=2"):
    cl.Conv(4, (3, 3), groups=2).init(KEY, cx.ShapeDtype((1, 5, 5, 3)))


def test_scale_and_shift_is_one_learned_affine():
  layer = cl.ScaleAndShift()
  params, state = layer.init(KEY, cx.ShapeDtype((2, 3)))
  assert {k: v.shape for k, v in params.items()} == {"scale": (), "bias": ()}
  x = jnp.array([[1.0, -2.0, 3.0]])
  np.testing.assert_array_equal(layer.apply(params, state, x)[0], x)      # the identity at init
  np.testing.assert_allclose(layer.apply({"scale": jnp.array(-0.5), "bias": jnp.array(2.0)}, {}, x)[0],
                             [[1.5, 3.0, 0.5]])


def test_causal_conv_never_looks_ahead():
  x = jax.random.normal(KEY, (1, 8, 2))
  layer = cl.CausalConv(3, kernel_width=3, dilation=2)
  params, state = layer.init(KEY, x)
  y = layer.apply(params, state, x)[0]
  y_changed = layer.apply(params, state, x.at[:, 5].set(100.0))[0]
  np.testing.assert_array_equal(y[:, :5], y_changed[:, :5])
  assert not np.allclose(y[:, 5], y_changed[:, 5])
  k = np.asarray(params["kernel"])  # taps at t-4, t-2, t
  expected_t6 = sum(np.asarray(x)[0, 6 - 2 * (2 - i)] @ k[i] for i in range(3)) + np.asarray(params["bias"])
  np.testing.assert_allclose(y[0, 6], expected_t6, rtol=1e-5)


def test_pools():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  assert cl.MaxPool((2, 2)).apply({}, {}, x)[0][0, :, :, 0].tolist() == [[5, 7], [13, 15]]
  assert cl.SumPool((2, 2)).apply({}, {}, x)[0][0, :, :, 0].tolist() == [[10, 18], [42, 50]]
  assert cl.AvgPool((2, 2)).apply({}, {}, x)[0][0, :, :, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
  same = cl.AvgPool((3, 3), strides=(1, 1), padding="SAME").apply({}, {}, x)[0][0, :, :, 0]
  assert float(same[0, 0]) == pytest.approx(np.mean([0, 1, 4, 5]))  # corner: 4 valid entries
  assert float(same[1, 1]) == pytest.approx(5.0)


LOGITS = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
TARGETS = jnp.array([0, 1], jnp.int32)


def _ce(logits, targets):
  logits = np.asarray(logits)
  return np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(targets)), np.asarray(targets)]


def test_cross_entropies():
  ce = _ce(LOGITS, TARGETS)
  weights = jnp.array([1.0, 3.0])
  got = cl.WeightedCategoryCrossEntropy().apply({}, {}, (LOGITS, TARGETS, weights))[0]
  assert float(got) == pytest.approx((ce[0] + 3 * ce[1]) / 4, rel=1e-6)
  assert float(cl.CategoryCrossEntropy().apply({}, {}, (LOGITS, TARGETS))[0]) == pytest.approx(ce.mean(), rel=1e-6)
  zero = cl.WeightedCategoryCrossEntropy().apply({}, {}, (LOGITS, TARGETS, jnp.zeros(2)))[0]
  assert float(zero) == 0.0
  s = 0.2
  log_probs = np.asarray(jax.nn.log_softmax(LOGITS))
  smooth = ((1 - s) * ce - s * log_probs.mean(-1)).mean()
  got = cl.CategoryCrossEntropy(label_smoothing=s).apply({}, {}, (LOGITS, TARGETS))[0]
  assert float(got) == pytest.approx(smooth, rel=1e-6)


def test_binary_cross_entropy_and_l2():
  z, t = jnp.array([0.0, 2.0, -1.0]), jnp.array([1.0, 0.0, 0.0])
  p = 1 / (1 + np.exp(-np.asarray(z)))
  expected = -np.mean(np.asarray(t) * np.log(p) + (1 - np.asarray(t)) * np.log(1 - p))
  assert float(cl.BinaryCrossEntropy().apply({}, {}, (z, t))[0]) == pytest.approx(expected, rel=1e-6)
  y, target, w = jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 0.0])
  assert float(cl.L2Loss().apply({}, {}, (y, target, w))[0]) == pytest.approx(2.0)


def test_accuracies():
  logits = jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
  targets = jnp.array([[0, 1], [0, 1]], jnp.int32)
  weights = jnp.array([[1.0, 1.0], [1.0, 0.0]])
  assert float(cl.WeightedCategoryAccuracy().apply({}, {}, (logits, targets, weights))[0]) == 1.0
  assert float(cl.WeightedCategoryAccuracy().apply({}, {}, (logits, targets, jnp.ones((2, 2))))[0]) == 0.75
  assert float(cl.SequenceAccuracy().apply({}, {}, (logits, targets, weights))[0]) == 1.0
  assert float(cl.SequenceAccuracy().apply({}, {}, (logits, targets, jnp.ones((2, 2))))[0]) == 0.5


def _grad_check(layer, inputs, train=False):
  """Numerical vs automatic gradients (in float64) w.r.t. float inputs and parameters."""
  with jax.enable_x64(True):
    inputs = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, inputs)
    params, state = layer.init(KEY, inputs)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) + 0.1, params)
    items = list(inputs) if isinstance(inputs, tuple) else [inputs]
    floats = [i for i, a in enumerate(items) if jnp.issubdtype(a.dtype, jnp.floating)]

    def f(params, *values):
      full = list(items)
      for i, v in zip(floats, values):
        full[i] = v
      out = layer.apply(params, state, tuple(full) if isinstance(inputs, tuple) else full[0], train=train)[0]
      return jnp.sum(jnp.sin(out))  # a non-linear read-out, so every output entry matters

    check_grads(f, (params, *[items[i] for i in floats]), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make, inputs, train", [
    (cl.LayerNorm, np.random.RandomState(3).randn(3, 4), False),
    (cl.RMSNorm, np.random.RandomState(4).randn(3, 4), False),
    (cl.BatchNorm, np.random.RandomState(5).randn(6, 3), True),
    (cl.Glu, np.random.RandomState(6).randn(2, 4), False),
    (lambda: cl.AvgPool((3,), strides=(1,), padding="SAME"), np.random.RandomState(7).randn(1, 5, 2), False),
    (lambda: cl.WeightedCategoryCrossEntropy(label_smoothing=0.1),
     (np.random.RandomState(8).randn(4, 3), np.array([0, 2, 1, 1], np.int32), np.array([1.0, 0.5, 0.0, 2.0])),
     False),
    (cl.BinaryCrossEntropy, (np.random.RandomState(9).randn(5), np.array([0.0, 1, 1, 0, 1])), False),
    (cl.Gate, tuple(np.random.RandomState(10).randn(3, 2) for _ in range(3)), False),
    (lambda: cl.CausalConv(2, 2), np.random.RandomState(11).randn(1, 4, 2), False),
], ids=["LayerNorm", "RMSNorm", "BatchNorm", "Glu", "AvgPool", "WeightedCE", "BinaryCE", "Gate", "CausalConv"])
def test_gradients_match_finite_differences(make, inputs, train):
  inputs = jax.tree_util.tree_map(jnp.asarray, inputs)
  _grad_check(make(), inputs, train)


def test_threefry_written_out_is_jax_threefry_bit_for_bit():
  from jax.extend.random import threefry_2x32
  from combinax.layers.core import threefry2x32
  key = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
  counts = jnp.arange(64, dtype=jnp.uint32) * jnp.uint32(2654435761)
  want = threefry_2x32(key, counts)                       # hashes (counts[:32], counts[32:]) as pairs
  low, high = threefry2x32(key[0], key[1], counts[:32], counts[32:])
  np.testing.assert_array_equal(jnp.concatenate([low, high]), want)
  # The known-answer vector of the Threefry-2x32-20 paper (Random123): key and counter all ones.
  ones = jnp.uint32(0xFFFFFFFF)
  assert [int(v) for v in threefry2x32(ones, ones, ones, ones)] == [0x1CB996FC, 0xBB002BE7]


def test_dropout_masks_are_independent_reproducible_and_sharding_invariant():
  from combinax.layers.core import dropout_mask
  keep, scale = dropout_mask(jax.random.key(3), 0.25, (400, 500))
  assert scale == pytest.approx(4 / 3)
  keep = np.asarray(keep)
  assert keep.mean() == pytest.approx(0.75, abs=0.004)
  # Neighbours (along either axis) are uncorrelated, and a new key gives a new mask.
  for a, b in ((keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1])):
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] == pytest.approx(0.0, abs=0.01)
  other = np.asarray(dropout_mask(jax.random.key(4), 0.25, (400, 500))[0])
  assert np.corrcoef(keep.ravel(), other.ravel())[0, 1] == pytest.approx(0.0, abs=0.01)
  np.testing.assert_array_equal(dropout_mask(jax.random.key(3), 0.25, (400, 500))[0], keep)
  # Computed on 8 devices, each building its own rows, the mask is the same.
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = jax.jit(lambda k: dropout_mask(k, 0.25, (400, 500))[0], out_shardings=rows)(jax.random.key(3))
  assert len(sharded.addressable_shards) == 8
  np.testing.assert_array_equal(sharded, keep)
  assert bool(dropout_mask(KEY, 0.0, (3,))[0].all())
