"""Transformers built from combinax layers: encoder (classifier), decoder, decoder-only LM, encoder-decoder.

Every model is a stack program over `combinax.layers`; the comment after each line shows the stack it leaves.
Options cover the common pretrained families, so checkpoints map onto these models without a second implementation:
pre-/post-LayerNorm (`pre_norm`), LayerNorm or RMSNorm (`norm`), ReLU/GELU or gated (SwiGLU-style) feed-forward
(`ff_activation`, `gated_ff`), biases (`use_bias`), tied output embeddings (`tie_embeddings`), sinusoidal, learned or
rotary positions (`positions`), and BERT-style token types (`type_vocab_size`).

Identical blocks are stacked and run as one `lax.scan` (`scan_layers=True`: compile time independent of depth).
`remat` sets what training keeps of each block for the backward pass (see `Repeat`): by default `"dots"`, only the
matmul outputs, recomputing norms, activations, dropout masks and softmaxes (faster on CPU, less memory); `False`
keeps everything, `True` nothing.

Parameter paths: `embed/embedding`, `positions/embedding` (learned), `blocks/attention/q/kernel` (stacked, one row per
layer), `blocks/attention_norm/scale`, `blocks/ff/in/kernel` (or `ff/gate`, `ff/up`, `ff/down` when gated),
`final_norm/scale`, `logits/kernel`; encoder-decoders put these under `encoder/` and `decoder/`, with the decoder's
`blocks/cross_attention/...`.
"""

from __future__ import annotations

from typing import Callable

import gin
import jax.numpy as jnp

from combinax import layers as cl
from combinax.layers.attention import Attention, AttentionQKV, CausalAttention, PaddingMask, ShiftRight
from combinax.layers.positional import LearnedPositionalEncoding, PositionalEncoding
from combinax.layers.repeat import Repeat

POSITIONS = ("sinusoidal", "learned", "rotary", "rotary_interleaved", "none")


def _rotary(positions: str) -> str | None:
  if positions not in POSITIONS:
    raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
  return {"rotary": "half", "rotary_interleaved": "interleaved"}.get(positions)


def _positional(positions: str, max_len: int, mode: str) -> list:
  if positions == "sinusoidal":
    return [PositionalEncoding(max_len, mode=mode, name="positions")]
  if positions == "learned":
    return [LearnedPositionalEncoding(max_len, mode=mode, name="positions")]
  return []  # rotary positions live in the attention layers


def Norm(kind: str = "layer", epsilon: float = 1e-6, name: str | None = None) -> cl.Layer:
  """LayerNorm (`"layer"`) or RMSNorm (`"rms"`)."""
  if kind == "layer":
    return cl.LayerNorm(epsilon=epsilon, name=name)
  if kind == "rms":
    return cl.RMSNorm(epsilon=epsilon, name=name)
  raise ValueError(f"norm must be 'layer' or 'rms', got {kind!r}")


def FeedForward(d_model: int, d_ff: int, dropout: float = 0.0, activation: Callable = cl.Relu,
                gated: bool = False, use_bias: bool = True, name: str | None = "ff") -> cl.Layer:
  """The position-wise feed-forward block: x -> (batch, length, d_model).

  Plain: `out(dropout(activation(in(x))))`; gated (SwiGLU with `activation=cl.Silu`):
  `down(dropout(activation(gate(x)) * up(x)))`.
  """
  if gated:
    return cl.Serial(
        cl.Branch(cl.Serial(cl.Dense(d_ff, use_bias=use_bias, name="gate"), activation()),
                  cl.Dense(d_ff, use_bias=use_bias, name="up")),  # activation(gate x), up x
        cl.Multiply(),                                           # h
        cl.Dropout(dropout),
        cl.Dense(d_model, use_bias=use_bias, name="down"),       # y
        name=name)
  return cl.Serial(
      cl.Dense(d_ff, use_bias=use_bias, name="in"),              # h
      activation(),
      cl.Dropout(dropout),
      cl.Dense(d_model, use_bias=use_bias, name="out"),          # y
      name=name)


def _sublayer(norm_layer: cl.Layer, body: list, dropout: float, pre_norm: bool) -> list:
  """A residual sub-block: pre-norm `x + body(norm(x))`, or post-norm `norm(x + body(x))` (as BERT)."""
  if pre_norm:
    return [cl.Residual(norm_layer, *body, cl.Dropout(dropout))]
  return [cl.Residual(*body, cl.Dropout(dropout)), norm_layer]


