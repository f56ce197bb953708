"""Vision Transformers built from combinax layers: `ViT` (Dosovitskiy et al., 2021, as big_vision writes it).

An image becomes a sequence: a strided `Conv` cuts it into patch_size x patch_size patches and projects each to
d_model (`patches/...`), a 2-D position encoding is added per grid cell (`positions/embedding`, learned, or fixed
sin-cos), the grid is read row by row as tokens, and the Transformer's own `EncoderBlock`s (`blocks/...`, with every
`TransformerOptions` field: scanned, rematerialised, pipelined) run over them with nothing masked. A head pools the
tokens (the class token, their mean, or an attention-pooling probe) and classifies (`head/...`).
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from combinax import layers as cl
from combinax.layers.attention import AttentionQKV
from combinax.layers.vision import POSITIONS_2D, CheckImages, LearnedToken, PositionalEncoding2D
from combinax.models.transformer import (Blocks, EncoderBlock, FeedForward, NamedModel, Pool, PreNorm,
                                         TransformerOptions)

POOLS = ("cls", "mean", "map", "none")


def ClassToken() -> cl.Layer:
  """x (batch, n, d) -> (batch, 1 + n, d): a learned token (`cls/token`, zeros at init) put before the others."""
  return cl.Serial(
      cl.Branch(LearnedToken("zeros", name="cls"), None),   # token, x
      cl.Concatenate(axis=1))                                # token ++ x


def NoPadding() -> cl.Layer:
  """x (batch, n, d) -> (x, an all-True attention mask (batch, 1, 1, n)): every image token is attended to."""
  return cl.Fn("NoPadding", lambda x: (x, jnp.ones((x.shape[0], 1, 1, x.shape[1]), jnp.bool_)), n_out=2)


def AttentionPool(o: TransformerOptions, name: str = "map") -> cl.Layer:
  """Multi-head attention pooling (big_vision's MAP head): a learned probe attends over the tokens, then a residual
  feed-forward block: (x (batch, n, d), mask) -> (batch, d). Params `probe/token`, `attention/...`, `norm/...`,
  `ff/...`."""
  return cl.Serial(
      cl.Select([0, 0, 0, 1]),                                            # x, x, x, mask
      LearnedToken("glorot_uniform", name="probe"),                       # probe, x, x, mask
      AttentionQKV(o.d_model, o.n_heads, n_kv_heads=o.n_kv_heads, use_bias=o.use_bias),  # y, mask
      cl.Select([0], n_in=2),                                             # y (batch, 1, d)
      cl.Residual(cl.LayerNorm(epsilon=o.norm_epsilon, name="norm"), FeedForward(o)),  # y
      cl.Fn("Squeeze", lambda y: y[:, 0]),                                # y (batch, d)
      name=name)


def check_pool(model: str, pool: str, n_classes: int | None, what: str):
  """A ValueError naming `model`'s pool when it is not one of POOLS, or is "none" (the `what` themselves) with a
  classifier."""
  if pool not in POOLS:
    raise ValueError(f"{model}.pool: expected one of {POOLS}, got {pool!r}")
  if pool == "none" and n_classes is not None:
    raise ValueError(f"{model}.pool: 'none' returns the {what}, which take no classifier; expected n_classes=None, "
                     f"got {n_classes!r}")


def PooledHead(pool: str, o: TransformerOptions) -> list:
  """(x, mask) -> the pooled (batch, d) (pool "cls", "mean" or "map"), or with "none" the tokens (batch, n, d)."""
  if pool == "map":
    return [AttentionPool(o)]
  if pool == "none":
    return [cl.Select([0], n_in=2)]
  return [Pool(pool)]   # "cls" or "mean"


def ViT(n_classes: int | None = 1000, d_model: int = 768, *, patch_size: int = 16, d_ff: int = 3072,
        n_layers: int = 12, n_heads: int = 12, dropout: float = 0.0, positions: str = "learned", pool: str = "cls",
        image_size=None, channels: int | None = None, mode: str = "train", ff_activation: Callable = cl.Gelu,
        n_kv_heads: int | None = None, norm: str = "layer", norm_epsilon: float = 1e-6, gated_ff: bool = False,
        use_bias: bool = True, scan_layers: bool = True, remat: bool | str = "dots", pipeline_stages: int = 1,
        microbatches: int = 1) -> cl.Layer:
  """A Vision Transformer: images (batch, height, width, channels) -> class logits (batch, n_classes).

  Args:
    n_classes: the classifier's classes (`head/...`); None returns the pooled features (batch, d_model), or with
      `pool="none"` the tokens (batch, n, d_model) (an image encoder for a dual encoder or an image-prefix LM).
    patch_size: the side of each square patch; the image's sides must be multiples of it.
    positions: "learned" (one vector per grid cell, the grid fixed at init) or "sincos" (fixed 2-D sin-cos).
    pool: "cls" (a class token's output), "mean" (the tokens' mean), "map" (attention pooling), "none".
    image_size, channels: the images the model is built for ((h, w) or one side; None: any), checked with one
      clear error. The other arguments are `TransformerOptions`' fields (pre-norm blocks; no decoding state).

  >>> vit = ViT(10, 16, patch_size=2, d_ff=32, n_layers=2, n_heads=2)
  >>> vit.output_signature(ShapeDtype((3, 8, 8, 1)))
  ShapeDtype((3, 10), float32)
  """
  if positions not in POSITIONS_2D:
    raise ValueError(f"ViT.positions: expected one of {POSITIONS_2D}, got {positions!r}")
  check_pool("ViT", pool, n_classes, "tokens")
  o = TransformerOptions(d_model=d_model, d_ff=d_ff, n_heads=n_heads, n_kv_heads=n_kv_heads, dropout=dropout,
                         ff_activation=ff_activation, positions="none", norm=norm, norm_epsilon=norm_epsilon,
                         gated_ff=gated_ff, use_bias=use_bias, scan_layers=scan_layers, remat=remat,
                         pipeline_stages=pipeline_stages, microbatches=microbatches)
  model = NamedModel(
      f"ViT[patch_size={patch_size}, positions={positions}, pool={pool}]", o,       # images (b, h, w, c)
      CheckImages(image_size, channels, multiple_of=patch_size),                    # images
      cl.Conv(d_model, (patch_size, patch_size), strides=(patch_size, patch_size),
              kernel_initializer="lecun_normal", name="patches"),                   # x (b, h/p, w/p, d)
      PositionalEncoding2D(positions, name="positions"),                            # x
      cl.Fn("Tokens", lambda x: x.reshape(x.shape[0], -1, x.shape[-1])),           # x (b, n, d): row by row
      ClassToken() if pool == "cls" else [],                                        # x (b, [1 +] n, d)
      cl.Dropout(dropout),                                                          # x
      NoPadding(),                                                                  # x, mask
      Blocks(EncoderBlock(o), n_layers, o),                                         # x, mask
      PreNorm(o, "final_norm"),                                                     # x, mask
      PooledHead(pool, o),                                                          # features
      [cl.Dense(n_classes, kernel_initializer="zeros", name="head")] if n_classes else [])  # logits
  cl.check_mode(model, mode, decodes=False)
  return model
