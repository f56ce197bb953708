"""AttentionWeightedAverage: exact values against NumPy, numerical gradients, leading axes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import combinax as cx
from combinax import layers as cl

KEY = jax.random.key(0)


def np_attention_average(x, w, epsilon=1e-7):
  """Keras's AttentionWeightedAverage, in float64: softmax over time of x @ w (max trick, + epsilon), then the
  weighted sum over time."""
  logits = x @ w
  a = np.exp(logits - logits.max(axis=-1, keepdims=True))
  a = a / (a.sum(axis=-1, keepdims=True) + epsilon)
  return (x * a[..., None]).sum(axis=-2)


def test_exact_values():
  x = np.array([[[1.0, 2.0], [3.0, -1.0], [0.0, 0.5]]], np.float32)
  w = np.array([0.5, -1.0], np.float32)
  y, _ = cl.AttentionWeightedAverage().apply({"weights": jnp.asarray(w)}, {}, jnp.asarray(x))
  # scores -1.5, 2.5, -0.5: the weights are a softmax of them.
  a = np.exp([-4.0, 0.0, -3.0]) / (np.exp([-4.0, 0.0, -3.0]).sum() + 1e-7)
  expected = (a[:, None] * x[0].astype(np.float64)).sum(0)[None]
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(y), np_attention_average(x.astype(np.float64), w.astype(np.float64)),
                             rtol=1e-6)


def test_random_values_and_leading_axes():
  layer = cl.AttentionWeightedAverage()
  x = jax.random.normal(jax.random.key(1), (2, 3, 6, 5))
  params, _ = layer.init(KEY, x)
  assert cx.paths(params) == ["weights"] and params["weights"].shape == (5,)
  assert np.abs(params["weights"]).max() <= 0.05  # Keras's uniform initializer
  w = jax.random.normal(jax.random.key(2), (5,))
  y, _ = layer.apply({"weights": w}, {}, x)
  assert cx.signature(y) == layer.output_signature(cx.signature(x)) == cx.ShapeDtype((2, 3, 5))
  np.testing.assert_allclose(np.asarray(y), np_attention_average(np.asarray(x, np.float64), np.asarray(w, np.float64)),
                             rtol=1e-5, atol=1e-6)


def test_large_scores_are_stable():
  x = jnp.array([[[100.0], [101.0], [99.0]]])
  y, _ = cl.AttentionWeightedAverage().apply({"weights": jnp.array([50.0])}, {}, x)
  assert np.isfinite(np.asarray(y)).all()
  np.testing.assert_allclose(np.asarray(y), [[101.0]], rtol=1e-6)


def test_numerical_gradients():
  layer = cl.AttentionWeightedAverage()
  x = jax.random.normal(jax.random.key(3), (2, 4, 3))
  w = jax.random.normal(jax.random.key(4), (3,))
  with jax.enable_x64(True):
    x64, w64 = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)
    check_grads(jax.jit(lambda w, x: layer.apply({"weights": w}, {}, x)[0]), (w64, x64), order=1,
                modes=["rev", "fwd"])


@pytest.mark.parametrize("sig, message", [(cx.ShapeDtype((5,)), "rank >= 2"),
                                          (cx.ShapeDtype((2, 5), jnp.int32), "float dtype")])
def test_bad_inputs_raise_layer_errors(sig, message):
  layer = cl.AttentionWeightedAverage(name="attention")
  with pytest.raises(cl.LayerError, match=message) as info:
    layer.init(KEY, sig)
  assert "attention" in str(info.value) and "(..., length, features)" in str(info.value)
  with pytest.raises(cl.LayerError, match=message):
    layer.apply({"weights": jnp.zeros(5)}, {}, jnp.zeros(sig.shape, sig.dtype))


def test_feature_mismatch_names_the_layer():
  model = cl.Serial(cl.Dense(4), cl.AttentionWeightedAverage(name="attention"))
  params, _ = model.init(KEY, cx.ShapeDtype((2, 3, 5)))
  params["attention"]["weights"] = jnp.zeros(3)
  with pytest.raises(cl.LayerError, match="last dimension") as info:
    model.apply(params, {}, jnp.zeros((2, 3, 5)))
  assert info.value.path == "Serial/attention[1]"
