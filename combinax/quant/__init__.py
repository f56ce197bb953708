"""combinax.quant: weight-only quantization of any model's params, chosen by path glob.

    >>> import jax, jax.numpy as jnp
    >>> import combinax as cx
    >>> from combinax import layers as cl, quant
    >>> model = cl.Serial(cl.Dense(64), cl.Relu(), cl.Dense(10))
    >>> params, state = model.init(jax.random.key(0), cx.ShapeDtype((2, 32)))
    >>> small = quant.quantize(params, rules=[("*kernel", "int8")])
    >>> cx.paths(small)[:3]
    ['Dense_0/bias', 'Dense_0/kernel/values', 'Dense_0/kernel/scale']
    >>> y, _ = model.apply(small, state, jnp.ones((2, 32)))   # the same model: Dense dequantizes in its matmul

The quantized params are an ordinary pytree (`QuantizedArray` nodes of integers and scales): they jit, shard,
checkpoint and scan like the float ones. `Dense`, `Embedding` and `TiedLogits` take them where they take arrays.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import jax

from combinax.paths import leaves_with_paths, matches
from combinax.quant.weights import KINDS, QuantizedArray, from_gguf_blocks, quantize_array


class QuantSpec(NamedTuple):
  """How to quantize the weights a rule selects: `kind` ("int8", "q4", "q4_1"), `group` (elements per scale along
  the contracted axis; None: the whole axis for "int8", 32 for the 4-bit kinds), `axis` (None: -1 for an
  `embedding` table, whose rows are tokens, and -2 for kernels `(..., k, n)`)."""
  kind: str
  group: int | None = None
  axis: int | None = None


def _spec(rule) -> QuantSpec:
  spec = QuantSpec(rule) if isinstance(rule, str) else QuantSpec(*rule) if isinstance(rule, tuple) else rule
  if spec.kind not in KINDS:
    raise ValueError(f"quantize: a rule's kind must be one of {KINDS}, got {spec.kind!r}")
  return spec


def quantize(params: Any, rules: Iterable[tuple[str, str | QuantSpec]]) -> Any:
  """`params` with each leaf whose path matches a rule's glob (the first that matches) replaced by its
  `QuantizedArray`; other leaves are kept as they are. A rule that matches nothing is an error (a typo would
  otherwise quantize nothing, silently)."""
  return _by_rules(params, rules, lambda leaf, quantized: quantized, "quantize")


def fake_quantize(params: Any, rules: Iterable[tuple[str, str | QuantSpec]]) -> Any:
  """Quantization-aware training: `params` with each leaf a rule selects (as `quantize`'s rules) replaced by the
  weights its quantized form computes with, and the gradient passed straight through to the float weight (the
  straight-through estimator): the loss is the quantized model's, and the float master weights learn to be good
  once rounded. Apply it to the params inside the loss (`TrainTask(quantization_aware=rules)` does)."""
  def straight_through(weight, quantized: QuantizedArray):
    return weight + jax.lax.stop_gradient(quantized.dequantize(weight.dtype) - weight)
  return _by_rules(params, rules, straight_through, "fake_quantize")


def _by_rules(params, rules, finish, caller: str):
  """`params` with each leaf a rule selects replaced by `finish(leaf, its QuantizedArray)`."""
  rules = [(pattern, _spec(rule)) for pattern, rule in rules]
  used = set()

  def convert(path, leaf):
    for pattern, spec in rules:
      if matches(path, pattern):
        used.add(pattern)
        if getattr(leaf, "ndim", 0) < 2:
          raise ValueError(f"{caller}: {path} (shape {getattr(leaf, 'shape', ())}) matches {pattern!r}, but only "
                           "matrices (kernels, embedding tables) are quantized")
        axis = spec.axis if spec.axis is not None else -1 if path.endswith("embedding") else -2
        group = spec.group if spec.group is not None or spec.kind == "int8" else 32
        return finish(leaf, quantize_array(leaf, spec.kind, group=group, axis=axis))
    return leaf

  flat = leaves_with_paths(params)
  leaves = [convert(path, leaf) for path, leaf in flat]
  unused = [pattern for pattern, _ in rules if pattern not in used]
  if unused:
    raise ValueError(f"{caller}: no param matches {unused}; the paths are like {[p for p, _ in flat[:4]]}")
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


def dequantize(params: Any) -> Any:
  """`params` with every `QuantizedArray` turned back into an array (what the quantized model computes with)."""
  return jax.tree_util.tree_map(lambda leaf: leaf.dequantize() if isinstance(leaf, QuantizedArray) else leaf, params,
                                is_leaf=lambda leaf: isinstance(leaf, QuantizedArray))


def nbytes(params: Any) -> int:
  """Bytes the params hold (quantized ones counted as stored)."""
  return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params))


__all__ = ["KINDS", "QuantSpec", "QuantizedArray", "dequantize", "fake_quantize", "from_gguf_blocks", "nbytes",
           "quantize", "quantize_array"]


DECODING_KINDS = ("int8", "q4", "q4_1")


def for_decoding(model, params: Any, kind: str) -> Any:
  """`params` for decoding with `kind` weights: every matrix kernel in `kind` and every embedding table in int8,
  in groups of 32 along the axis their matmul contracts where it divides it (llama.cpp's blocks), else one group
  per output. Only Dense, Embedding and TiedLogits compute with quantized weights: a ValueError names a model with
  other matmuls (an RNN's recurrent kernel)."""
  import jax.numpy as jnp
  if kind not in DECODING_KINDS:
    raise ValueError(f"quant.for_decoding: kind must be one of {DECODING_KINDS}, got {kind!r}")

  def convert(path: str, leaf):
    table = path.endswith("embedding") and leaf.ndim == 2
    if not (table or (path.endswith("kernel") and leaf.ndim in (2, 3))):
      return leaf
    axis = -1 if table else -2
    length = leaf.shape[axis]
    group = 32 if length % 32 == 0 else length
    if not table and kind != "int8" and group % 2:
      return leaf   # 4 bits pack two to a byte: an odd axis stays float
    return quantize_array(leaf, "int8" if table else kind, group=group, axis=axis)

  flat = leaves_with_paths(params)
  out = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), [convert(p, leaf) for p, leaf in flat])
  try:
    jax.eval_shape(lambda p: model.apply(p, {}, jnp.zeros((1, 2), jnp.int32)), out)
  except Exception as e:   # noqa: BLE001  (whatever a layer does with an array it did not expect)
    raise ValueError(f"{kind} weights: this model has a layer that computes with its weights itself (only Dense, "
                     "Embedding and TiedLogits take quantized ones, e.g. not an RNN's recurrent kernel): "
                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
  return out
