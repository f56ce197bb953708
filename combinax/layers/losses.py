"""Loss layers: `(outputs, targets[, weights]) -> scalar`. Model outputs are logits, as in Trax.

Weighted losses return `sum(weights * loss) / sum(weights)` (0 when every weight is 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from combinax import shapes
from combinax.layers.base import Layer, LayerError


def check_categorical(layer: Layer, logits, targets, weights=None):
  """Logits (..., n_classes), integer targets (...), weights shaped like the targets."""
  given = shapes.describe((logits, targets) if weights is None else (logits, targets, weights))
  expected = "logits (..., n_classes), integer targets (...)" + ("" if weights is None else ", weights (...)")
  if (logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape
      or not jnp.issubdtype(targets.dtype, jnp.integer)):
    raise LayerError(layer, "logits and targets do not match", expected=expected, actual=given)
  if weights is not None and weights.shape != targets.shape:
    raise LayerError(layer, "weights must have the targets' shape", expected=expected, actual=given)


def check_same_shape(layer: Layer, *arrays):
  if len({a.shape for a in arrays}) != 1:
    raise LayerError(layer, "inputs must have one shape", expected="equal shapes",
                     actual=shapes.describe(tuple(arrays)))


def weighted_mean(values, weights):
  weights = weights.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), jnp.finfo(values.dtype).tiny)


def category_cross_entropy(logits, targets, label_smoothing: float = 0.0):
  """Per-position cross-entropy of integer targets under softmax(logits), with optional label smoothing:
  the target distribution is (1 - s) * one_hot + s / n_classes."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if not label_smoothing:
    return -picked
  return -(1.0 - label_smoothing) * picked - label_smoothing * jnp.mean(log_probs, axis=-1)


def _check_smoothing(layer: Layer, label_smoothing):
  if label_smoothing is not None and not 0.0 <= label_smoothing < 1.0:
    raise LayerError(layer, "label_smoothing must lie in [0, 1)", expected="0 <= s < 1", actual=label_smoothing)


class WeightedCategoryCrossEntropy(Layer):
  """Mean cross-entropy over positions with non-zero weight: (logits, targets, weights) -> scalar.

  >>> loss = WeightedCategoryCrossEntropy()
  >>> float(loss.apply({}, {}, (jnp.zeros((1, 4)), jnp.array([2]), jnp.ones(1)))[0])  # log(4)
  1.386...
  """

  def __init__(self, label_smoothing: float | None = None, name: str | None = None):
    super().__init__(3, 1, name)
    self.label_smoothing = label_smoothing
    _check_smoothing(self, label_smoothing)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets, weights = inputs
    check_categorical(self, logits, targets, weights)
    return weighted_mean(category_cross_entropy(logits, targets, self.label_smoothing or 0.0), weights), state


class CategoryCrossEntropy(Layer):
  """Mean cross-entropy: (logits, targets) -> scalar."""

  def __init__(self, label_smoothing: float | None = None, name: str | None = None):
    super().__init__(2, 1, name)
    self.label_smoothing = label_smoothing
    _check_smoothing(self, label_smoothing)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets = inputs
    check_categorical(self, logits, targets)
    return jnp.mean(category_cross_entropy(logits, targets, self.label_smoothing or 0.0)), state


