"""Contrastive losses of a dual encoder, and the learned temperature and bias they read.

A batch holds B (image, text) pairs; pair i's image and text are the only positives for each other. With unit
embeddings x_i (images), y_j (texts), t = exp(log_temperature) and bias b, the logits are z_ij = t x_i . y_j + b:

- SigLIP (Zhai et al., 2023): every pair is its own binary question, -1/B sum_ij log sigmoid(s_ij z_ij) with s_ij = 1
  on the diagonal and -1 elsewhere. No normalisation over the batch, so it splits over devices exactly: each device
  holds B/n images and B/n texts, scores its images against its own texts, passes its texts to the next device
  (a ring of `ppermute`s) n - 1 times, and the n partial sums are added once (`psum`). No device ever holds the
  B x B logits or another device's images.
- CLIP (Radford et al., 2021): softmax cross-entropy of each image over all texts and of each text over all images,
  averaged (the bias is unused). Its normalisation needs every row and column, so the sharded form gathers the
  texts and images (`all_gather`) and each device computes its own rows and columns.

Both run sharded when the step runs under a mesh with a `data` axis of more than one device that divides the batch
(`jax.set_mesh`, as the Trainer does), and plainly otherwise: the same value either way (tested).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from combinax import shapes
from combinax.layers.base import Layer, LayerError
from combinax.sharding import DATA


class TemperatureAndBias(Layer):
  """Takes nothing, pushes the learned (log_temperature, bias) as one (2,) array: params `log_temperature` and `bias`
  (scalars), initialised to log(`temperature`) and `bias` (SigLIP's: 10 and -10, so that the many negatives start
  near their target; CLIP's: 1 / 0.07 and 0).

  >>> TemperatureAndBias().init(jax.random.key(0), ())[0]["log_temperature"]
  Array(2.3025851, dtype=float32)
  """

  def __init__(self, temperature: float = 10.0, bias: float = -10.0, name: str | None = None):
    super().__init__(0, 1, name)
    if not temperature > 0:
      raise LayerError(self, "the temperature scales the logits", expected="temperature > 0", actual=temperature)
    self.temperature, self.bias = float(temperature), float(bias)

  def init_params_and_state(self, rng, input_signature):
    return {"log_temperature": jnp.asarray(math.log(self.temperature), jnp.float32),
            "bias": jnp.asarray(self.bias, jnp.float32)}, {}

  def forward(self, params, state, inputs, *, rng, train):
    return jnp.stack([params["log_temperature"], params["bias"]]), state


def _sigmoid_terms(images, texts, scale, positive: bool):
  """-sum_ij log sigmoid(s_ij z_ij) of a block of images against a block of texts, the diagonal positive or not."""
  logits = jnp.exp(scale[0]) * (images @ texts.T) + scale[1]                   # (b, b)
  signs = 2.0 * jnp.eye(images.shape[0], texts.shape[0], dtype=logits.dtype) - 1.0 if positive else -1.0
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits))


def sigmoid_loss(images, texts, scale):
  """SigLIP's loss on one device: images, texts (B, d) unit vectors, scale = (log_temperature, bias)."""
  return _sigmoid_terms(images, texts, scale, True) / images.shape[0]


def softmax_loss(images, texts, scale):
  """CLIP's loss on one device: the mean of the image->text and text->image cross-entropies."""
  logits = jnp.exp(scale[0]) * (images @ texts.T)
  diagonal = jnp.diagonal(logits)
  rows = jax.nn.logsumexp(logits, axis=1) - diagonal
  columns = jax.nn.logsumexp(logits, axis=0) - diagonal
  return (jnp.mean(rows) + jnp.mean(columns)) / 2


def _ring_sigmoid(images, texts, scale):
  """Per device (inside shard_map over `data`): its images against every device's texts, passed round a ring."""
  n = jax.lax.axis_size(DATA)
  total = _sigmoid_terms(images, texts, scale, True)
  for _ in range(n - 1):   # (n is static: the ring unrolls into n - 1 permutes, each overlapping the next matmul)
    texts = jax.lax.ppermute(texts, DATA, [(i, (i + 1) % n) for i in range(n)])
    total = total + _sigmoid_terms(images, texts, scale, False)
  return jax.lax.psum(total, DATA) / (images.shape[0] * n)


def _gathered_softmax(images, texts, scale):
  """Per device: its rows (its images over all texts) and its columns (its texts over all images)."""
  n, b = jax.lax.axis_size(DATA), images.shape[0]
  all_images = jax.lax.all_gather(images, DATA, tiled=True)
  all_texts = jax.lax.all_gather(texts, DATA, tiled=True)
  t = jnp.exp(scale[0])
  own = jax.lax.axis_index(DATA) * b + jnp.arange(b)
  rows = t * (images @ all_texts.T)                                          # (b, B)
  columns = t * (texts @ all_images.T)                                       # (b, B)
  diagonal = jnp.take_along_axis(rows, own[:, None], axis=1)[:, 0]
  terms = jnp.sum(jax.nn.logsumexp(rows, axis=1) - diagonal) + jnp.sum(jax.nn.logsumexp(columns, axis=1) - diagonal)
  return jax.lax.psum(terms, DATA) / (2 * b * n)


def check_pairs(layer: Layer, images, texts, scale):
  """A LayerError naming `layer` unless its inputs are a dual encoder's: B image and B text embeddings, the scale."""
  if not (images.ndim == texts.ndim == 2 and images.shape == texts.shape and scale.shape == (2,)):
    raise LayerError(layer, "expected a batch of image and of text embeddings, one per pair, and the scale",
                     expected="images (B, d), texts (B, d), (log_temperature, bias) (2,)",
                     actual=shapes.describe((images, texts, scale)))


class _ContrastiveLoss(Layer):

  plain = staticmethod(sigmoid_loss)
  sharded = staticmethod(_ring_sigmoid)

  def __init__(self, name: str | None = None):
    super().__init__(3, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    images, texts, scale = inputs
    check_pairs(self, images, texts, scale)
    images, texts, scale = (x.astype(jnp.float32) for x in (images, texts, scale))
    mesh = jax.sharding.get_abstract_mesh()
    devices = dict(mesh.shape).get(DATA, 1) if not mesh.empty else 1
    if devices == 1 or images.shape[0] % devices:
      return type(self).plain(images, texts, scale), state
    sharded = jax.shard_map(type(self).sharded, mesh=mesh, in_specs=(P(DATA), P(DATA), P()), out_specs=P(),
                            axis_names={DATA})
    return sharded(images, texts, scale), state


class SigmoidContrastiveLoss(_ContrastiveLoss):
  """SigLIP's pairwise sigmoid loss: (image embeddings (B, d), text embeddings (B, d), (log_temperature, bias)) ->
  scalar, a ring over the `data` axis under a mesh (module docstring).

  >>> x = jnp.eye(2)
  >>> loss, _ = SigmoidContrastiveLoss().apply({}, {}, (x, x, jnp.array([0.0, 0.0])))
  >>> bool(jnp.isclose(loss, -(2 * jnp.log(jax.nn.sigmoid(1.0)) + 2 * jnp.log(jax.nn.sigmoid(-0.0))) / 2))
  True
  """


class SoftmaxContrastiveLoss(_ContrastiveLoss):
  """CLIP's symmetric softmax loss: the same inputs (the bias unused), gathered over the `data` axis under a mesh."""

  plain = staticmethod(softmax_loss)
  sharded = staticmethod(_gathered_softmax)


class PairAccuracy(Layer):
  """In-batch retrieval accuracy of a dual encoder's outputs: the fraction of images whose most similar text in the
  batch is their own (image embeddings, text embeddings, scale) -> scalar; an evaluation metric.

  >>> x = jnp.eye(3)
  >>> round(float(PairAccuracy().apply({}, {}, (x, x[jnp.array([0, 2, 1])], jnp.zeros(2)))[0]), 4)   # pair 0 only
  0.3333
  """

  def __init__(self, name: str | None = None):
    super().__init__(3, 1, name)

  def forward(self, params, state, inputs, *, rng, train):
    images, texts, scale = inputs
    check_pairs(self, images, texts, scale)
    nearest = jnp.argmax(images.astype(jnp.float32) @ texts.astype(jnp.float32).T, axis=1)
    return jnp.mean((nearest == jnp.arange(images.shape[0])).astype(jnp.float32)), state