def EncoderBlock(d_model, d_ff, n_heads, dropout, mode, ff_activation, *, n_kv_heads=None, rotary=None,
                 rotary_base=10000.0, norm="layer", norm_epsilon=1e-6, pre_norm=True, gated_ff=False,
                 use_bias=True) -> cl.Layer:
  """Self-attention under a padding mask and a feed-forward block: (x, mask) -> (x, mask)."""
  attention = Attention(d_model, n_heads, n_kv_heads, dropout, use_bias, rotary, rotary_base, mode=mode)
  ff = FeedForward(d_model, d_ff, dropout, ff_activation, gated_ff, use_bias)
  return cl.Serial(
      _sublayer(Norm(norm, norm_epsilon, "attention_norm"), [attention], dropout, pre_norm),  # x, mask
      _sublayer(Norm(norm, norm_epsilon, "ff_norm"), [ff], dropout, pre_norm))              # x, mask


def DecoderBlock(d_model, d_ff, n_heads, dropout, mode, ff_activation, *, n_kv_heads=None, max_len=2048,
                 rotary=None, rotary_base=10000.0, norm="layer", norm_epsilon=1e-6, pre_norm=True, gated_ff=False,
                 use_bias=True, cross_attention=False) -> cl.Layer:
  """Causal self-attention (KV cache in predict mode), optional attention on an encoder, feed-forward.

  x -> x, or with `cross_attention` (x, encoder activations, encoder mask) -> the same three.
  """
  attention = CausalAttention(d_model, n_heads, n_kv_heads, dropout, max_len, use_bias, rotary, rotary_base,
                              mode=mode)
  ff = FeedForward(d_model, d_ff, dropout, ff_activation, gated_ff, use_bias)
  cross = []
  if cross_attention:
    attend_encoder = [
        cl.Select([0, 1, 1, 2, 1]),                               # x, enc, enc, mask, enc
        AttentionQKV(d_model, n_heads, n_kv_heads, dropout, use_bias, mode=mode, name="cross_attention"),
        cl.Select([0, 2, 1]),                                     # y, enc, mask
    ]
    cross = _sublayer(Norm(norm, norm_epsilon, "cross_norm"), attend_encoder, dropout, pre_norm)
  return cl.Serial(
      _sublayer(Norm(norm, norm_epsilon, "attention_norm"), [attention], dropout, pre_norm),  # x [, enc, mask]
      cross,                                                                                 # x [, enc, mask]
      _sublayer(Norm(norm, norm_epsilon, "ff_norm"), [ff], dropout, pre_norm))              # x [, enc, mask]


def _blocks(block: cl.Layer, n_layers: int, scan_layers: bool, remat: bool | str) -> cl.Layer:
  return Repeat(block, n_layers, scan=scan_layers, remat=remat, name="blocks")


def _after_embedding(positions: str, max_len: int, dropout: float, mode: str, norm: str = "layer",
                     norm_epsilon: float = 1e-6, embed_norm: bool = False) -> list:
  """Embedded tokens -> position-encoded, (normalised,) dropped-out activations."""
  return [*_positional(positions, max_len, mode), *([Norm(norm, norm_epsilon, "embed_norm")] if embed_norm else []),
          cl.Dropout(dropout)]


_BLOCK_OPTIONS = ("n_kv_heads", "rotary_base", "norm", "norm_epsilon", "pre_norm", "gated_ff", "use_bias")


@gin.configurable(module="combinax.models")
def TransformerDecoder(vocab_size: int | None = None, d_model: int = 512, d_ff: int = 2048, n_layers: int = 6,
                       n_heads: int = 8, dropout: float = 0.1, max_len: int = 2048, mode: str = "train",
                       ff_activation: Callable = cl.Relu, *, n_kv_heads: int | None = None,
                       positions: str = "sinusoidal", rotary_base: float = 10000.0, norm: str = "layer",
                       norm_epsilon: float = 1e-6, pre_norm: bool = True, gated_ff: bool = False,
                       use_bias: bool = True, scan_layers: bool = True, remat: bool | str = "dots",
                       embedding: cl.Layer | None = None) -> cl.Layer:
  """A stack of causal blocks: token ids (batch, length) -> activations (batch, length, d_model).

  Without `vocab_size` (and `embedding`) it takes activations (batch, length, d_model) instead.

  >>> TransformerDecoder(16, d_model=8, d_ff=16, n_layers=2, n_heads=2).output_signature(
  ...     ShapeDtype((1, 5), jnp.int32))
  ShapeDtype((1, 5, 8), float32)
  """
  if embedding is None and vocab_size is not None:
    embedding = cl.Embedding(vocab_size, d_model, name="embed")
  block = DecoderBlock(d_model, d_ff, n_heads, dropout, mode, ff_activation, n_kv_heads=n_kv_heads,
                       max_len=max_len, rotary=_rotary(positions), rotary_base=rotary_base, norm=norm,
                       norm_epsilon=norm_epsilon, pre_norm=pre_norm, gated_ff=gated_ff, use_bias=use_bias)
  return cl.Serial(
      embedding,                                                            # x (or, without one, the inputs)
      _after_embedding(positions, max_len, dropout, mode),                  # x
      _blocks(block, n_layers, scan_layers, remat),                         # x
      [Norm(norm, norm_epsilon, "final_norm")] if pre_norm else [])         # x


