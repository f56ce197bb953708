"""Weight-only quantization: `QuantizedArray` (integers + scales, an ordinary pytree) and `quantize_array`.

A weight is quantized in groups of `group` consecutive elements along one axis, the axis its matmul contracts
(`-2` for a Dense kernel `(k, n)`, `-1` for an embedding table `(vocab, d)`, whose logits contract `d`); each group
has one scale (and, for "q4_1", one offset). The kinds are llama.cpp's, with the same arithmetic, so a GGUF tensor's
blocks are kept as they are:

  "int8"  q in [-127, 127], w = q * scale                 (Q8_0 with group 32; per channel with the whole axis)
  "q4"    q in [0, 15] two to a byte, w = (q - 8) * scale  (Q4_0)
  "q4_1"  q in [0, 15] two to a byte, w = q * scale + offset  (Q4_1)

Storage: the grouped axis is moved last and split into (groups, elements of a group): a Dense kernel `(k, n)` is
kept as `values (n, k / group, group)` (int8) or `(n, k / group, group / 2)` (uint8, two 4-bit values a byte: the
group's first half in the low nibbles, its second half in the high ones, as GGUF stores them), `scale (n, k /
group)`. Leading axes (stacked layers) stay in front, so `lax.scan` over a stack slices a `QuantizedArray` like any
array.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from combinax.quant import kernels

KINDS = ("int8", "q4", "q4_1")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """A quantized weight: `values` (int8, or uint8 holding two 4-bit values), `scale` per group, `offset` per group
  ("q4_1" only, else None). `kind`, `axis` and `dtype` (what it dequantizes to) are static."""

  values: jax.Array
  scale: jax.Array
  offset: jax.Array | None
  kind: str = dataclasses.field(metadata={"static": True})
  axis: int = dataclasses.field(metadata={"static": True})
  dtype: str = dataclasses.field(default="float32", metadata={"static": True})
  # Set only inside a scan over stacked layers (`Repeat`): the fields keep the whole stack on their leading axis and
  # this weight is its layer `layer` (an int32 scalar). The quantized matmul kernel then reads the layer where it
  # lies; a scan's slice of it would be copied first (see `kernels.qdot`). Everything else slices it (`selected`).
  layer: jax.Array | None = None

  @property
  def group(self) -> int:
    return self.values.shape[-1] * (2 if self.kind != "int8" else 1)

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape of the weight it stands for."""
    *kept, n_groups, _ = self.values.shape[0 if self.layer is None else 1:]
    kept.insert(len(kept) + 1 + self.axis, n_groups * self.group)   # the grouped axis back in its place
    return tuple(kept)

  def selected(self) -> "QuantizedArray":
    """This weight with its own fields: layer `layer` sliced out of the stack when `layer` is set, else itself."""
    if self.layer is None:
      return self
    pick = lambda a: None if a is None else lax.dynamic_index_in_dim(a, self.layer, 0, keepdims=False)
    return QuantizedArray(pick(self.values), pick(self.scale), pick(self.offset), self.kind, self.axis, self.dtype)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def nbytes(self) -> int:
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in (self.values, self.scale, self.offset)
               if a is not None)

  def _weights(self, q) -> jax.Array:
    """Grouped integers `q (..., groups, any)` as float32 weights, by this kind's arithmetic."""
    q, scale = q.astype(jnp.float32), self.scale.astype(jnp.float32)[..., None]
    if self.kind == "int8":
      return q * scale
    if self.kind == "q4":
      return (q - 8.0) * scale
    return q * scale + self.offset.astype(jnp.float32)[..., None]

  def integers(self) -> jax.Array:
    """The quantized values as int32, grouped: (..., groups, group)."""
    self = self.selected()
    if self.kind == "int8":
      return self.values.astype(jnp.int32)
    packed = self.values.astype(jnp.int32)
    return jnp.concatenate([packed & 0x0F, packed >> 4], axis=-1)

  def dequantize(self, dtype=None) -> jax.Array:
    """The weight, in `dtype` (default: the dtype it was quantized from), computed in float32 as llama.cpp does."""
    self = self.selected()
    grouped = self._weights(self.integers())
    flat = grouped.reshape(grouped.shape[:-2] + (-1,))
    return jnp.moveaxis(flat, -1, self.axis).astype(dtype or self.dtype)

  def contract(self, x: jax.Array, *, axis: int) -> jax.Array:
    """`x (..., k)` contracted with the grouped axis of this 2-D weight: `x @ W` for a Dense kernel `W (k, n)`
    (`axis=-2`), `x @ T.T` for a table `T (n, k)` (`axis=-1`, tied logits); returns `(..., n)` in x's dtype. The
    weight must be grouped along the axis its use contracts (`axis`).

    Up to `kernels.MAX_ROWS` rows of x (decoding) on the CPU: `kernels.qdot`, a kernel that reads each weight byte
    once and widens it in registers (the same float32 products, summed in another order). Otherwise (more rows, other
    devices, or no kernel built), XLA's dot, in the stored `(n, k)` layout, dequantizing just before the matmul:
    XLA:CPU writes the dequantized weight once, then multiplies (it fuses no conversion into a dot's operand). A
    4-bit weight is two dots, one per nibble, each against its half of every group's inputs, since unpacking the
    nibbles into one matrix (a concatenate) was 4x slower than float32 for 30 576x1536 products; two dots: as fast
    as int8. A weight larger than `_CHUNK_BYTES` as float32 (an LM's tied logits table) is done in chunks of rows,
    one after the other (`lax.map`), so no float32 copy of it ever exists: as one piece, XLA hoisted its
    dequantization out of the decoding loop and kept it resident (113 MB for SmolLM2's int8 table, which then took
    248 MB of temporaries where float32 took 29; chunked: 28 MB, and 104 tokens/s instead of 87).
    """
    if len(self.shape) != 2:
      raise ValueError(f"QuantizedArray.contract: a 2-D weight, got shape {self.shape} (slice stacked layers first)")
    if self.axis != axis:
      raise ValueError(f"QuantizedArray.contract: this weight of shape {self.shape} is grouped along axis "
                       f"{self.axis}, and its use contracts axis {axis}: quantize it with QuantSpec(kind, group, "
                       f"axis={axis})")
    n, n_groups, _ = self.values.shape[-3:]
    k = n_groups * self.group
    if x.shape[-1] != k:
      raise ValueError(f"QuantizedArray.contract: inputs (..., {k}) for a weight of shape {self.shape}, got {x.shape}")
    rows = x.reshape(-1, k).astype(jnp.float32)
    xla = lambda rows: self.selected()._contract_xla(rows)
    if rows.shape[0] <= kernels.MAX_ROWS and kernels.supports(self) is None and kernels.available():
      y = lax.platform_dependent(rows, cpu=lambda rows: kernels.qdot(rows, self), default=xla)
    else:
      y = xla(rows)
    return y.astype(x.dtype).reshape(x.shape[:-1] + (n,))

  def _contract_xla(self, rows: jax.Array) -> jax.Array:
    """rows (b, k) float32 . this 2-D weight -> (b, n), by XLA's own dot on the dequantized weight."""
    n = self.values.shape[0]
    chunks = _chunks(n, 4 * n * rows.shape[1])
    if chunks == 1:
      y = self._contract_rows(rows)
    else:
      split = lambda a: None if a is None else a.reshape((chunks, n // chunks) + a.shape[1:])
      pieces = lax.map(lambda fields: dataclasses.replace(self, values=fields[0], scale=fields[1],
                                                          offset=fields[2])._contract_rows(rows),
                       (split(self.values), split(self.scale), split(self.offset)))   # (chunks, b, n / chunks)
      y = jnp.moveaxis(pieces, 0, 1).reshape(rows.shape[0], n)
    return y

  def _contract_rows(self, rows: jax.Array) -> jax.Array:
    """rows (b, k) float32 . this 2-D weight in its stored layout -> (b, n)."""
    n, n_groups, _ = self.values.shape
    k = n_groups * self.group
    # Tied to the inputs, the weight's dequantization depends on them: XLA can no longer hoist it out of a loop
    # (decoding's) as a float32 copy kept for the whole loop.
    weight, rows = lax.optimization_barrier((self, rows))
    if self.kind == "int8":
      return _dot_rows(rows, weight._weights(weight.values).reshape(n, k))
    halves = rows.reshape(-1, n_groups, 2, self.group // 2)   # each group: its first half, then its second
    y = 0.0
    for i, nibbles in enumerate((weight.values & 0x0F, weight.values >> 4)):
      y = y + _dot_rows(halves[:, :, i].reshape(-1, k // 2), weight._weights(nibbles).reshape(n, k // 2))
    return y

  def take(self, ids: jax.Array, dtype=None) -> jax.Array:
    """Rows `ids` of a table quantized along its last axis (an embedding), dequantized: `table[ids]`."""
    if self.axis not in (-1, self.ndim - 1) or self.ndim != 2:
      raise ValueError(f"QuantizedArray.take: a (vocab, d) table grouped along its last axis, got shape {self.shape} "
                       f"grouped along axis {self.axis}")
    self = self.selected()
    rows = lambda a: None if a is None else jnp.take(a, ids, axis=0)
    picked = dataclasses.replace(self, values=rows(self.values), scale=rows(self.scale), offset=rows(self.offset))
    return picked.dequantize(dtype)


_CHUNK_BYTES = 16 * 2 ** 20   # float32 bytes of a weight dequantized at once, at most (see `contract`)


def _chunks(n: int, float_bytes: int) -> int:
  """Into how many equal chunks of rows a weight of `n` rows and `float_bytes` float32 bytes is split: the fewest
  that divide n and keep each chunk under `_CHUNK_BYTES` (1: not split)."""
  chunks = -(-float_bytes // _CHUNK_BYTES)
  while n % chunks:
    chunks += 1
  return chunks


def _dot_rows(x, weight):
  """x (b, k) . weight (n, k) -> (b, n), contracting both on their last axis: `x @ weight.T` written without the
  transpose, which XLA would otherwise materialise as a copy of the weight before the dot."""
  return jax.lax.dot_general(x, weight, (((1,), (1,)), ((), ())))


def _round_half_away(x):
  """llama.cpp's roundf: halves away from zero (jnp.round rounds them to even)."""
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def quantize_array(w, kind: str, *, group: int | None = None, axis: int = -2,
                   scale_dtype=None) -> QuantizedArray:
  """`w` quantized in groups of `group` elements along `axis` (None: the whole axis, one scale per channel).

  Scales are float16 when grouped (llama.cpp's blocks) and float32 per channel, unless `scale_dtype` says.
  The integers are computed as llama.cpp's quantizers compute them (from the float32 scale; bit-exact with
  `gguf.quants`, tested); the stored scale is then rounded to `scale_dtype`.
  """
  if kind not in KINDS:
    raise ValueError(f"quantize_array: kind must be one of {KINDS}, got {kind!r}")
  w = jnp.asarray(w)
  length = w.shape[axis]
  group = length if group is None else int(group)
  if group < 1 or length % group or (kind != "int8" and group % 2):
    raise ValueError(f"quantize_array: group {group} must divide axis {axis} of length {length} (and be even for "
                     f"4-bit kinds), for a weight of shape {w.shape}")
  scale_dtype = jnp.dtype(scale_dtype or (jnp.float32 if group == length else jnp.float16))
  moved = jnp.moveaxis(w.astype(jnp.float32), axis, -1)
  blocks = moved.reshape(moved.shape[:-1] + (length // group, group))
  offset = None
  if kind == "int8":
    d = jnp.max(jnp.abs(blocks), axis=-1, keepdims=True) / 127
    inverse = jnp.where(d == 0, 0.0, 1.0 / jnp.where(d == 0, 1.0, d))
    values = _round_half_away(blocks * inverse).astype(jnp.int8)
  else:
    if kind == "q4":
      biggest = jnp.take_along_axis(blocks, jnp.argmax(jnp.abs(blocks), axis=-1, keepdims=True), axis=-1)
      d = biggest / -8
      shift, low = 8.5, 0.0
    else:
      low = jnp.min(blocks, axis=-1, keepdims=True)
      d = (jnp.max(blocks, axis=-1, keepdims=True) - low) / 15
      shift = 0.5
    inverse = jnp.where(d == 0, 0.0, 1.0 / jnp.where(d == 0, 1.0, d))
    q = jnp.clip(jnp.trunc((blocks - low) * inverse + shift), 0, 15).astype(jnp.uint8)
    half = group // 2
    values = q[..., :half] | (q[..., half:] << 4)
    if kind == "q4_1":
      offset = low[..., 0].astype(scale_dtype)
  return QuantizedArray(values, d[..., 0].astype(scale_dtype), offset, kind, axis if axis < 0 else axis - w.ndim,
                        str(w.dtype))


# GGUF block layouts (ggml-common.h): a float16 scale, a float16 minimum (Q4_1), then the quantized values.
_GGUF_BLOCKS = {"int8": (2, 32), "q4": (2, 16), "q4_1": (4, 16)}   # kind: (header bytes, value bytes) per 32


def from_gguf_blocks(raw, kind: str, *, axis: int = -2) -> QuantizedArray:
  """A GGUF tensor's raw blocks (uint8 `(rows, bytes per row)`, as `gguf.GGUFReader` gives a Q8_0 / Q4_0 / Q4_1
  tensor of `rows` x `k` weights), kept packed: a `QuantizedArray` of logical shape `(k, rows)` for `axis=-2` (a
  Dense kernel: llama.cpp's `(n_out, n_in)` matrices, transposed) or `(rows, k)` for `axis=-1` (an embedding).
  No value is recomputed: the scales and integers are the file's own bytes."""
  if kind not in _GGUF_BLOCKS:
    raise ValueError(f"from_gguf_blocks: kind must be one of {tuple(_GGUF_BLOCKS)}, got {kind!r}")
  header, body = _GGUF_BLOCKS[kind]
  raw = np.ascontiguousarray(raw, dtype=np.uint8)
  if raw.ndim != 2 or raw.shape[1] % (header + body):
    raise ValueError(f"from_gguf_blocks: expected (rows, a multiple of {header + body} bytes) for {kind}, got "
                     f"{raw.shape}")
  blocks = raw.reshape(raw.shape[0], -1, header + body)
  scale = blocks[..., :2].copy().view(np.float16)[..., 0]
  offset = blocks[..., 2:4].copy().view(np.float16)[..., 0] if kind == "q4_1" else None
  values = blocks[..., header:].copy()
  if kind == "int8":
    values = values.view(np.int8)
  return QuantizedArray(values, scale, offset, kind, axis)   # numpy: stacked and placed by the caller
