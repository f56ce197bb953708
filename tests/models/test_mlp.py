"""MLP: Trax's arguments, exact values against NumPy, shape agreement, jit/grad, paths, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl
from combinax.models.mlp import MLP

KEY = jax.random.key(0)


def test_exact_values_against_numpy():
  model = MLP(layer_widths=(3, 2))
  x = np.arange(8, dtype=np.float32).reshape(2, 2, 2) / 4 - 1    # flattened to (2, 4)
  w0 = np.array([[1, -1, 0.5], [0, 2, -1], [-1, 0, 1], [0.5, 0.5, 0.5]], np.float32)
  b0 = np.array([0.1, -0.2, 0.3], np.float32)
  w1 = np.array([[1, 2], [-1, 0], [0.5, -3]], np.float32)
  b1 = np.array([0.0, 1.0], np.float32)
  params = {"Dense_0": {"kernel": w0, "bias": b0}, "Dense_1": {"kernel": w1, "bias": b1}}
  hidden = np.maximum(x.reshape(2, 4) @ w0 + b0, 0)
  y, state = model.apply(params, {}, jnp.asarray(x))
  np.testing.assert_allclose(y, hidden @ w1 + b1, rtol=1e-6)
  assert state == {}
  # out_activation adds the activation after the last layer too; here a Tanh to see it act on negatives.
  y, _ = MLP((3, 2), activation_fn=cl.Tanh, out_activation=True).apply(params, {}, jnp.asarray(x))
  np.testing.assert_allclose(y, np.tanh(np.tanh(x.reshape(2, 4) @ w0 + b0) @ w1 + b1), rtol=1e-6)


def test_layers_follow_trax():
  assert [l.name for l in MLP().sublayers] == ["Flatten", "Dense", "Relu", "Dense"]
  assert [l.name for l in MLP((4, 4, 4), cl.Gelu, out_activation=True, flatten=False).sublayers] == [
      "Dense", "Gelu", "Dense", "Gelu", "Dense", "Gelu"]
  assert [l.name for l in MLP((5,)).sublayers] == ["Flatten", "Dense"]


@pytest.mark.parametrize("flatten, shape, out", [(True, (4, 3, 5), (4, 7)), (False, (4, 3, 5), (4, 3, 7))])
def test_output_signature_agrees_with_apply(flatten, shape, out):
  model = MLP((6, 7), flatten=flatten)
  sig = cx.ShapeDtype(shape)
  params, state = model.init(KEY, sig)
  y, _ = model.apply(params, state, jnp.ones(shape))
  assert model.output_signature(sig) == cx.signature(y) == cx.ShapeDtype(out)


def test_jit_grad_and_stable_paths():
  model = MLP((8, 8, 3))
  x = jax.random.normal(KEY, (5, 2, 2))
  params, state = model.init(KEY, x)
  assert cx.paths(params) == [f"Dense_{i}/{w}" for i in range(3) for w in ("bias", "kernel")]
  assert cx.paths(MLP((8, 8, 3)).init(jax.random.key(7), x)[0]) == cx.paths(params)
  assert cx.count_params(params) == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
  eager, _ = model.apply(params, state, x)
  jitted, _ = jax.jit(lambda p, x: model.apply(p, state, x))(params, x)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(model.apply(p, state, x)[0] ** 2))(params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree_util.tree_leaves(grads))


def test_bad_input_names_the_layer():
  model = MLP((4, 2))
  params, state = model.init(KEY, cx.ShapeDtype((3, 5)))
  with pytest.raises(cx.LayerError) as info:
    model.apply(params, state, jnp.ones((3, 6)))
  assert info.value.path == "MLP/Dense[1]"
  assert "expected: (..., 5)" in str(info.value) and "(3, 6) float32" in str(info.value)
  with pytest.raises(cx.LayerError, match="(?s)MLP/Flatten\\[0\\].*rank >= 2"):
    model.init(KEY, cx.ShapeDtype((5,)))
  with pytest.raises(cx.LayerError, match="unknown mode"):
    MLP(mode="training")
