"""LoRA: low-rank adapters on chosen kernels of any layer, merged back into plain weights for export.

`LoRA(model, targets, rank, alpha)` has the params of `model` plus, beside each kernel whose path matches `targets`,
two adapters `<name>_lora_a` (..., d_in, rank) and `<name>_lora_b` (..., rank, d_out). It runs `model` with
`kernel + alpha / rank * lora_a @ lora_b` (leading axes, such as the layer axis of stacked blocks, are batched).
`lora_b` starts at zero, so before training the adapted model equals the original; train only the adapters with
`TrainTask.trainable = ["*_lora_*"]`. `merged_params` folds the adapters in: the plain model's params, the same
paths and shapes as before adaptation.

The adapters are merged on the fly (one small matmul per targeted kernel per step) instead of threading an extra
low-rank branch through every `Dense`: any layer's weights can be adapted without the layer knowing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from combinax import shapes
from combinax.layers.base import Layer, LayerError, child_rng
from combinax.layers.control import Wrapper
from combinax.paths import leaves_with_paths, matches, unflatten

SUFFIX_A, SUFFIX_B = "_lora_a", "_lora_b"


class LoRA(Wrapper):
  """`layer` with rank-`rank` adapters on the kernels whose paths match `targets` (glob patterns).

  >>> import combinax as cx
  >>> lora = LoRA(cl.Serial(cl.Dense(8, name="up"), cl.Dense(2, name="down")), targets="up/kernel", rank=2)
  >>> params, _ = lora.init(jax.random.key(0), cx.ShapeDtype((1, 4)))
  >>> cx.paths(params)
  ['down/bias', 'down/kernel', 'up/bias', 'up/kernel', 'up/kernel_lora_a', 'up/kernel_lora_b']
  >>> cx.paths(lora.merged_params(params)) == cx.paths(lora.layer.init(jax.random.key(0), cx.ShapeDtype((1, 4)))[0])
  True
  """

  def __init__(self, layer: Layer, targets="*/kernel", rank: int = 8, alpha: float = 16.0,
               name: str | None = None):
    super().__init__(layer, name)
    self.targets = (targets,) if isinstance(targets, str) else tuple(targets)
    self.rank, self.alpha = int(rank), float(alpha)
    if self.rank < 1:
      raise LayerError(self, "rank must be at least 1", expected="rank >= 1", actual=rank)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def init_params_and_state(self, rng, input_signature):
    params, state = self.layer.init(child_rng(rng, 0), input_signature)
    flat = dict(leaves_with_paths(params))
    targeted = [path for path in flat if matches(path, self.targets)]
    if not targeted:
      raise LayerError(self, "no parameter matches the LoRA targets", expected=f"paths matching {self.targets}",
                       actual=sorted(flat)[:12])
    adapter_rng = child_rng(rng, 1)
    for index, path in enumerate(targeted):
      kernel = flat[path]
      if len(kernel.shape) < 2:
        raise LayerError(self, f"LoRA targets must be kernels (at least 2 axes); {path} is not",
                         expected="(..., d_in, d_out)", actual=shapes.describe(kernel))
      *lead, d_in, d_out = kernel.shape
      bound = 1.0 / math.sqrt(d_in)  # Kaiming-uniform with a = sqrt(5), as LoRA's reference initialisation
      flat[path + SUFFIX_A] = jax.random.uniform(jax.random.fold_in(adapter_rng, index), (*lead, d_in, self.rank),
                                                 kernel.dtype, -bound, bound)
      flat[path + SUFFIX_B] = jnp.zeros((*lead, self.rank, d_out), kernel.dtype)
    return self._wrap(unflatten(flat)), self._wrap(state)

  def _merge(self, inner_params):
    flat = dict(leaves_with_paths(inner_params))
    merged = {}
    for path, value in flat.items():
      if path.endswith(SUFFIX_A) or path.endswith(SUFFIX_B):
        continue
      a, b = flat.get(path + SUFFIX_A), flat.get(path + SUFFIX_B)
      if (a is None) != (b is None):
        raise LayerError(self, f"{path} has only one of its two adapters", expected=f"{path}{SUFFIX_A} and "
                         f"{path}{SUFFIX_B}", actual="one of them")
      merged[path] = value if a is None else value + (self.scale * jnp.matmul(a, b)).astype(value.dtype)
    return unflatten(merged)

  def merged_params(self, params):
    """The wrapped layer's params with the adapters folded in (for `self.layer`, or the model built without LoRA)."""
    return self._merge(self.child_view(params, 0))

  def forward(self, params, state, inputs, *, rng, train):
    outputs, new_state = self.layer.apply(self.merged_params(params), self.child_view(state, 0), inputs,
                                          rng=child_rng(rng, 0), train=train)
    return outputs, self._wrap(new_state)
