"""Pipeline states to JSON and back, exactly: numpy arrays keep dtype and shape, tuples stay tuples.

A state from `stream.get_state()` holds dicts, lists, strings, numbers and the examples a stage has buffered
(tuples of numpy arrays and strings). `dumps_state` writes it as one JSON string (arrays as base64 of their bytes),
`loads_state` reads it back, so a checkpoint can store the data position next to the weights.

>>> from combinax import data
>>> state = [{"stage": "Shuffle", "state": {"buffer": [(np.arange(3, dtype=np.int32), "a")]}}]
>>> back = data.loads_state(data.dumps_state(state))
>>> back[0]["state"]["buffer"][0]
(array([0, 1, 2], dtype=int32), 'a')
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from combinax.data.base import DataError


def _encode(value: Any) -> Any:
  if isinstance(value, np.ndarray) or isinstance(value, np.generic):
    array = np.asarray(value)  # (not ascontiguousarray: it turns a scalar into shape (1,))
    if array.dtype.hasobject:
      raise DataError(f"cannot save a numpy array of Python objects in a pipeline state: {value!r}")
    return {"__ndarray__": base64.b64encode(array.tobytes()).decode("ascii"), "dtype": array.dtype.str,
            "shape": list(array.shape), "scalar": isinstance(value, np.generic)}
  if isinstance(value, tuple):
    return {"__tuple__": [_encode(v) for v in value]}
  if isinstance(value, list):
    return [_encode(v) for v in value]
  if isinstance(value, bytes):
    return {"__bytes__": base64.b64encode(value).decode("ascii")}
  if isinstance(value, dict):
    for key in value:
      if not isinstance(key, str) or key.startswith("__"):
        raise DataError(f"pipeline state dict keys must be strings not starting with '__', got {key!r}")
    return {k: _encode(v) for k, v in value.items()}
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise DataError(f"cannot save a {type(value).__name__} in a pipeline state: {value!r}")


def _decode(value: Any) -> Any:
  if isinstance(value, list):
    return [_decode(v) for v in value]
  if isinstance(value, dict):
    if "__ndarray__" in value:
      raw = base64.b64decode(value["__ndarray__"])
      array = np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
      return array[()] if value.get("scalar") else array
    if "__tuple__" in value:
      return tuple(_decode(v) for v in value["__tuple__"])
    if "__bytes__" in value:
      return base64.b64decode(value["__bytes__"])
    return {k: _decode(v) for k, v in value.items()}
  return value


def dumps_state(state: Any) -> str:
  """A pipeline state (from `stream.get_state()`) as a JSON string."""
  return json.dumps(_encode(state))


def loads_state(text: str) -> Any:
  """The pipeline state that `dumps_state` wrote."""
  return _decode(json.loads(text))
