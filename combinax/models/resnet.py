"""Residual convolutional networks (a general `ResNet` builder, Trax's `Resnet50` and `WideResnet`) and a small
CNN for 8x8 digit images. Images are channels last: (batch, height, width, channels).

Parameters read as the architecture: `stem/Conv_0/kernel`, `stage_1/block_0/Conv_0/kernel`,
`stage_1/block_0/shortcut/Conv_0/kernel`, `head/Dense_0/kernel`.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax.numpy as jnp

from combinax import layers as cl

LayerFactory = Callable[[], cl.Layer]


def GlobalAvgPool() -> cl.Layer:
  """Averages over the spatial axes: (batch, spatial..., channels) -> (batch, channels).

  >>> GlobalAvgPool().apply({}, {}, jnp.ones((2, 3, 3, 5)))[0].shape
  (2, 5)
  """
  return cl.Fn("GlobalAvgPool", lambda x: jnp.mean(x, axis=tuple(range(1, x.ndim - 1))))


def _shortcut(filters: int, strides: int, kernel: int, norm: LayerFactory | None) -> cl.Layer:
  """The projection shortcut: a strided convolution to the block's output shape (then `norm`, if given)."""
  return cl.Serial(cl.Conv(filters, (kernel, kernel), strides, padding="SAME"), norm() if norm else None,
                   name="shortcut")


def BasicBlock(filters: int, strides: int = 1, project: bool = False, shortcut_kernel: int = 1,
               norm: LayerFactory = cl.BatchNorm, non_linearity: LayerFactory = cl.Relu,
               name: str | None = None) -> cl.Layer:
  """Two 3x3 convolutions with a shortcut around them, then the non-linearity (ResNet v1, as in ResNet-18/34).

  `strides` is applied by the first convolution; `project` replaces the identity shortcut by a strided
  `shortcut_kernel` convolution and `norm`, needed where the block changes the shape.

  >>> block = BasicBlock(8, strides=2, project=True, name="block_0")
  >>> block.output_signature(ShapeDtype((2, 6, 6, 4)))
  ShapeDtype((2, 3, 3, 8), float32)
  """
  main = [
      cl.Conv(filters, (3, 3), strides, padding="SAME"),  # (batch, h / strides, w / strides, filters)
      norm(), non_linearity(),
      cl.Conv(filters, (3, 3), padding="SAME"),
      norm(),                                   # a zero scale here makes the block the identity (for x >= 0)
  ]
  shortcut = _shortcut(filters, strides, shortcut_kernel, norm) if project else None
  return cl.Serial(cl.Residual(main, shortcut=shortcut), non_linearity(), name=name)


def BottleneckBlock(filters: int, strides: int = 1, project: bool = False, shortcut_kernel: int = 1,
                    norm: LayerFactory = cl.BatchNorm, non_linearity: LayerFactory = cl.Relu,
                    name: str | None = None) -> cl.Layer:
  """1x1 (reduce to `filters`), 3x3, 1x1 (expand to `4 * filters`) convolutions with a shortcut around them, then
  the non-linearity (ResNet v1, as Trax's `ConvBlock`/`IdentityBlock`: the stride sits on the first 1x1).

  >>> BottleneckBlock(4, project=True).output_signature(ShapeDtype((2, 6, 6, 8)))
  ShapeDtype((2, 6, 6, 16), float32)
  """
  main = [
      cl.Conv(filters, (1, 1), strides),                  # (batch, h / strides, w / strides, filters)
      norm(), non_linearity(),
      cl.Conv(filters, (3, 3), padding="SAME"),
      norm(), non_linearity(),
      cl.Conv(4 * filters, (1, 1)),                       # (batch, h / strides, w / strides, 4 * filters)
      norm(),
  ]
  shortcut = _shortcut(4 * filters, strides, shortcut_kernel, norm) if project else None
  return cl.Serial(cl.Residual(main, shortcut=shortcut), non_linearity(), name=name)


def PreActBlock(filters: int, strides: int = 1, project: bool = False, shortcut_kernel: int = 1,
                norm: LayerFactory = cl.BatchNorm, non_linearity: LayerFactory = cl.Relu,
                name: str | None = None) -> cl.Layer:
  """Pre-activation block (ResNet v2, Wide ResNets): norm, non-linearity and a 3x3 convolution, twice, with a
  shortcut around them and nothing after the sum. A projection shortcut is a convolution of the block's input.

  >>> PreActBlock(8, strides=2, project=True, shortcut_kernel=3).output_signature(ShapeDtype((2, 6, 6, 4)))
  ShapeDtype((2, 3, 3, 8), float32)
  """
  main = [
      norm(), non_linearity(),
      cl.Conv(filters, (3, 3), strides, padding="SAME"),  # (batch, h / strides, w / strides, filters)
      norm(), non_linearity(),
      cl.Conv(filters, (3, 3), padding="SAME"),            # zero this and the block is the identity
  ]
  shortcut = _shortcut(filters, strides, shortcut_kernel, None) if project else None
  return cl.Serial(cl.Residual(main, shortcut=shortcut), name=name)


