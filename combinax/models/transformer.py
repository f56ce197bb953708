"""Transformers built from combinax layers: encoder (classifier), decoder, decoder-only LM, encoder-decoder.

Every model is a stack program over `combinax.layers`; the comment after each line shows the stack it leaves. What
the blocks are made of is one frozen, validated `TransformerOptions`; the models take its fields as keyword arguments
(so gin binds `TransformerLM.d_model = 128`), build it once, and hand it to the blocks. Its fields cover the common
pretrained families (BERT, GPT-2/J, Llama), so their checkpoints map onto these models without a second
implementation. Identical blocks are stacked in one `Repeat` and run as one `lax.scan` (`scan_layers`).

Parameter paths: `embed/embedding`, `positions/embedding` (learned), `blocks/attention/q/kernel` (stacked, one row per
layer), `blocks/attention_norm/scale`, `blocks/ff/in/kernel` (or `ff/gate`, `ff/up`, `ff/down` when gated),
`final_norm/scale`, `logits/kernel`; encoder-decoders put these under `encoder/` and `decoder/`, with the decoder's
`blocks/cross_attention/...`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from combinax import layers as cl
from combinax.layers.attention import Attention, AttentionQKV, CausalAttention, PaddingMask, ShiftRight
from combinax.layers.positional import LearnedPositionalEncoding, PositionalEncoding
from combinax.layers.repeat import REMAT, Repeat
from combinax.parallel.pipeline import Pipeline

POSITIONS = ("sinusoidal", "learned", "rotary", "rotary_interleaved", "none")
NORMS = ("layer", "rms")


@dataclasses.dataclass(frozen=True)
class TransformerOptions:
  """What a Transformer's blocks are made of, checked once: a ValueError names the field, the expected and the value.

  >>> TransformerOptions(d_model=64, n_heads=3)
  Traceback (most recent call last):
  ValueError: TransformerOptions.n_heads: expected a divisor of d_model=64, got 3
  """
  d_model: int = 512
  d_ff: int = 2048
  n_heads: int = 8
  n_kv_heads: int | None = None            # fewer key/value heads than n_heads: grouped-query attention
  dropout: float = 0.1
  max_len: int = 2048                      # positions a learned encoding or a decoder's KV cache holds
  ff_activation: Callable = cl.Relu        # a function of no arguments giving the activation layer
  positions: str = "sinusoidal"            # one of POSITIONS
  rotary_base: float = 10000.0
  norm: str = "layer"                      # "layer" (LayerNorm) or "rms" (RMSNorm)
  norm_epsilon: float = 1e-6
  pre_norm: bool = True                    # False: post-norm (norm after each residual sum), as BERT
  gated_ff: bool = False                   # activation(gate x) * up x, e.g. SwiGLU with ff_activation=cl.Silu
  use_bias: bool = True
  scan_layers: bool = True
  remat: bool | str = "dots"               # what backprop keeps of a block (Repeat): "dots" the matmuls' outputs
  pipeline_stages: int = 1                 # > 1: the blocks run as a GPipe `Pipeline` of this many stages
  microbatches: int = 1                    # the pipeline's micro-batches per batch

  def __post_init__(self):
    def check(ok: bool, field: str, expected: str):
      if not ok:
        raise ValueError(f"TransformerOptions.{field}: expected {expected}, got {getattr(self, field)!r}")
    for field in ("d_model", "d_ff", "n_heads", "max_len", "pipeline_stages", "microbatches"):
      check(isinstance(getattr(self, field), int) and getattr(self, field) > 0, field, "a positive int")
    check(self.d_model % self.n_heads == 0, "n_heads", f"a divisor of d_model={self.d_model}")
    check(self.n_kv_heads is None or (self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0), "n_kv_heads",
          f"None or a divisor of n_heads={self.n_heads}")
    check(0.0 <= self.dropout < 1.0, "dropout", "a rate in [0, 1)")
    check(callable(self.ff_activation), "ff_activation", "a function giving a layer, e.g. cl.Gelu")
    check(self.positions in POSITIONS, "positions", f"one of {POSITIONS}")
    check(self.rotary is None or self.d_model // self.n_heads % 2 == 0, "positions",
          f"positions without rotation for the odd head size {self.d_model // self.n_heads}")
    check(self.norm in NORMS, "norm", f"one of {NORMS}")
    check(self.remat in REMAT, "remat", f"one of {REMAT}")

  # The attention layers' rotary layout ("half", "interleaved"), or None for additive or no positions.
  rotary = property(lambda self: {"rotary": "half", "rotary_interleaved": "interleaved"}.get(self.positions))

  def __str__(self) -> str:
    """The options that differ from their defaults, as `str(model)` shows them."""
    changed = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
    return ", ".join(f"{name}={getattr(value, '__name__', repr(value))}" for name, value in changed)


@dataclasses.dataclass(frozen=True)
class RetroOptions:
  """RETRO's retrieval in a `TransformerLM` (Borgeaud et al., 2022): the model takes (ids, neighbour ids) and, after
  every `every`-th block, a residual chunked cross-attention lets each chunk of `chunk_size` positions read the
  encoded neighbours retrieved for the chunk before it.

  >>> RetroOptions(every=0)
  Traceback (most recent call last):
  ValueError: RetroOptions.every: expected a positive int, got 0
  """
  every: int = 3                 # a chunked cross-attention after blocks every, 2 * every, ...
  chunk_size: int = 64           # positions per chunk: chunk c reads the neighbours retrieved for chunk c - 1
  encoder_layers: int = 2        # bidirectional blocks of the neighbour encoder (the LM's embedding, shared)
  pad_id: int = 0                # neighbour tokens to ignore
  zero_init: bool = True         # the cross-attention's output starts at zero: the model starts as the plain LM

  def __post_init__(self):
    for field in ("every", "chunk_size", "encoder_layers"):
      if not (isinstance(getattr(self, field), int) and getattr(self, field) > 0):
        raise ValueError(f"RetroOptions.{field}: expected a positive int, got {getattr(self, field)!r}")


def _options(arguments: dict) -> TransformerOptions:
  """The options among a model's arguments (each model takes every field as a keyword argument, for gin)."""
  return TransformerOptions(**{field.name: arguments[field.name] for field in dataclasses.fields(TransformerOptions)})


