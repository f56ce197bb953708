"""DistillationLoss: zero at the teacher, the analytic gradient, plain cross-entropy at T = 1 and alpha = 0 (bitwise),
top-k teacher logits that reduce to the full loss when k is the vocabulary, and padding that counts for nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from combinax import layers as cl

VOCAB = 11


def logits(seed, shape=(3, 5, VOCAB)):
  return jax.random.normal(jax.random.key(seed), shape) * 2.0


TARGETS = jax.random.randint(jax.random.key(9), (3, 5), 0, VOCAB)
WEIGHTS = jnp.ones((3, 5))


def test_a_student_equal_to_its_teacher_has_zero_soft_loss_and_gradient():
  loss = cl.DistillationLoss(temperature=3.0, alpha=1.0)
  t = logits(0)
  value, grad = jax.value_and_grad(lambda s: loss.apply({}, {}, (s, t, TARGETS, WEIGHTS))[0])(t)
  assert abs(float(value)) < 1e-6
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)


@pytest.mark.parametrize("temperature, alpha", [(1.0, 1.0), (2.0, 0.7), (4.0, 0.3)])
def test_the_gradient_is_the_analytic_one(temperature, alpha):
  loss = cl.DistillationLoss(temperature=temperature, alpha=alpha)
  s, t = logits(1), logits(2)
  grad = jax.grad(lambda s: loss.apply({}, {}, (s, t, TARGETS, WEIGHTS))[0])(s)
  n = TARGETS.size
  soft = alpha * temperature * (jax.nn.softmax(s / temperature) - jax.nn.softmax(t / temperature)) / n
  hard = (1 - alpha) * (jax.nn.softmax(s) - jax.nn.one_hot(TARGETS, VOCAB)) / n
  np.testing.assert_allclose(grad, soft + hard, atol=1e-6)


def test_temperature_one_and_alpha_zero_is_plain_cross_entropy_bitwise():
  s, t = logits(3), logits(4)
  weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], jnp.float32)
  distilled = cl.DistillationLoss(temperature=1.0, alpha=0.0).apply({}, {}, (s, t, TARGETS, weights))[0]
  plain = cl.WeightedCategoryCrossEntropy().apply({}, {}, (s, TARGETS, weights))[0]
  assert np.asarray(distilled).tobytes() == np.asarray(plain).tobytes()


def test_top_k_teacher_log_probabilities_with_k_the_vocabulary_give_the_full_loss():
  s, t = logits(5), logits(6)
  full = cl.DistillationLoss(2.0, 0.6).apply({}, {}, (s, t, TARGETS, WEIGHTS))[0]
  values, ids = jax.lax.top_k(jax.nn.log_softmax(t), VOCAB)
  top = cl.DistillationLoss(2.0, 0.6, top_k=True).apply({}, {}, (s, values, ids, TARGETS, WEIGHTS))[0]
  np.testing.assert_allclose(top, full, rtol=1e-6)


def test_with_fewer_tokens_the_rest_of_the_vocabulary_is_one_class_of_both_distributions():
  s, t = logits(5), logits(6)
  k, T = 3, 2.0
  values, ids = jax.lax.top_k(jax.nn.log_softmax(t), k)
  few = cl.DistillationLoss(T, 1.0, top_k=True).apply({}, {}, (s, values, ids, TARGETS, WEIGHTS))[0]
  # by hand, in float64: k + 1 classes, the teacher's and the student's probabilities of the other tokens summed
  p_t, p_s = np.exp(np.asarray(jax.nn.log_softmax(t), np.float64)), np.asarray(jax.nn.softmax(s), np.float64)
  ids = np.asarray(ids)
  top_t, top_s = np.take_along_axis(p_t, ids, -1), np.take_along_axis(p_s, ids, -1)
  bucket_t = np.concatenate([top_t, 1 - top_t.sum(-1, keepdims=True)], -1) ** (1 / T)
  bucket_s = np.concatenate([top_s, 1 - top_s.sum(-1, keepdims=True)], -1) ** (1 / T)
  bucket_t /= bucket_t.sum(-1, keepdims=True)
  bucket_s /= bucket_s.sum(-1, keepdims=True)
  expected = T ** 2 * np.mean(np.sum(bucket_t * np.log(bucket_t / bucket_s), -1))
  np.testing.assert_allclose(few, expected, rtol=1e-5)


def test_a_student_that_matches_the_teachers_top_k_and_rest_has_zero_loss_and_gradient():
  t = logits(9)
  values, ids = jax.lax.top_k(jax.nn.log_softmax(t), 4)
  loss = lambda s: cl.DistillationLoss(2.0, 1.0, top_k=True).apply({}, {}, (s, values, ids, TARGETS, WEIGHTS))[0]
  value, grad = jax.value_and_grad(loss)(t)
  assert abs(float(value)) < 1e-6
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_padding_counts_for_nothing():
  s, t = logits(7), logits(8)
  weights = WEIGHTS.at[:, 3:].set(0.0)
  loss = cl.DistillationLoss(2.0, 0.5)
  garbage = s.at[:, 3:].set(1e3)   # whatever the padded positions hold
  np.testing.assert_allclose(loss.apply({}, {}, (s, t, TARGETS, weights))[0],
                             loss.apply({}, {}, (garbage, t, TARGETS, weights))[0], rtol=1e-6)


def test_mistakes_are_named():
  with pytest.raises(cl.LayerError, match="temperature must be positive"):
    cl.DistillationLoss(temperature=0.0)
  with pytest.raises(cl.LayerError, match="alpha weighs the soft term"):
    cl.DistillationLoss(alpha=1.5)
  with pytest.raises(cl.LayerError, match="they must share the vocabulary"):
    cl.DistillationLoss().apply({}, {}, (logits(0), logits(1, (3, 5, 7)), TARGETS, WEIGHTS))