# block kind -> (block factory, output channels per filter, whether it is pre-activation)
_BLOCKS = {
    "basic": (BasicBlock, 1, False),
    "bottleneck": (BottleneckBlock, 4, False),
    "preact": (PreActBlock, 1, True),
}
_STEMS = ("small", "imagenet")


def _choice(value, choices, what: str):
  if value not in choices:
    raise ValueError(f"ResNet: unknown {what} {value!r}; expected one of {', '.join(map(repr, choices))}")
  return value


def ResNet(stage_sizes: Sequence[int] = (2, 2), d_hidden: int = 16, n_output_classes: int = 10,
           block: str = "basic", stem: str = "small", stem_width: int | None = None, shortcut_kernel: int = 1,
           project_every_stage: bool = False, norm: LayerFactory = cl.BatchNorm,
           non_linearity: LayerFactory = cl.Relu, mode: str = "train", name: str = "ResNet") -> cl.Layer:
  """A residual CNN: a stem, stages of residual blocks, global average pooling and a Dense head giving logits.

  Stage `i` has `stage_sizes[i]` blocks of `d_hidden * 2**i` filters; every stage but the first halves the
  resolution in its first block. Where a block changes the shape, its shortcut is a projection (a strided
  `shortcut_kernel` convolution, then `norm` in post-activation blocks).

  Args:
    stage_sizes: the number of blocks in each stage.
    d_hidden: the filters of the first stage (doubled in each later stage).
    n_output_classes: the width of the logits.
    block: "basic" (two 3x3 convs), "bottleneck" (1x1, 3x3, 1x1 with 4x expansion) or "preact" (pre-activation
      basic blocks; the stem then has no norm, and the head starts with norm and non-linearity).
    stem: "small" (a 3x3 conv, for small images) or "imagenet" (a 7x7 conv with stride 2, then a 3x3 max-pool
      with stride 2).
    stem_width: the stem's filters (default `d_hidden`).
    shortcut_kernel: the window of projection shortcuts (1, or Trax's 3 for WideResnet).
    project_every_stage: project in the first block of every stage even where the shape is kept (Trax's
      WideResnet does).
    norm, non_linearity: functions of no arguments giving the normalization and activation layers;
      `functools.partial(cl.BatchNorm, momentum=0.9)` sets BatchNorm's momentum.
    mode: "train" or "eval" (Trax's; the same model: BatchNorm uses the batch's statistics, and updates its
      running ones in `state`, when applied with `train=True`). There is no "predict": nothing here decodes.
    name: the model's name, shown by `print` and in error paths.

  >>> model = ResNet(stage_sizes=(1, 1), d_hidden=8, n_output_classes=10)
  >>> sig = ShapeDtype((2, 8, 8, 1))
  >>> model.output_signature(sig)
  ShapeDtype((2, 10), float32)
  >>> params, state = model.init(jax.random.key(0), sig)
  >>> [p for p in cx.paths(params) if "kernel" in p]
  ['head/Dense_0/kernel', 'stage_0/block_0/Conv_0/kernel', 'stage_0/block_0/Conv_1/kernel',
   'stage_1/block_0/Conv_0/kernel', 'stage_1/block_0/Conv_1/kernel', 'stage_1/block_0/shortcut/Conv_0/kernel',
   'stem/Conv_0/kernel']
  >>> cx.paths(state)[:2]       # BatchNorm's running statistics
  ['stage_0/block_0/BatchNorm_0/mean', 'stage_0/block_0/BatchNorm_0/var']
  """
  make_block, expansion, preact = _BLOCKS[_choice(block, _BLOCKS, "block")]
  _choice(stem, _STEMS, "stem")
  channels, imagenet = stem_width or d_hidden, stem == "imagenet"
  stem_layers = [
      cl.Conv(channels, (7, 7), 2, padding="SAME") if imagenet else cl.Conv(channels, (3, 3), padding="SAME"),
      None if preact else [norm(), non_linearity()],   # pre-activation blocks normalise their own input
      cl.MaxPool((3, 3), strides=(2, 2)) if imagenet else None,
  ]
  stages = []
  for i, n_blocks in enumerate(stage_sizes):
    filters, strides = d_hidden * 2 ** i, (1 if i == 0 else 2)
    blocks = []
    for j in range(n_blocks):
      first = j == 0
      project = first and (project_every_stage or strides != 1 or channels != filters * expansion)
      blocks.append(make_block(filters, strides if first else 1, project=project, shortcut_kernel=shortcut_kernel,
                               norm=norm, non_linearity=non_linearity, name=f"block_{j}"))
      channels = filters * expansion
    stages.append(cl.Serial(blocks, name=f"stage_{i}"))
  model = cl.Serial(
      cl.ToFloat(),                                     # (batch, height, width, channels)
      cl.Serial(stem_layers, name="stem"),              # (batch, height', width', stem_width)
      stages,                                           # (batch, height'', width'', channels)
      cl.Serial(
          [norm(), non_linearity()] if preact else None,
          GlobalAvgPool(),                              # (batch, channels)
          cl.Dense(n_output_classes),                   # (batch, n_output_classes): logits
          name="head"),
      name=name)
  cl.check_mode(model, mode, decodes=False)
  return model


