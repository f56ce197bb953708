"""An audio encoder built from combinax layers: Whisper's encoder (Radford et al., 2022) at any size.

Log-mel frames (batch, frames, n_mels) go through two 1-D convolutions of width 3 with GELU (`conv1/...`, then
`conv2/...` with stride 2 and a frame of padding each side, as Whisper's: half as many frames, frame j seeing
input frames 2j - 2 .. 2j + 2), sinusoidal (or learned) positions, and the
Transformer's own pre-norm `EncoderBlock`s (`blocks/...`, with every `TransformerOptions` field: scanned,
rematerialised, pipelined) with nothing masked; then a final norm and the ViT's heads: the frames' mean, a class
token's output or an attention-pooling probe, and a classifier (`head/...`), or with `pool="none"` the frames
themselves (an audio prefix for `ImagePrefixLM`, whose encoder may be any layer giving tokens).
"""

from __future__ import annotations

from typing import Callable

from combinax import layers as cl
from combinax.models.transformer import Blocks, EncoderBlock, Embedded, NamedModel, PreNorm, TransformerOptions
from combinax.models.vision import ClassToken, NoPadding, PooledHead, check_pool


def AudioEncoder(n_classes: int | None = 30, d_model: int = 384, *, n_mels: int = 80, d_ff: int = 1536,
                 n_layers: int = 4, n_heads: int = 6, dropout: float = 0.0, positions: str = "sinusoidal",
                 max_frames: int = 3000, pool: str = "mean", mode: str = "train", ff_activation: Callable = cl.Gelu,
                 n_kv_heads: int | None = None, norm: str = "layer", norm_epsilon: float = 1e-5,
                 use_bias: bool = True, scan_layers: bool = True, remat: bool | str = "dots",
                 pipeline_stages: int = 1, microbatches: int = 1) -> cl.Layer:
  """Log-mel frames (batch, frames, n_mels) -> class logits (batch, n_classes) (Whisper-tiny's encoder by default,
  with 4 blocks of width 384).

  Args:
    n_classes: the classifier's classes (`head/...`); None returns the pooled features (batch, d_model), or with
      `pool="none"` the encoded frames (batch, ceil(frames / 2), d_model).
    n_mels, max_frames: the spectrograms the model is built for (checked with one clear error); `max_frames` also
      sizes learned positions (one per encoded frame: max_frames / 2).
    positions: "sinusoidal" (fixed, Whisper's) or "learned".
    pool: "mean", "cls", "map" (attention pooling) or "none", as `ViT`'s. The rest are `TransformerOptions`' fields.

  >>> AudioEncoder(10, 16, n_mels=8, d_ff=32, n_layers=1, n_heads=2).output_signature(ShapeDtype((2, 50, 8)))
  ShapeDtype((2, 10), float32)
  """
  if positions not in ("sinusoidal", "learned"):
    raise ValueError(f"AudioEncoder.positions: expected 'sinusoidal' or 'learned', got {positions!r}")
  check_pool("AudioEncoder", pool, n_classes, "frames")
  o = TransformerOptions(d_model=d_model, d_ff=d_ff, n_heads=n_heads, n_kv_heads=n_kv_heads, dropout=dropout,
                         max_len=-(-max_frames // 2), ff_activation=ff_activation, positions=positions, norm=norm,
                         norm_epsilon=norm_epsilon, use_bias=use_bias, scan_layers=scan_layers, remat=remat,
                         pipeline_stages=pipeline_stages, microbatches=microbatches)
  model = NamedModel(
      f"AudioEncoder[pool={pool}]", o,                                             # frames (b, t, n_mels)
      cl.CheckFrames(n_mels, max_frames),                                          # frames
      cl.Conv(d_model, (3,), padding="SAME", name="conv1"), cl.Gelu(),            # x (b, t, d)
      cl.Conv(d_model, (3,), strides=(2,), padding=((1, 1),), name="conv2"), cl.Gelu(),  # x (b, ceil(t / 2), d)
      Embedded(o, "train"),                                                        # x + positions, dropped out
      ClassToken() if pool == "cls" else [],                                       # x (b, [1 +] t', d)
      NoPadding(),                                                                 # x, mask
      Blocks(EncoderBlock(o), n_layers, o),                                        # x, mask
      PreNorm(o, "final_norm"),                                                    # x, mask
      PooledHead(pool, o),                                                         # features
      [cl.Dense(n_classes, kernel_initializer="zeros", name="head")] if n_classes else [])   # logits
  cl.check_mode(model, mode, decodes=False)
  return model
