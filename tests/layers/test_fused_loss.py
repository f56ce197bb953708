"""`projected_cross_entropy`: the output projection and the cross-entropy in one pass, chunk by chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from combinax.layers.losses import category_cross_entropy, projected_cross_entropy, weighted_mean

B, T, D, V = 3, 7, 5, 11


def problem(seed=0):
  k = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(k[0], (B, T, D))
  kernel, bias = jax.random.normal(k[1], (D, V)), jax.random.normal(k[2], (V,))
  targets = jax.random.randint(k[3], (B, T), 0, V)
  weights = (jax.random.uniform(k[4], (B, T)) > 0.3).astype(jnp.float32)
  return x, kernel, bias, targets, weights


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 3, 5, 100])    # 3 and 5 leave a padded last chunk
def test_matches_logits_then_cross_entropy(smoothing, weighted, chunk):
  x, kernel, bias, targets, weights = problem()
  weights = weights if weighted else None

  def reference(x, kernel, bias):
    losses = category_cross_entropy(x @ kernel + bias[None, None, :], targets, smoothing)
    return weighted_mean(losses, jnp.ones((B, T)) if weights is None else weights)

  fused = lambda x, kernel, bias: projected_cross_entropy(x, kernel, bias, targets, weights, smoothing, chunk)
  want, want_grads = jax.value_and_grad(reference, (0, 1, 2))(x, kernel, bias)
  got, got_grads = jax.value_and_grad(fused, (0, 1, 2))(x, kernel, bias)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(got_grads, want_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_agree_with_finite_differences():
  x, kernel, bias, targets, weights = problem(1)
  fused = lambda x, kernel, bias: projected_cross_entropy(x, kernel, bias, targets, weights, 0.1, 2)
  check_grads(fused, (x, kernel, bias), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_no_bias_all_zero_weights_and_the_scale_of_the_upstream_gradient():
  x, kernel, _, targets, weights = problem(2)
  no_bias = projected_cross_entropy(x, kernel, None, targets)
  reference = jnp.mean(category_cross_entropy(x @ kernel, targets))
  np.testing.assert_allclose(no_bias, reference, rtol=1e-6)
  assert float(projected_cross_entropy(x, kernel, None, targets, jnp.zeros((B, T)))) == 0.0
  grad = lambda scale: jax.grad(lambda k: scale * projected_cross_entropy(x, k, None, targets))(kernel)
  np.testing.assert_allclose(grad(3.0), 3.0 * grad(1.0), rtol=1e-6)


def test_bad_shapes_are_named():
  x, kernel, bias, targets, _ = problem()
  with pytest.raises(ValueError, match="targets"):
    projected_cross_entropy(x, kernel, bias, targets[:, :3])
  with pytest.raises(ValueError, match="kernel"):
    projected_cross_entropy(x, kernel.T, bias, targets)