def Resnet50(d_hidden: int = 64, n_output_classes: int = 1001, mode: str = "train",
             norm: LayerFactory = cl.BatchNorm, non_linearity: LayerFactory = cl.Relu) -> cl.Layer:
  """ResNet-50 (v1, as Trax's): a 7x7 stem and max-pool, then 3, 4, 6, 3 bottleneck blocks of `d_hidden` to
  `8 * d_hidden` filters (4x that out), global average pooling and a Dense layer giving logits.

  Trax pools with a fixed 7x7 window, which is global for 224x224 images; here the pooling is global for any size.

  >>> Resnet50(d_hidden=4, n_output_classes=7).output_signature(ShapeDtype((1, 32, 32, 3)))
  ShapeDtype((1, 7), float32)
  """
  return ResNet(stage_sizes=(3, 4, 6, 3), d_hidden=d_hidden, n_output_classes=n_output_classes, block="bottleneck",
                stem="imagenet", norm=norm, non_linearity=non_linearity, mode=mode, name="Resnet50")


def WideResnet(n_blocks: int = 3, widen_factor: int = 1, n_output_classes: int = 10, bn_momentum: float = 0.9,
               mode: str = "train") -> cl.Layer:
  """Wide ResNet (Zagoruyko & Komodakis, 2016) for 32x32 images, as Trax's: a 3x3 conv to 16 channels, three
  groups of `n_blocks` pre-activation blocks of 16, 32, 64 times `widen_factor` filters (each group's first block
  has a 3x3 convolution shortcut and the stride), then BatchNorm, Relu, global average pooling and Dense logits.

  >>> WideResnet(n_blocks=1).output_signature(ShapeDtype((2, 32, 32, 3)))
  ShapeDtype((2, 10), float32)
  """
  return ResNet(stage_sizes=(n_blocks,) * 3, d_hidden=16 * widen_factor, n_output_classes=n_output_classes,
                block="preact", stem="small", stem_width=16, shortcut_kernel=3, project_every_stage=True,
                norm=functools.partial(cl.BatchNorm, momentum=bn_momentum), mode=mode, name="WideResnet")


def DigitsCNN(n_output_classes: int = 10, mode: str = "train") -> cl.Layer:
  """A small CNN for 8x8 single-channel digit images, (batch, 8, 8, 1) -> (batch, n_output_classes) logits.

  >>> model = DigitsCNN()
  >>> model.output_signature(ShapeDtype((4, 8, 8, 1)))
  ShapeDtype((4, 10), float32)
  >>> cx.count_params(model.init(jax.random.key(0), ShapeDtype((4, 8, 8, 1)))[0])
  13706
  """
  model = cl.Serial(
      cl.ToFloat(),                                     # (batch, 8, 8, 1)
      cl.Conv(16, (3, 3), padding="SAME"), cl.Relu(),   # (batch, 8, 8, 16)
      cl.MaxPool((2, 2)),                               # (batch, 4, 4, 16)
      cl.Conv(32, (3, 3), padding="SAME"), cl.Relu(),   # (batch, 4, 4, 32)
      cl.MaxPool((2, 2)),                               # (batch, 2, 2, 32)
      cl.Flatten(),                                     # (batch, 128)
      cl.Dense(64), cl.Relu(),                          # (batch, 64)
      cl.Dense(n_output_classes),                       # (batch, n_output_classes): logits
      name="DigitsCNN")
  cl.check_mode(model, mode, decodes=False)
  return model