@gin.configurable(module="combinax.models")
def TransformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048, n_layers: int = 6, n_heads: int = 8,
                  dropout: float = 0.1, max_len: int = 2048, mode: str = "train", ff_activation: Callable = cl.Relu,
                  *, tie_embeddings: bool = False, **options) -> cl.Layer:
  """A decoder-only language model: token ids (batch, length) -> next-token logits (batch, length, vocab_size).

  Position t predicts token t from tokens < t (the inputs are shifted right inside). In `mode="predict"` it decodes:
  each call continues the sequence, with a KV cache of `max_len` positions. `options` are `TransformerDecoder`'s.

  >>> lm = TransformerLM(16, d_model=8, d_ff=16, n_layers=2, n_heads=2, tie_embeddings=True)
  >>> params, _ = lm.init(jax.random.key(0), ShapeDtype((1, 5), jnp.int32))
  >>> [p for p in cx.paths(params) if not p.startswith("blocks/")]
  ['embed/embedding', 'final_norm/bias', 'final_norm/scale']
  """
  embed = cl.Embedding(vocab_size, d_model, name="embed")
  return cl.Serial(
      ShiftRight(mode=mode),                                               # ids shifted right (start = 0)
      TransformerDecoder(d_model=d_model, d_ff=d_ff, n_layers=n_layers, n_heads=n_heads, dropout=dropout,
                         max_len=max_len, mode=mode, ff_activation=ff_activation, embedding=embed, **options),
      cl.TiedLogits(embed) if tie_embeddings else cl.Dense(vocab_size, name="logits"))   # logits


def Pool(pool: str = "mean") -> cl.Layer:
  """(x (batch, length, d), padding mask (batch, 1, 1, length)) -> (batch, d): the mean of the non-padding
  positions (`"mean"`) or the first position (`"cls"`)."""
  if pool == "cls":
    return cl.Fn("FirstToken", lambda x, mask: x[:, 0])

  def masked_mean(x, mask):
    weights = mask[:, 0, 0, :, None].astype(x.dtype)                       # (batch, length, 1)
    return jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)

  if pool == "mean":
    return cl.Fn("MaskedMean", masked_mean)
  raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")


@gin.configurable(module="combinax.models")
def TransformerEncoder(vocab_size: int, n_classes: int | None = 10, d_model: int = 512, d_ff: int = 2048,
                       n_layers: int = 6, n_heads: int = 8, dropout: float = 0.1, max_len: int = 2048,
                       mode: str = "train", ff_activation: Callable = cl.Relu, *, pool: str = "mean",
                       type_vocab_size: int = 0, pad_id: int = 0, positions: str = "sinusoidal",
                       embed_norm: bool = False, scan_layers: bool = True, remat: bool | str = "dots",
                       **options) -> cl.Layer:
  """A bidirectional encoder: token ids (batch, length) -> class logits (batch, n_classes), pooling the non-padding
  positions (`pool="mean"`) or taking the first token (`"cls"`). With `n_classes=None` it returns the activations
  (batch, length, d_model). With `type_vocab_size` it takes (ids, token type ids), as BERT does.

  >>> TransformerEncoder(16, n_classes=3, d_model=8, d_ff=16, n_layers=1, n_heads=2).output_signature(
  ...     ShapeDtype((2, 5), jnp.int32))
  ShapeDtype((2, 3), float32)
  """
  block_options = {k: v for k, v in options.items() if k in _BLOCK_OPTIONS}
  if set(options) - set(block_options):
    raise TypeError(f"TransformerEncoder: unknown options {sorted(set(options) - set(block_options))}")
  norm, norm_epsilon = options.get("norm", "layer"), options.get("norm_epsilon", 1e-6)
  pre_norm = options.get("pre_norm", True)
  block = EncoderBlock(d_model, d_ff, n_heads, dropout, mode, ff_activation, rotary=_rotary(positions),
                       **block_options)
  token_types = [] if not type_vocab_size else [
      cl.Select([0, 2, 1]),                                                # x, types, mask
      cl.Parallel(None, cl.Embedding(type_vocab_size, d_model, name="token_type_embed")),  # x, type vectors, mask
      cl.Add(),                                                            # x, mask
  ]
  embed = cl.Embedding(vocab_size, d_model, name="embed")
  return cl.Serial(
      cl.Branch(None, PaddingMask(pad_id)),                                # ids, mask [, types]
      embed,                                                               # x, mask [, types]
      token_types,                                                         # x, mask
      _after_embedding(positions, max_len, dropout, mode, norm, norm_epsilon, embed_norm),  # x, mask
      _blocks(block, n_layers, scan_layers, remat),                        # x, mask
      [Norm(norm, norm_epsilon, "final_norm")] if pre_norm else [],        # x, mask
      [Pool(pool), cl.Dense(n_classes, name="classifier")] if n_classes else cl.Select([0], n_in=2))


