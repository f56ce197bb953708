"""A text-line recogniser built from combinax layers: PP-OCRv4's SVTR-LCNet (PaddleOCR; Du et al., 2022), the
network `pretrained.load("ppocr-v4-rec")` imports.

A line of text, RGB in [0, 1] (batch, 48, width, 3), becomes one vector per 8 columns:

* a PP-LCNetV3 backbone: a strided stem, then 14 blocks of a depthwise convolution and a pointwise one, each
  followed by a learned scalar affine, HardSwish and another affine (`ScaleAndShift`); two blocks gate their channels
  by squeeze-and-excitation. Height is divided by 16 and width by 4, and a 3 x 2 average pool leaves one row of
  width / 8 positions (`backbone/...`);
* an SVTR mixer over that row: two convolutions down to 120 channels, two pre-norm Transformer blocks (the
  Transformer's own `EncoderBlock`s, SiLU feed-forward), a LayerNorm and a convolution back to 480 channels, put
  beside the backbone's features and fused by two more convolutions (`mixer/...`, `fuse/...`, `project/...`);
* a Dense head to the CTC classes (`head/...`): 0 the blank, then the recogniser's characters.

The original's batch norms are folded into the convolutions before them (the backbone's were folded by its export
already), so every convolution has a bias and the model has no state.
"""

from __future__ import annotations

import jax.numpy as jnp

from combinax import layers as cl
from combinax.layers.vision import CheckImages
from combinax.models.transformer import Blocks, EncoderBlock, NamedModel, TransformerOptions
from combinax.models.vision import NoPadding, PooledHead

# (kernel side, strides, filters, squeeze-and-excitation) of each PP-LCNetV3 block as PP-OCRv4's recogniser has it
# (scale 0.95): the depthwise convolution keeps the channels and strides, the pointwise one maps to `filters`.
LCNET_V3_REC = (
    (3, 1, 32, False), (3, 1, 64, False), (3, 1, 64, False), (3, (2, 1), 128, False), (3, 1, 128, False),
    (3, (1, 2), 240, False), (5, 1, 240, False), (5, 1, 240, False), (5, 1, 240, False), (5, 1, 240, False),
    (5, (2, 1), 480, True), (5, 1, 480, True), (5, (2, 1), 480, False), (5, 1, 480, False))
HEIGHT = 48          # the line height the recogniser was trained on: 48 / 16 = 3 rows, pooled to 1
STEM = 16            # the stem's filters
MIXER = 120          # the SVTR mixer's width (its Transformer's d_model)


