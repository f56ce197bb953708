"""Dual encoders (CLIP, SigLIP): an image tower and a text tower mapped to one space, trained contrastively.

`DualEncoder(image_tower, text_tower, d_embed)` takes (images, text ids) and returns the stack (image embeddings,
text embeddings, (log_temperature, bias)), the embeddings unit vectors of d_embed: what `cl.SigmoidContrastiveLoss`
(SigLIP) and `cl.SoftmaxContrastiveLoss` (CLIP) read. Each tower ends in a linear projection (`image/projection`,
`text/projection`); the towers are any layers giving features (batch, d): a `ViT(None, ...)`, or token activations
pooled over their non-padding positions by `TextTower` (a small `TransformerEncoder`, or the bundled MiniLM, whose
params then sit at `text/...` and can be frozen or given LoRA by path).

`encode_images`, `encode_texts`, `zero_shot_accuracy` and `retrieval_recall` evaluate a trained one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from combinax import layers as cl
from combinax.layers.attention import PaddingMask
from combinax.layers.contrastive import TemperatureAndBias
from combinax.models.transformer import Pool


def L2Normalize(epsilon: float = 1e-12) -> cl.Layer:
  """x (..., d) -> x / |x| along the last axis (computed in float32)."""
  def normalize(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), epsilon))
  return cl.Fn("L2Normalize", normalize)


def TextTower(encoder: cl.Layer, pool: str = "mean", pad_id: int = 0) -> cl.Layer:
  """Token ids (batch, length) -> features (batch, d): `encoder`'s activations (batch, length, d) (e.g.
  `TransformerEncoder(vocab, n_classes=None, ...)` or the bundled MiniLM) pooled over the positions that are not
  `pad_id` ("mean") or taken at the first ("cls")."""
  return cl.Serial(
      cl.Branch(encoder, PaddingMask(pad_id)),     # x (batch, length, d), mask
      Pool(pool))                                  # features (batch, d)


class DualEncoder(cl.Serial):
  """(images, text ids) -> (image embeddings (batch, d_embed), text embeddings (batch, d_embed), (log_temperature,
  bias)). `temperature` and `bias` initialise the learned scale: SigLIP's 10 and -10 (the default), CLIP's
  1 / 0.07 and 0.

  >>> from combinax.models import ViT, TransformerEncoder
  >>> model = DualEncoder(ViT(None, 8, patch_size=2, d_ff=16, n_layers=1, n_heads=2),
  ...     TextTower(TransformerEncoder(12, None, 8, d_ff=16, n_layers=1, n_heads=2)), d_embed=4)
  >>> model.output_signature((ShapeDtype((2, 4, 4, 1)), ShapeDtype((2, 5), jnp.int32)))
  (ShapeDtype((2, 4), float32), ShapeDtype((2, 4), float32), ShapeDtype((2,), float32))
  """

  def __init__(self, image_tower: cl.Layer, text_tower: cl.Layer, d_embed: int = 128, *, temperature: float = 10.0,
               bias: float = -10.0):
    image = cl.Serial(image_tower, cl.Dense(d_embed, name="projection"), L2Normalize(), name="image")
    text = cl.Serial(text_tower, cl.Dense(d_embed, name="projection"), L2Normalize(), name="text")
    super().__init__(
        cl.Parallel(image, text),                                  # image embeddings, text embeddings
        TemperatureAndBias(temperature, bias, name="scale"),       # scale, image embeddings, text embeddings
        cl.Select([1, 2, 0]),                                      # image embeddings, text embeddings, scale
        name="DualEncoder")
    self.image, self.text = image, text


def encode_images(model: DualEncoder, params, images, *, batch_size: int = 256) -> np.ndarray:
  """Unit image embeddings (n, d_embed) of `images`, in batches, evaluation mode."""
  apply = jax.jit(lambda p, x: model.image.apply(p, {}, x)[0])
  return np.concatenate([apply(params["image"], images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def encode_texts(model: DualEncoder, params, ids, *, batch_size: int = 256) -> np.ndarray:
  """Unit text embeddings (n, d_embed) of token ids (n, length)."""
  apply = jax.jit(lambda p, x: model.text.apply(p, {}, x)[0])
  return np.concatenate([apply(params["text"], ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)])


def zero_shot_accuracy(image_embeddings: np.ndarray, labels: np.ndarray, caption_embeddings: np.ndarray) -> float:
  """Top-1 accuracy of classifying each image as the candidate caption nearest to it (no training on the
  classes): `labels[i]` indexes the rows of `caption_embeddings` (one caption per class)."""
  predicted = np.argmax(image_embeddings @ caption_embeddings.T, axis=1)
  return float(np.mean(predicted == np.asarray(labels)))


def retrieval_recall(image_embeddings: np.ndarray, text_embeddings: np.ndarray, ks=(1, 5)) -> dict:
  """Recall@k of retrieving pair i's text from its image and its image from its text, among all n pairs:
  {"image_to_text@k": ..., "text_to_image@k": ...}."""
  similarity = image_embeddings @ text_embeddings.T
  n = len(similarity)
  out = {}
  for name, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
    rank = np.sum(scores > scores[np.arange(n), np.arange(n)][:, None], axis=1)   # others scored above the pair
    for k in ks:
      out[f"{name}@{k}"] = float(np.mean(rank < k))
  return out