class NamedModel(cl.Serial):
  """A model built on `TransformerOptions` (a Transformer, a ViT): the (transparent) Serial of its layers, which `str`
  shows with the model's name and options."""

  def __init__(self, name: str, options: TransformerOptions, *layers):
    super().__init__(*layers)
    self.name, self.options = name, options

  def summary(self) -> str:
    return f"{self.name}({self.options}){self.arity_suffix()}"


def Norm(kind: str = "layer", epsilon: float = 1e-6, name: str | None = None) -> cl.Layer:
  """LayerNorm (`"layer"`) or RMSNorm (`"rms"`)."""
  if kind not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
  return (cl.LayerNorm if kind == "layer" else cl.RMSNorm)(epsilon=epsilon, name=name)


def PreNorm(o: TransformerOptions, name: str) -> list:
  """The norm that opens a pre-norm residual branch (also a pre-norm model's final norm); nothing when post-norm."""
  return [Norm(o.norm, o.norm_epsilon, name)] if o.pre_norm else []


def PostNorm(o: TransformerOptions, name: str) -> list:
  """The norm after a post-norm block's residual sum (BERT's); nothing when pre-norm."""
  return [] if o.pre_norm else [Norm(o.norm, o.norm_epsilon, name)]


def FeedForward(o: TransformerOptions, name: str | None = "ff") -> cl.Layer:
  """The position-wise feed-forward block: x -> (batch, length, d_model). Plain: `out(dropout(activation(in(x))))`;
  gated: `down(dropout(activation(gate(x)) * up(x)))`."""
  if o.gated_ff:
    return cl.Serial(
        cl.Branch(cl.Serial(cl.Dense(o.d_ff, use_bias=o.use_bias, name="gate"), o.ff_activation()),
                  cl.Dense(o.d_ff, use_bias=o.use_bias, name="up")),  # activation(gate x), up x
        cl.Multiply(),                                                # h
        cl.Dropout(o.dropout),
        cl.Dense(o.d_model, use_bias=o.use_bias, name="down"),        # y
        name=name)
  return cl.Serial(
      cl.Dense(o.d_ff, use_bias=o.use_bias, name="in"),               # h
      o.ff_activation(),
      cl.Dropout(o.dropout),
      cl.Dense(o.d_model, use_bias=o.use_bias, name="out"),           # y
      name=name)


