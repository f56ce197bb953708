"""Signatures: the shape and dtype of what flows on the data stack, without the data."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class ShapeDtype:
  """The shape and dtype of one array on the stack.

  >>> ShapeDtype((8, 32))
  ShapeDtype((8, 32), float32)
  """

  shape: tuple[int, ...]
  dtype: np.dtype = np.dtype("float32")

  def __post_init__(self):
    shape = tuple(int(d) for d in self.shape)
    if any(d < 0 for d in shape):
      raise ValueError(f"ShapeDtype: dimensions must be >= 0, got {shape}")
    object.__setattr__(self, "shape", shape)
    object.__setattr__(self, "dtype", np.dtype(self.dtype))

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def as_struct(self) -> jax.ShapeDtypeStruct:
    """The same signature as a `jax.ShapeDtypeStruct`, for `jax.eval_shape`."""
    return jax.ShapeDtypeStruct(self.shape, self.dtype)

  def __repr__(self):
    return f"ShapeDtype({self.shape}, {self.dtype.name})"


def is_array(x: Any) -> bool:
  """True for what may sit on the data stack: numpy/JAX arrays, tracers and numpy scalars."""
  return isinstance(x, (np.ndarray, np.generic, jax.Array))


def signature(x: Any):
  """The `ShapeDtype` of an array, or a tuple of them for a tuple/list of arrays.

  Signatures pass through unchanged, so arrays are accepted wherever a signature is.

  >>> signature(np.zeros((2, 3), np.int32))
  ShapeDtype((2, 3), int32)
  """
  if isinstance(x, ShapeDtype):
    return x
  if isinstance(x, jax.ShapeDtypeStruct) or is_array(x):
    return ShapeDtype(np.shape(x), x.dtype)
  if isinstance(x, (tuple, list)):
    return tuple(signature(item) for item in x)
  raise TypeError(f"signature: expected an array, a ShapeDtype or a tuple of them, got {type(x).__name__}")


def as_structs(sig):
  """`jax.ShapeDtypeStruct`s in the nesting of `sig` (a ShapeDtype or tuple of them)."""
  if isinstance(sig, tuple):
    return tuple(as_structs(s) for s in sig)
  return signature(sig).as_struct()


def describe(x: Any) -> str:
  """A short text for an error message: shapes and dtypes of arrays, type names of anything else."""
  if isinstance(x, ShapeDtype):
    return f"{x.shape} {x.dtype.name}"
  if isinstance(x, jax.ShapeDtypeStruct) or is_array(x):
    return describe(signature(x))
  if isinstance(x, tuple):
    inner = ", ".join(describe(item) for item in x)
    return f"({inner}{',' if len(x) == 1 else ''})"
  if isinstance(x, list):
    return f"a list of {len(x)} items (stack items are arrays; several items go in a tuple)"
  return f"a {type(x).__name__}"