@gin.configurable(module="combinax.models")
def Transformer(input_vocab_size: int, output_vocab_size: int | None = None, d_model: int = 512,
                d_ff: int = 2048, n_encoder_layers: int = 6, n_decoder_layers: int = 6, n_heads: int = 8,
                dropout: float = 0.1, max_len: int = 2048, mode: str = "train", ff_activation: Callable = cl.Relu,
                *, pad_id: int = 0, positions: str = "sinusoidal", tie_embeddings: bool = False,
                scan_layers: bool = True, remat: bool | str = "dots", **options) -> cl.Layer:
  """An encoder-decoder (e.g. for translation): (source ids, target ids) -> logits (batch, target length, vocab).

  Without `output_vocab_size` source and target share one vocabulary and one embedding. In predict mode the encoder
  runs once (on the first call) and the decoder continues with its KV cache, one chunk of target per call.

  >>> Transformer(16, d_model=8, d_ff=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2).output_signature(
  ...     (ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 4), jnp.int32)))
  ShapeDtype((2, 4, 16), float32)
  """
  block_options = {k: v for k, v in options.items() if k in _BLOCK_OPTIONS}
  if set(options) - set(block_options):
    raise TypeError(f"Transformer: unknown options {sorted(set(options) - set(block_options))}")
  norm, norm_epsilon = options.get("norm", "layer"), options.get("norm_epsilon", 1e-6)
  pre_norm = options.get("pre_norm", True)
  in_embed = cl.Embedding(input_vocab_size, d_model, name="embed")
  out_embed = in_embed if output_vocab_size is None else cl.Embedding(output_vocab_size, d_model, name="embed")
  rotary = _rotary(positions)
  encoder = cl.Serial(
      in_embed, _after_embedding(positions, max_len, dropout, mode),                         # x, mask
      _blocks(EncoderBlock(d_model, d_ff, n_heads, dropout, mode, ff_activation, rotary=rotary, **block_options),
              n_encoder_layers, scan_layers, remat),                                         # x, mask
      [Norm(norm, norm_epsilon, "final_norm")] if pre_norm else [],                          # enc, mask
      name="encoder")
  decoder_block = DecoderBlock(d_model, d_ff, n_heads, dropout, mode, ff_activation, max_len=max_len, rotary=rotary,
                               cross_attention=True, **block_options)
  decoder = cl.Serial(
      out_embed, _after_embedding(positions, max_len, dropout, mode),                        # y, enc, mask
      _blocks(decoder_block, n_decoder_layers, scan_layers, remat),                          # y, enc, mask
      [Norm(norm, norm_epsilon, "final_norm")] if pre_norm else [],                          # y, enc, mask
      cl.Select([0], n_in=3),                                                                # y
      cl.TiedLogits(out_embed) if tie_embeddings else cl.Dense(output_vocab_size or input_vocab_size,
                                                                name="logits"),              # logits
      name="decoder")
  return cl.Serial(                                                      # source, target
      cl.Branch(None, PaddingMask(pad_id)),                              # source, mask, target
      cl.Cache(encoder, mode=mode),                                      # enc, mask, target
      cl.Select([2, 0, 1]),                                              # target, enc, mask
      ShiftRight(mode=mode),                                             # target shifted right, enc, mask
      decoder)                                                           # logits