def EncoderBlock(o: TransformerOptions) -> cl.Layer:
  """Self-attention under a padding mask, then a feed-forward block: (x, mask) -> (x, mask). The same in every mode.
  With `pre_norm` each norm opens its residual branch (Trax's); otherwise it follows the sum (BERT's)."""
  attention = Attention(o.d_model, o.n_heads, n_kv_heads=o.n_kv_heads, dropout=o.dropout, use_bias=o.use_bias,
                        rotary=o.rotary, rotary_base=o.rotary_base)
  return cl.Serial(
      cl.Residual(PreNorm(o, "attention_norm"), attention, cl.Dropout(o.dropout)),     # x, mask
      PostNorm(o, "attention_norm"),                                                   # x, mask
      cl.Residual(PreNorm(o, "ff_norm"), FeedForward(o), cl.Dropout(o.dropout)),       # x, mask
      PostNorm(o, "ff_norm"))                                                          # x, mask


def DecoderBlock(o: TransformerOptions, *, mode: str = "train", cross_attention: bool = False,
                 prefix: bool = False) -> cl.Layer:
  """Causal self-attention (a KV cache in predict mode), optional attention on an encoder, feed-forward: x -> x, or
  with `cross_attention` (x, encoder activations, encoder mask) -> the same three, or with `prefix` (a prefix LM's:
  each position also sees its sequence's first `prefix` positions) (x, prefix lengths) -> the same two. The params
  are the same in every form."""
  if prefix and cross_attention:
    raise ValueError("DecoderBlock: a prefix LM's block has no cross-attention; expected prefix or cross_attention")
  attention = CausalAttention(o.d_model, o.n_heads, n_kv_heads=o.n_kv_heads, dropout=o.dropout, max_len=o.max_len,
                              use_bias=o.use_bias, rotary=o.rotary, rotary_base=o.rotary_base, mode=mode,
                              prefix=prefix)
  cross = [
      cl.Residual(PreNorm(o, "cross_norm"),
                  cl.Select([0, 1, 1, 2, 1]),                                          # x, enc, enc, mask, enc
                  AttentionQKV(o.d_model, o.n_heads, n_kv_heads=o.n_kv_heads, dropout=o.dropout,
                               use_bias=o.use_bias, name="cross_attention"),           # y, mask, enc
                  cl.Select([0, 2, 1]),                                                # y, enc, mask
                  cl.Dropout(o.dropout)),                                              # x, enc, mask
      PostNorm(o, "cross_norm")] if cross_attention else []
  return cl.Serial(
      cl.Residual(PreNorm(o, "attention_norm"), attention, cl.Dropout(o.dropout)),     # x [, enc, mask]
      PostNorm(o, "attention_norm"),                                                   # x [, enc, mask]
      cross,                                                                           # x [, enc, mask]
      cl.Residual(PreNorm(o, "ff_norm"), FeedForward(o), cl.Dropout(o.dropout)),       # x [, enc, mask]
      PostNorm(o, "ff_norm"))                                                          # x [, enc, mask]


def Blocks(block: cl.Layer, n_layers: int, o: TransformerOptions) -> cl.Layer:
  """`n_layers` copies of `block` at `blocks/...`: one scanned (or unrolled) `Repeat`, or a GPipe `Pipeline` when
  `o.pipeline_stages > 1`."""
  if o.pipeline_stages > 1:   # the same params at the same paths: checkpoints move between the two
    return Pipeline(block, n_layers, stages=o.pipeline_stages, microbatches=o.microbatches, remat=o.remat,
                    name="blocks")
  return Repeat(block, n_layers, scan=o.scan_layers, remat=o.remat, name="blocks")


