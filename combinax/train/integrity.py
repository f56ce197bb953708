"""What makes a checkpoint trustworthy: checksums of arrays' values (not of files) and digests of JSON.

An array's checksum is two uint32 sums over its elements' bits, `sum(b)` and `sum(b * (2i + 1))` (i the flat index,
arithmetic mod 2**32). Integer sums do not depend on the order of addition, so the checksum of a sharded array is the
same on any mesh and any number of processes, and it is computed where the shards are (a jitted reduction: nothing is
gathered on one host). Any single flipped bit changes the second sum: the bit's value times an odd weight is never 0
mod 2**32. Files are not hashed, because each process writes and reads only its own shards; the values they decode
to are what must be right.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}


def _bits(x, xp):
  """The elements' bits as uint32 (64-bit values as two words, complex as real and imaginary parts)."""
  if x.dtype == bool:
    return x.astype(xp.uint32)
  if xp.issubdtype(x.dtype, xp.complexfloating):
    x = xp.stack([x.real, x.imag], axis=-1)
  width = x.dtype.itemsize
  if xp is np:
    bits = np.ascontiguousarray(x).view(_UINT[width])
  else:
    bits = jax.lax.bitcast_convert_type(x, _UINT[width])
  return bits.astype(xp.uint32)


def _checksum(x, xp):
  bits = _bits(x, xp).reshape(-1)
  weights = xp.arange(bits.shape[0], dtype=xp.uint32) * xp.uint32(2) + xp.uint32(1)
  return xp.stack([xp.sum(bits, dtype=xp.uint32), xp.sum(bits * weights, dtype=xp.uint32)])


@functools.partial(jax.jit)
def _device_checksums(arrays):
  return [_checksum(x, jnp) for x in arrays]


def checksums(arrays: Sequence[Any]) -> list[list[int]]:
  """`[sum, weighted sum]` of each array (jax arrays where they live, one jitted call per set of devices; numpy
  arrays on the host): the same numbers whatever the sharding."""
  results: list = [None] * len(arrays)
  groups: dict = {}
  for i, x in enumerate(arrays):
    if isinstance(x, jax.Array):
      groups.setdefault(frozenset(x.sharding.device_set), []).append(i)
    else:
      results[i] = _checksum(np.asarray(x), np)
  for indices in groups.values():
    for i, value in zip(indices, _device_checksums([arrays[i] for i in indices])):
      results[i] = value
  return [[int(v) for v in np.asarray(r)] for r in results]


def digest(record: dict) -> str:
  """sha256 of a JSON record (without its own "sha256" field), written canonically."""
  body = {k: v for k, v in record.items() if k != "sha256"}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(record: dict) -> dict:
  """`record` with its digest in "sha256"."""
  return {**record, "sha256": digest(record)}


def is_intact(record: dict) -> bool:
  """True when `record` carries the digest of its own contents."""
  return isinstance(record, dict) and record.get("sha256") == digest(record)
