"""Export params (e.g. fine-tuned, LoRA merged) to a `.safetensors` file keyed by their readable paths, and back.

Every leaf is stored under its combinax path (`blocks/attention/q/kernel`); `load_safetensors` rebuilds the nested
params, so `model.apply(load_safetensors(path), ...)` runs the exported model. Other tools read the same file with
any safetensors reader (`safetensors.numpy.load_file`).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from combinax.paths import leaves_with_paths, unflatten
from combinax.pretrained.families import PretrainedError, check_fits, safetensors_numpy
from combinax.store import rundir


def save_safetensors(params, path, metadata: dict[str, str] | None = None) -> Path:
  """Writes `params` to `path` (atomically: a temporary file renamed into place); returns the path."""
  try:
    from safetensors.numpy import save_file
  except ImportError:
    raise ImportError("writing .safetensors needs the safetensors package: pip install 'combinax[pretrained]'") from None
  path = Path(path)
  tensors = {name: np.ascontiguousarray(jax.device_get(leaf)) for name, leaf in leaves_with_paths(params)}
  bad = [name for name, value in tensors.items() if value.dtype == object]
  if bad:
    raise PretrainedError(f"save_safetensors: {bad[0]} is not an array")
  with rundir.replaced_atomically(path) as tmp:
    save_file(tensors, str(tmp), metadata={"format": "combinax-params", **(metadata or {})})
  return path


def load_safetensors(path, template=None):
  """The params saved by `save_safetensors`. With `template` (e.g. `model.init`'s params or their `eval_shape`),
  every path and shape must match it."""
  params = unflatten(safetensors_numpy(path))
  if template is not None:
    check_fits(params, template, path)
  return params