def Embedded(o: TransformerOptions, mode: str, embed_norm: bool = False) -> list:
  """Embedded tokens -> position-encoded (sinusoidal or learned; rotary positions are the attention's), (normalised,)
  dropped-out activations."""
  positional = {"sinusoidal": PositionalEncoding, "learned": LearnedPositionalEncoding}.get(o.positions)
  return [positional(o.max_len, mode=mode, name="positions") if positional else [],   # rotary: in the attention
          Norm(o.norm, o.norm_epsilon, "embed_norm") if embed_norm else [],
          cl.Dropout(o.dropout)]


def TransformerDecoder(o: TransformerOptions, n_layers: int, *, embedding: cl.Layer | None = None,
                       mode: str = "train") -> cl.Layer:
  """`n_layers` causal blocks: token ids (batch, length) -> activations (batch, length, d_model) through `embedding`,
  or without one, activations in. In predict mode each block keeps a KV cache.

  >>> decoder = TransformerDecoder(TransformerOptions(d_model=8, d_ff=16, n_heads=2), 2, embedding=cl.Embedding(16, 8))
  >>> decoder.output_signature(ShapeDtype((1, 5), jnp.int32))
  ShapeDtype((1, 5, 8), float32)
  """
  return cl.Serial(
      embedding,                                                      # x (or, without one, the inputs)
      Embedded(o, mode),                                              # x
      Blocks(DecoderBlock(o, mode=mode), n_layers, o),                # x
      PreNorm(o, "final_norm"))                                                   # x


def NeighbourEncoder(o: TransformerOptions, retro: RetroOptions, embedding: cl.Layer) -> cl.Layer:
  """Neighbour token ids (batch, chunks, k, r) -> their encodings (batch, chunks, k, r, d_model): each neighbour
  read on its own, through `embedding` (the LM's, shared) and `retro.encoder_layers` bidirectional blocks, its
  padding masked. Params under `neighbour_encoder/` (`blocks/...`, `final_norm/...`)."""
  return cl.Serial(
      cl.Dup(),                                                              # ids, ids
      cl.Fn("Rows", lambda ids: ids.reshape(-1, ids.shape[-1])),             # rows (b * chunks * k, r), ids
      cl.Branch(None, PaddingMask(retro.pad_id)),                            # rows, mask, ids
      embedding, Embedded(o, "train"),                                       # x, mask, ids
      Repeat(EncoderBlock(o), retro.encoder_layers, scan=o.scan_layers, remat=o.remat, name="blocks"),  # x, mask, ids
      PreNorm(o, "final_norm"),                                              # x, mask, ids
      cl.Select([0, 2], n_in=3),                                             # x, ids
      cl.Fn("PerChunk", lambda x, ids: x.reshape(ids.shape + x.shape[-1:])),  # neighbours (b, chunks, k, r, d)
      name="neighbour_encoder")


def _retro_blocks(o: TransformerOptions, retro: RetroOptions, n_layers: int, mode: str) -> cl.Layer:
  """(x, neighbours) -> the same two: `n_layers` decoder blocks at `blocks/...`, as the plain LM's, with a residual
  chunked cross-attention after every `retro.every`-th, stacked at `retro/...`."""
  if o.pipeline_stages > 1:
    raise ValueError(f"TransformerLM.retro: a RETRO model does not run as a pipeline yet; expected "
                     f"pipeline_stages=1, got {o.pipeline_stages}")
  cross = cl.Residual(
      PreNorm(o, "norm"),                                                    # x, neighbours
      cl.ChunkedCrossAttention(o.d_model, o.n_heads, chunk_size=retro.chunk_size, n_kv_heads=o.n_kv_heads,
                               dropout=o.dropout, use_bias=o.use_bias, mode=mode,
                               output_initializer="zeros" if retro.zero_init else "glorot_uniform"),  # y, nbrs
      cl.Dropout(o.dropout))                                                 # x + y, neighbours
  return cl.Interleave(DecoderBlock(o, mode=mode), n_layers, cross, every=retro.every, scan=o.scan_layers,
                       remat=o.remat, inserted_name="retro")


def TransformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048, *, n_layers: int = 6, n_heads: int = 8,
                  dropout: float = 0.1, max_len: int = 2048, mode: str = "train", ff_activation: Callable = cl.Relu,
                  tie_embeddings: bool = False, n_kv_heads: int | None = None, positions: str = "sinusoidal",
                  rotary_base: float = 10000.0, norm: str = "layer", norm_epsilon: float = 1e-6, pre_norm: bool = True,
                  gated_ff: bool = False, use_bias: bool = True, scan_layers: bool = True,
                  remat: bool | str = "dots", pipeline_stages: int = 1, microbatches: int = 1,
                  retro: RetroOptions | None = None) -> cl.Layer:
  """A decoder-only language model: token ids (batch, length) -> next-token logits (batch, length, vocab_size).

  Position t predicts token t from tokens < t (the inputs are shifted right inside). In `mode="predict"` it decodes:
  each call continues the sequence, with a KV cache of `max_len` positions. `tie_embeddings` makes the logits the
  embedding table's (`TiedLogits`); the other arguments are `TransformerOptions`' fields.

  With `retro` (`RetroOptions`) it is a RETRO model: (token ids, neighbour ids (batch, chunks, k, r)) -> logits,
  where chunk c's k neighbours of r tokens were retrieved for chunk c's own text and are read from chunk c + 1 on.
  Its blocks keep the plain LM's paths and shapes (`blocks/...`), so a trained LM's checkpoint loads into it and
  only `retro/*` and `neighbour_encoder/*` need training (retro-fitting); with `zero_init` it starts as that LM.

  >>> lm = TransformerLM(16, d_model=8, d_ff=16, n_layers=2, n_heads=2, tie_embeddings=True)
  >>> params, _ = lm.init(jax.random.key(0), ShapeDtype((1, 5), jnp.int32))
  >>> [p for p in cx.paths(params) if not p.startswith("blocks/")]
  ['embed/embedding', 'final_norm/bias', 'final_norm/scale']
  >>> lm.summary()
  'TransformerLM(d_model=8, d_ff=16, n_heads=2)'
  """
  o = _options(locals())
  embed = cl.Embedding(vocab_size, d_model, name="embed")
  logits = cl.TiedLogits(embed) if tie_embeddings else cl.Dense(vocab_size, name="logits")
  if retro is None:
    return NamedModel(
        "TransformerLM", o,
        ShiftRight(mode=mode),                                              # ids shifted right (start = 0)
        TransformerDecoder(o, n_layers, embedding=embed, mode=mode),         # x
        logits)                                                             # logits
  return NamedModel(
      f"TransformerLM[{retro}]", o,                                         # ids, neighbour ids
      ShiftRight(mode=mode),                                                # ids shifted right, neighbour ids
      embed, Embedded(o, mode),                                             # x, neighbour ids
      cl.Parallel(None, NeighbourEncoder(o, retro, embed)),                 # x, neighbours
      _retro_blocks(o, retro, n_layers, mode),                              # x, neighbours
      cl.Select([0], n_in=2),                                               # x
      PreNorm(o, "final_norm"),                                             # x
      logits)                                                               # logits


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


