"""An image-prefix language model (PaliGemma's and nanoVLM's shape): a vision encoder's patch tokens, projected to
the LM's width, put before the text, with prefix-LM attention (full over the image and the prompt, causal over the
answer).

`ImagePrefixLM(vision, vocab_size, options, n_layers=...)` takes (images, prompt lengths, token ids) and returns
the text positions' next-token logits (batch, length, vocab). Its LM keeps a `TransformerLM`'s paths and shapes
(`embed/embedding`, `blocks/...`, `final_norm/...`, `logits/...`), so a trained or bundled LM's checkpoint loads
into it as it is; the new parts are `image/...` (the vision encoder) and `image/projector/...`. Training only the
projector (`TrainTask.trainable = ["image/projector/*"]`) is the first stage of nanoVLM's recipe (with a pretrained
vision encoder; without one, `["image/*"]` trains the encoder too).

The text is shifted right inside, as `TransformerLM`'s: position t of the text predicts token t from the image, a
start token (0) and tokens < t. The prefix of a sequence is its image tokens, the start token and its prompt (the
first `prompt length` tokens), so the position that predicts the answer's first token already sees the whole prompt.

In predict mode (`decoding.autoregressive_sample(vlm, params, prompt, inputs=(images, prompt lengths))`) the first
call runs the vision encoder and fills the KV caches with the image, the start token and the prompt at once
(`cl.Prefill`); every later call feeds one token, as a text LM's step does.
"""

from __future__ import annotations

import jax.numpy as jnp

from combinax import layers as cl
from combinax.layers.attention import ShiftRight
from combinax.models.transformer import Blocks, DecoderBlock, Embedded, NamedModel, PreNorm, TransformerOptions


def _join(image, prompt_lengths, x):
  """(image tokens (b, n, d), prompt lengths (b,), text x (b, t, d)) -> (image ++ text, each sequence's prefix
  length, a (b, n, 0) marker that remembers n at no cost). When decoding, calls after the first have n = 0."""
  if prompt_lengths.shape != (x.shape[0],) or not jnp.issubdtype(prompt_lengths.dtype, jnp.integer):
    raise ValueError(f"ImagePrefixLM: the second input is each sequence's prompt length, int ({x.shape[0]},); got "
                     f"{prompt_lengths.dtype} {prompt_lengths.shape}")
  joined = jnp.concatenate([image.astype(x.dtype), x], axis=1)
  return joined, prompt_lengths + image.shape[1] + 1, image[..., :0]


def ImagePrefixLM(vision: cl.Layer, vocab_size: int, options: TransformerOptions, *, n_layers: int,
                  tie_embeddings: bool = False, mode: str = "train") -> cl.Layer:
  """(images, prompt lengths (batch,) int, token ids (batch, length)) -> logits (batch, length, vocab_size).

  Args:
    vision: images -> tokens (batch, n, d_vision), e.g. `ViT(None, ..., pool="none")`; its params at `image/...`.
    options: the LM's blocks (`TransformerOptions`, e.g. SmolLM2's); `n_layers`, `tie_embeddings` as
      `TransformerLM`'s. `options.max_len` counts the image's tokens too when decoding.

  >>> from combinax.models import ViT
  >>> o = TransformerOptions(d_model=16, d_ff=32, n_heads=2, positions="rotary", max_len=64)
  >>> vlm = ImagePrefixLM(ViT(None, 8, patch_size=4, d_ff=16, n_layers=1, n_heads=2, pool="none"), 20, o, n_layers=2)
  >>> vlm.output_signature((ShapeDtype((2, 8, 8, 3)), ShapeDtype((2,), jnp.int32), ShapeDtype((2, 5), jnp.int32)))
  ShapeDtype((2, 5, 20), float32)
  """
  embed = cl.Embedding(vocab_size, options.d_model, name="embed")
  image = cl.Serial(vision, cl.Dense(options.d_model, name="projector"), name="image")
  text = cl.Serial(                                                          # image tokens, lengths, ids
      cl.Parallel(None, None, [ShiftRight(mode=mode), embed]),               # image tokens, lengths, x
      cl.Fn("JoinPrefix", _join, n_out=3),                                   # x (image ++ text), prefix, marker
      Embedded(options, mode),                                               # x, prefix, marker
      Blocks(DecoderBlock(options, mode=mode, prefix=True), n_layers, options),  # x, prefix, marker
      cl.Select([0, 2], n_in=3),                                             # x, marker
      PreNorm(options, "final_norm"),                                        # x, marker
      cl.Fn("TextPositions", lambda x, marker: x[:, marker.shape[1]:]),      # x (batch, length, d)
      cl.TiedLogits(embed) if tie_embeddings else cl.Dense(vocab_size, name="logits"))   # logits
  # images, lengths, ids -> logits; when decoding, the image is encoded and cached once, in the first call.
  return NamedModel("ImagePrefixLM", options, cl.Prefill(image, text, mode=mode))