def _same(kernel: tuple) -> tuple:
  return tuple((k // 2, k // 2) for k in kernel)


def LCNetConv(filters: int, kernel: int, strides=1, groups: int = 1, name: str | None = None) -> cl.Layer:
  """A re-parameterised PP-LCNetV3 convolution: conv, affine, HardSwish, affine (`conv/...`, `affine/...`,
  `act_affine/...`)."""
  return cl.Serial(
      cl.Conv(filters, (kernel, kernel), strides=(strides, strides) if isinstance(strides, int) else strides,
              padding=_same((kernel, kernel)), groups=groups, name="conv"),
      cl.ScaleAndShift(name="affine"),
      cl.HardSwish(),
      cl.ScaleAndShift(name="act_affine"),
      name=name)


def SqueezeExcite(channels: int, reduction: int = 4, name: str = "se") -> cl.Layer:
  """x (batch, h, w, c) -> x gated per channel by HardSigmoid of two 1 x 1 convolutions of its spatial mean."""
  return cl.Serial(
      cl.Branch(None, cl.Serial(
          cl.Fn("SpatialMean", lambda x: jnp.mean(x, axis=(1, 2), keepdims=True)),   # (b, 1, 1, c)
          cl.Conv(channels // reduction, (1, 1), name="reduce"), cl.Relu(),
          cl.Conv(channels, (1, 1), name="expand"), cl.HardSigmoid())),                # x, gate
      cl.Multiply(),                                                                    # x * gate
      name=name)


def LCNetBlock(channels: int, kernel: int, strides, filters: int, squeeze_excite: bool, name: str) -> cl.Layer:
  """Depthwise `kernel` convolution over `channels` (strided), optional squeeze-and-excitation, pointwise to
  `filters`."""
  return cl.Serial(
      LCNetConv(channels, kernel, strides, groups=channels, name="depthwise"),
      SqueezeExcite(channels) if squeeze_excite else [],
      LCNetConv(filters, 1, name="pointwise"),
      name=name)


def ConvSilu(filters: int, kernel: tuple, name: str) -> cl.Layer:
  """The SVTR neck's convolution (its batch norm folded in) and SiLU."""
  return cl.Serial(cl.Conv(filters, kernel, padding=_same(kernel), name="conv"), cl.Silu(), name=name)


def TextRecognizer(n_classes: int | None = 6625, *, pool: str = "none", width: int | None = None,
                   blocks=LCNET_V3_REC, mixer_layers: int = 2, mode: str = "train") -> cl.Layer:
  """PP-OCRv4's recogniser: text lines, RGB in [0, 1] (batch, 48, width, 3), width a multiple of 8 -> CTC logits
  (batch, width / 8, n_classes), or with `n_classes=None` the features (batch, width / 8, 120) (a vision tower for
  an image-prefix LM), pooled to (batch, 120) with `pool` "mean" or "map" (attention pooling, new params at
  `map/...`: a dual encoder's image tower). `width` fixes the lines' width (any multiple of 8 if None), as an
  image-prefix LM's decoding must know its images' size.

  >>> TextRecognizer(10).output_signature(ShapeDtype((2, 48, 64, 3)))
  ShapeDtype((2, 8, 10), float32)
  >>> TextRecognizer(None, pool="map").output_signature(ShapeDtype((2, 48, 64, 3)))
  ShapeDtype((2, 120), float32)
  """
  if pool not in ("none", "mean", "map") or (pool != "none" and n_classes is not None):
    raise ValueError(f"TextRecognizer.pool: expected 'none', or 'mean' / 'map' with n_classes=None (the CTC head "
                     f"reads every position), got pool={pool!r} with n_classes={n_classes!r}")
  o = TransformerOptions(d_model=MIXER, d_ff=2 * MIXER, n_heads=8, dropout=0.0, ff_activation=cl.Silu,
                         positions="none", norm_epsilon=1e-5, remat=False)
  stages, channels = [], STEM
  for i, (kernel, strides, filters, se) in enumerate(blocks):
    stages.append(LCNetBlock(channels, kernel, strides, filters, se, name=f"block{i}"))
    channels = filters
  model = NamedModel(
      "TextRecognizer[PP-OCRv4]", o,                                                  # images (b, 48, w, 3), RGB
      CheckImages((HEIGHT, width), 3, multiple_of=8),                                 # images
      # PaddleOCR's input: BGR (OpenCV's order), scaled to [-1, 1].
      cl.Fn("PaddleInput", lambda x: (x[..., ::-1] - 0.5) / 0.5),                     # x (b, 48, w, 3)
      cl.Conv(STEM, (3, 3), strides=(2, 2), padding=_same((3, 3)), name="stem"),      # x (b, 24, w/2, 16)
      cl.Serial(*stages, name="backbone"),                                            # x (b, 3, w/4, 480)
      cl.AvgPool((3, 2)),                                                             # x (b, 1, w/8, 480)
      cl.Branch(None, cl.Serial(
          ConvSilu(MIXER // 2, (1, 3), "reduce"),                                     # z (b, 1, w/8, 60)
          ConvSilu(MIXER, (1, 1), "expand"),                                          # z (b, 1, w/8, 120)
          cl.Fn("Row", lambda z: z[:, 0]),                                            # z (b, w/8, 120)
          NoPadding(),                                                                # z, mask
          Blocks(EncoderBlock(o), mixer_layers, o),                                   # z, mask
          cl.Select([0], n_in=2),                                                     # z
          cl.LayerNorm(epsilon=1e-6, name="norm"),                                    # z
          cl.Fn("Grid", lambda z: z[:, None]),                                        # z (b, 1, w/8, 120)
          ConvSilu(channels, (1, 1), "restore"),                                      # z (b, 1, w/8, 480)
          name="mixer")),                                                             # x, z
      cl.Concatenate(axis=-1),                                                        # x ++ z (b, 1, w/8, 960)
      ConvSilu(MIXER // 2, (1, 3), "fuse"),                                           # y (b, 1, w/8, 60)
      ConvSilu(MIXER, (1, 1), "project"),                                             # y (b, 1, w/8, 120)
      cl.Fn("Row", lambda y: y[:, 0]),                                                # y (b, w/8, 120)
      [NoPadding(), PooledHead(pool, o)] if pool != "none" else [],                   # [y (b, 120)]
      [cl.Dense(n_classes, name="head")] if n_classes else [])                        # logits (b, w/8, classes)
  cl.check_mode(model, mode, decodes=False)
  return model


def ctc_collapse(best) -> list[int]:
  """One row of per-position classes with repeats merged and blanks (0) dropped: what a CTC row says.

  >>> ctc_collapse([0, 3, 3, 0, 3, 1, 1])
  [3, 3, 1]
  """
  out, previous = [], 0
  for i in best:
    if i != previous and i != 0:
      out.append(i)
    previous = i
  return out


def ctc_greedy(logits) -> list[list[int]]:
  """Each row's best class per position, collapsed (`ctc_collapse`): CTC's greedy decoding."""
  return [ctc_collapse(row) for row in jnp.argmax(logits, axis=-1).tolist()]