class BinaryCrossEntropy(Layer):
  """Mean binary cross-entropy of 0/1 targets under sigmoid(logits): (logits, targets) -> scalar."""

  def __init__(self, name: str | None = None):
    super().__init__(2, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    logits, targets = inputs
    check_same_shape(self, logits, targets)
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    t = targets.astype(z.dtype)
    return -jnp.mean(t * jax.nn.log_sigmoid(z) + (1.0 - t) * jax.nn.log_sigmoid(-z)), state


class L2Loss(Layer):
  """Weighted mean squared error: (outputs, targets, weights) -> sum(w * (y - t)^2) / sum(w)."""

  def __init__(self, name: str | None = None):
    super().__init__(3, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    outputs, targets, weights = inputs
    check_same_shape(self, outputs, targets, weights)
    return weighted_mean(jnp.square(outputs - targets.astype(outputs.dtype)), weights), state


# --- Cross-entropy fused with the output projection --------------------------------------------------------------

_CHUNK_BYTES = 16 << 20  # logits of one chunk: small enough to stay in the CPU cache between matmul and softmax


def _chunk_loss_and_grads(x, kernel, bias, targets, weights, label_smoothing):
  """One chunk (batch, c, d): sum of weighted losses and the gradients of that sum w.r.t. x, kernel and bias."""
  logits = jnp.einsum("bcd,dv->bcv", x, kernel, preferred_element_type=jnp.float32) + bias[None, None, :]
  top = jnp.max(logits, axis=-1, keepdims=True)
  exps = jnp.exp(logits - top)
  total = jnp.sum(exps, axis=-1, keepdims=True)
  is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == targets[..., None]
  picked = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
  losses = jnp.log(total[..., 0]) + top[..., 0] - (1.0 - label_smoothing) * picked
  target_mass = (1.0 - label_smoothing) * is_target.astype(logits.dtype)
  if label_smoothing:
    losses = losses - label_smoothing * jnp.mean(logits, axis=-1)
    target_mass = target_mass + label_smoothing / logits.shape[-1]
  d_logits = (exps / total - target_mass) * weights[..., None]
  d_x = jnp.einsum("bcv,dv->bcd", d_logits, kernel.astype(d_logits.dtype))
  d_kernel = jnp.einsum("bcd,bcv->dv", x.astype(d_logits.dtype), d_logits)
  return jnp.sum(losses * weights), d_x, d_kernel, jnp.sum(d_logits, axis=(0, 1))


def _projected_loss_and_grads(x, kernel, bias, targets, weights, label_smoothing, chunk_tokens):
  """(weighted mean loss, its gradients w.r.t. x, kernel, bias), one chunk of positions at a time."""
  batch, length, d = x.shape
  vocab = kernel.shape[1]
  chunk_tokens = chunk_tokens or max(1, _CHUNK_BYTES // (4 * vocab))
  chunk = max(1, min(length, -(-chunk_tokens // batch)))
  n_chunks = -(-length // chunk)
  pad = n_chunks * chunk - length
  if pad:  # padded positions carry weight 0
    x, targets, weights = (jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)) for a in (x, targets, weights))
  # (n_chunks, batch, chunk, ...): the scan walks the length; the batch axis stays where the mesh shards it.
  split = lambda a: jnp.swapaxes(a.reshape((batch, n_chunks, chunk) + a.shape[2:]), 0, 1)

  def body(carry, chunk_inputs):
    loss_sum, d_kernel, d_bias = carry
    chunk_loss, d_x, chunk_d_kernel, chunk_d_bias = _chunk_loss_and_grads(*chunk_inputs[:1], kernel, bias,
                                                                          *chunk_inputs[1:], label_smoothing)
    return (loss_sum + chunk_loss, d_kernel + chunk_d_kernel, d_bias + chunk_d_bias), d_x

  zeros = (jnp.zeros((), jnp.float32), jnp.zeros(kernel.shape, jnp.float32), jnp.zeros((vocab,), jnp.float32))
  (loss_sum, d_kernel, d_bias), d_x = jax.lax.scan(body, zeros, (split(x), split(targets), split(weights)))
  d_x = jnp.swapaxes(d_x, 0, 1).reshape(batch, n_chunks * chunk, d)[:, :length]
  scale = 1.0 / jnp.maximum(jnp.sum(weights.astype(jnp.float32)), jnp.finfo(jnp.float32).tiny)
  return loss_sum * scale, d_x * scale, d_kernel * scale, d_bias * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _projected_cross_entropy(x, kernel, bias, targets, weights, label_smoothing, chunk_tokens):
  return _projected_loss_and_grads(x, kernel, bias, targets, weights, label_smoothing, chunk_tokens)[0]


def _projected_forward(x, kernel, bias, targets, weights, label_smoothing, chunk_tokens):
  loss, d_x, d_kernel, d_bias = _projected_loss_and_grads(x, kernel, bias, targets, weights, label_smoothing,
                                                          chunk_tokens)
  return loss, (d_x, d_kernel, d_bias, targets, weights)


def _projected_backward(label_smoothing, chunk_tokens, residuals, g):
  d_x, d_kernel, d_bias, targets, weights = residuals
  return (g * d_x, g * d_kernel, g * d_bias, np.zeros(targets.shape, jax.dtypes.float0), jnp.zeros_like(weights))


_projected_cross_entropy.defvjp(_projected_forward, _projected_backward)


def projected_cross_entropy(x, kernel, bias, targets, weights=None, label_smoothing: float = 0.0,
                            chunk_tokens: int | None = None):
  """The (weighted) mean cross-entropy of the logits `x @ kernel + bias` against integer `targets`, computed a
  chunk of positions at a time so the (batch, length, vocab) logits never exist at once.

  The same value as `category_cross_entropy(x @ kernel + bias, targets)` averaged with `weights`, and the same
  gradients (w.r.t. x, kernel, bias), but the gradients are formed in the forward pass, while each chunk's logits
  are still in the cache: for training steps (`TrainStep` uses it when a model ends in `Dense` and its loss is
  `CategoryCrossEntropy` / `WeightedCategoryCrossEntropy`), not for evaluation.

  Args:
    x: (batch, length, d) float32 activations; kernel (d, vocab); bias (vocab,) or None.
    targets: (batch, length) integer ids; weights: (batch, length) or None (every position counts once).
    chunk_tokens: positions per chunk (default: as many as keep a chunk's logits near 16 MiB).

  >>> x, kernel = jnp.ones((1, 2, 3)), jnp.zeros((3, 4))
  >>> float(projected_cross_entropy(x, kernel, None, jnp.array([[0, 3]])))  # uniform over 4: log(4)
  1.386...
  """
  if x.ndim != 3 or kernel.ndim != 2 or x.shape[-1] != kernel.shape[0] or targets.shape != x.shape[:2]:
    raise ValueError(f"projected_cross_entropy: expected x (batch, length, d), kernel (d, vocab), targets "
                     f"(batch, length); got x {x.shape}, kernel {kernel.shape}, targets {targets.shape}")
  weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  bias = jnp.zeros((kernel.shape[1],), jnp.float32) if bias is None else bias
  return _projected_cross_entropy(x, kernel, bias, targets.astype(jnp.int32), weights, float(label_smoothing),
                                  chunk_tokens)
