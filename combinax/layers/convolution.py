"""Convolution and pooling on channels-last inputs: (batch, spatial..., channels), 1-D, 2-D or 3-D.

Extra leading axes before the batch axis are folded into it and restored afterwards.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from combinax import shapes
from combinax.layers import initializers
from combinax.layers.base import Layer, LayerError, check_last_dim, check_rank

_LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _tuple(value, n: int, what: str, layer: Layer) -> tuple:
  out = (value,) * n if isinstance(value, int) else tuple(value)
  if len(out) != n:
    raise LayerError(layer, f"{what} needs one entry per spatial axis", expected=f"{n} entries", actual=value)
  return out


def _fold_leading(x, n_spatial: int):
  """(lead..., batch, spatial..., c) -> (prod(lead) * batch, spatial..., c), and the leading shape to restore."""
  lead = x.shape[:x.ndim - n_spatial - 1]
  return x.reshape((-1,) + x.shape[len(lead):]), lead


class Conv(Layer):
  """Convolution with `filters` output channels and a `kernel_size` window (its length fixes 1-, 2- or 3-D).

  `groups` > 1 splits the channels into that many groups convolved apart (`kernel` (window..., channels / groups,
  filters)); `groups` = channels = filters is a depthwise convolution (MobileNet's).

  >>> Conv(8, (3, 3), padding="SAME").output_signature(ShapeDtype((2, 5, 5, 3)))
  ShapeDtype((2, 5, 5, 8), float32)
  >>> Conv(6, (3, 3), groups=6).init(jax.random.key(0), ShapeDtype((1, 5, 5, 6)))[0]["kernel"].shape
  (3, 3, 1, 6)
  """

  def __init__(self, filters: int, kernel_size: Sequence[int], strides: Sequence[int] | None = None,
               padding="VALID", kernel_dilation: Sequence[int] | None = None,
               kernel_initializer="he_uniform", bias_initializer="zeros", use_bias: bool = True,
               name: str | None = None, *, groups: int = 1):
    super().__init__(1, 1, name)
    self.kernel_size = tuple(kernel_size)
    n = len(self.kernel_size)
    if n not in _LAYOUTS:
      raise LayerError(self, "kernel_size must have 1, 2 or 3 entries", expected="1-D, 2-D or 3-D",
                       actual=kernel_size)
    self.filters, self.use_bias, self.groups = int(filters), use_bias, int(groups)
    if self.groups < 1 or self.filters % self.groups:
      raise LayerError(self, "groups must divide the filters", expected=f"a divisor of {self.filters}",
                       actual=groups)
    self.strides = _tuple(strides or 1, n, "strides", self)
    self.kernel_dilation = _tuple(kernel_dilation or 1, n, "kernel_dilation", self)
    self.padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    self.kernel_initializer = initializers.get(kernel_initializer)
    self.bias_initializer = initializers.get(bias_initializer)

  def _description(self) -> str:
    return "(batch, " + ", ".join(["spatial"] * len(self.kernel_size)) + ", channels)"

  def init_params_and_state(self, rng, input_signature):
    check_rank(self, input_signature, len(self.kernel_size) + 2, self._description())
    channels = input_signature.shape[-1]
    if channels % self.groups:
      raise LayerError(self, "groups must divide the input's channels", expected=f"channels a multiple of "
                       f"groups={self.groups}", actual=shapes.describe(input_signature))
    kernel_rng, bias_rng = jax.random.split(rng)
    shape = self.kernel_size + (channels // self.groups, self.filters)
    params = {"kernel": self.kernel_initializer(kernel_rng, shape, jnp.float32)}
    if self.use_bias:
      params["bias"] = self.bias_initializer(bias_rng, (self.filters,), jnp.float32)
    return params, {}

  def forward(self, params, state, x, *, rng, train):
    n = len(self.kernel_size)
    check_rank(self, x, n + 2, self._description())
    check_last_dim(self, x, params["kernel"].shape[-2] * self.groups)
    folded, lead = _fold_leading(x, n)
    y = lax.conv_general_dilated(folded, params["kernel"].astype(x.dtype), self.strides, self.padding,
                                 rhs_dilation=self.kernel_dilation, dimension_numbers=_LAYOUTS[n],
                                 feature_group_count=self.groups)
    if self.use_bias:
      y = y + params["bias"].astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape(lead + y.shape[1:]), state


class CausalConv(Conv):
  """1-D convolution over (batch, time, channels) where output t sees only inputs up to t (left padding)."""

  def __init__(self, filters: int, kernel_width: int = 3, dilation: int = 1, kernel_initializer="he_uniform",
               bias_initializer="zeros", use_bias: bool = True, name: str | None = None):
    pad = ((kernel_width - 1) * dilation, 0)
    super().__init__(filters, (kernel_width,), padding=(pad,), kernel_dilation=(dilation,),
                     kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                     use_bias=use_bias, name=name)


class _Pool(Layer):
  """Reduces each `pool_size` window of the spatial axes (channels-last inputs)."""

  def __init__(self, pool_size: Sequence[int] = (2, 2), strides: Sequence[int] | None = None, padding="VALID",
               name: str | None = None):
    super().__init__(1, 1, name)
    self.pool_size = tuple(pool_size)
    self.strides = _tuple(strides or self.pool_size, len(self.pool_size), "strides", self)
    self.padding = padding

  def _window(self, x, init, op):
    window = (1,) + self.pool_size + (1,)
    strides = (1,) + self.strides + (1,)
    return lax.reduce_window(x, init, op, window, strides, self.padding)

  def forward(self, params, state, x, *, rng, train):
    n = len(self.pool_size)
    check_rank(self, x, n + 2, "(batch, " + ", ".join(["spatial"] * n) + ", channels)")
    folded, lead = _fold_leading(x, n)
    y = self.pool(folded)
    return y.reshape(lead + y.shape[1:]), state


class MaxPool(_Pool):
  """Largest entry of each window."""

  def pool(self, x):
    return self._window(x, np.array(-np.inf, x.dtype), lax.max)


class SumPool(_Pool):
  """Sum of each window."""

  def pool(self, x):
    return self._window(x, np.array(0, x.dtype), lax.add)


class AvgPool(_Pool):
  """Mean of each window; with "SAME" padding, only the entries inside the input are averaged."""

  def pool(self, x):
    total = self._window(x, np.array(0, x.dtype), lax.add)
    if self.padding == "VALID":
      return total / math.prod(self.pool_size)
    counts = self._window(np.ones((1,) + x.shape[1:-1] + (1,), x.dtype), np.array(0, x.dtype), lax.add)
    return total / counts