def TransformerEncoder(vocab_size: int, n_classes: int | None = 10, d_model: int = 512, *, d_ff: int = 2048,
                       n_layers: int = 6, n_heads: int = 8, dropout: float = 0.1, max_len: int = 2048,
                       mode: str = "train", ff_activation: Callable = cl.Relu, pool: str = "mean",
                       type_vocab_size: int = 0, pad_id: int = 0, embed_norm: bool = False,
                       n_kv_heads: int | None = None, positions: str = "sinusoidal", rotary_base: float = 10000.0,
                       norm: str = "layer", norm_epsilon: float = 1e-6, pre_norm: bool = True, gated_ff: bool = False,
                       use_bias: bool = True, scan_layers: bool = True, remat: bool | str = "dots",
                       pipeline_stages: int = 1, microbatches: int = 1) -> cl.Layer:
  """A bidirectional encoder: token ids (batch, length) -> class logits (batch, n_classes), pooling the non-padding
  positions (`pool="mean"`) or taking the first token (`"cls"`). With `n_classes=None` it returns the activations
  (batch, length, d_model). With `type_vocab_size` it takes (ids, token type ids), as BERT does; `embed_norm`
  normalises the embeddings (BERT). It keeps no decoding state: `mode` is "train" or "eval" (the same model).

  >>> TransformerEncoder(16, n_classes=3, d_model=8, d_ff=16, n_layers=1, n_heads=2).output_signature(
  ...     ShapeDtype((2, 5), jnp.int32))
  ShapeDtype((2, 3), float32)
  """
  o = _options(locals())
  token_types = [cl.Select([0, 2, 1]),                                                        # x, types, mask
                 cl.Parallel(None, cl.Embedding(type_vocab_size, d_model, name="token_type_embed")),  # x, vectors, mask
                 cl.Add()] if type_vocab_size else []                                         # x, mask
  model = NamedModel(
      "TransformerEncoder", o,
      cl.Branch(None, PaddingMask(pad_id)),                                # ids, mask [, types]
      cl.Embedding(vocab_size, d_model, name="embed"),                     # x, mask [, types]
      token_types,                                                         # x, mask
      Embedded(o, "train", embed_norm),                                    # x, mask
      Blocks(EncoderBlock(o), n_layers, o),                                # x, mask
      PreNorm(o, "final_norm"),                                                        # x, mask
      [Pool(pool), cl.Dense(n_classes, name="classifier")] if n_classes else cl.Select([0], n_in=2))
  cl.check_mode(model, mode, decodes=False)
  return model


def Transformer(input_vocab_size: int, output_vocab_size: int | None = None, d_model: int = 512, *, d_ff: int = 2048,
                n_encoder_layers: int = 6, n_decoder_layers: int = 6, n_heads: int = 8, dropout: float = 0.1,
                max_len: int = 2048, mode: str = "train", ff_activation: Callable = cl.Relu, pad_id: int = 0,
                tie_embeddings: bool = False, n_kv_heads: int | None = None, positions: str = "sinusoidal",
                rotary_base: float = 10000.0, norm: str = "layer", norm_epsilon: float = 1e-6, pre_norm: bool = True,
                gated_ff: bool = False, use_bias: bool = True, scan_layers: bool = True,
                remat: bool | str = "dots", pipeline_stages: int = 1, microbatches: int = 1) -> cl.Layer:
  """An encoder-decoder (e.g. for translation): (source ids, target ids) -> logits (batch, target length, vocab).

  Without `output_vocab_size` source and target share one vocabulary and one embedding. In predict mode the encoder
  runs once, on the first call (`Cache`; it reads the whole source, so it is built as for training), and the decoder
  continues with its KV cache, one chunk of target per call. The other arguments are `TransformerOptions`' fields.

  >>> Transformer(16, d_model=8, d_ff=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2).output_signature(
  ...     (ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 4), jnp.int32)))
  ShapeDtype((2, 4, 16), float32)
  """
  o = _options(locals())
  in_embed = cl.Embedding(input_vocab_size, d_model, name="embed")
  out_embed = in_embed if output_vocab_size is None else cl.Embedding(output_vocab_size, d_model, name="embed")
  encoder = cl.Serial(
      in_embed, Embedded(o, "train"),                                              # x, mask
      Blocks(EncoderBlock(o), n_encoder_layers, o),                                # x, mask
      PreNorm(o, "final_norm"),                                                                # enc, mask
      name="encoder")
  decoder = cl.Serial(
      out_embed, Embedded(o, mode),                                                # y, enc, mask
      Blocks(DecoderBlock(o, mode=mode, cross_attention=True), n_decoder_layers, o),   # y, enc, mask
      PreNorm(o, "final_norm"),                                                                # y, enc, mask
      cl.Select([0], n_in=3),                                                      # y
      cl.TiedLogits(out_embed) if tie_embeddings else cl.Dense(output_vocab_size or input_vocab_size,
                                                                name="logits"),    # logits
      name="decoder")
  return NamedModel(
      "Transformer", o,                                                  # source, target
      cl.Branch(None, PaddingMask(pad_id)),                              # source, mask, target
      cl.Cache(encoder, mode=mode),                                      # enc, mask, target
      cl.Select([2, 0, 1]),                                              # target, enc, mask
      ShiftRight(mode=mode),                                             # target shifted right, enc, mask
      decoder)                                                           # logits
