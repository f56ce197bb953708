"""What every pretrained family module provides (bert, llama, textgenrnn): an importer and a model builder."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from combinax.data.tokenizers import Tokenizer


class Imported(NamedTuple):
  """A pretrained model read from its original files.

  config: JSON-able hyperparameters, enough for the family's `model_from_config(config, **options)`.
  params: the model's params (numpy arrays), at the paths `model_from_config(config).init` gives.
  tokenizer: the tokenizer the model was trained with.
  """
  config: dict
  params: Any
  tokenizer: Tokenizer


class PretrainedError(ValueError):
  """Pretrained weights are missing, or do not fit the model they are loaded into."""


def check_params(params, model, input_signature, source) -> None:
  """Raises a `PretrainedError` naming each path whose presence or shape differs from what `model.init` makes
  (a quantized weight is compared by the shape of the weight it stands for)."""
  from combinax import quant

  params = jax.eval_shape(quant.dequantize, params)
  check_fits(params, jax.eval_shape(lambda: model.init(jax.random.key(0), input_signature)[0]), source)


def check_fits(params, expected, source) -> None:
  """Raises a `PretrainedError` naming each path of `params` missing from, extra to, or shaped unlike `expected`
  (a params tree or its `eval_shape`)."""
  from combinax.paths import leaves_with_paths

  expected = dict(leaves_with_paths(expected))
  actual = dict(leaves_with_paths(params))
  problems = [f"{p}: missing" for p in sorted(set(expected) - set(actual))]
  problems += [f"{p}: not in the model" for p in sorted(set(actual) - set(expected))]
  problems += [f"{p}: shape {tuple(actual[p].shape)}, the model wants {tuple(expected[p].shape)}"
               for p in sorted(set(expected) & set(actual)) if tuple(actual[p].shape) != tuple(expected[p].shape)]
  if problems:
    raise PretrainedError(f"{source}: the weights do not fit the model: " + "; ".join(problems[:8]) +
                          (f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""))


def safetensors_numpy(path) -> dict:
  """The tensors of a `.safetensors` file as numpy arrays (needs the `safetensors` package)."""
  try:
    from safetensors.numpy import load_file
  except ImportError:
    raise ImportError("reading .safetensors needs the safetensors package: pip install 'combinax[pretrained]'") from None
  return load_file(str(path))


def stack_layers(blocks: dict, n_layers: int, source: str) -> dict:
  """{path: {layer index: array}} -> {"blocks/<path>": (n_layers, ...) array}: per-layer tensors stacked for
  `Repeat`'s scanned blocks; every path must have exactly layers 0..n_layers-1."""
  stacked = {}
  for path, rows in blocks.items():
    if sorted(rows) != list(range(n_layers)):
      raise PretrainedError(f"{source}: blocks/{path} has layers {sorted(rows)}, the model has {n_layers}")
    layers = [rows[i] for i in range(n_layers)]
    # A quantized weight (GGUF blocks kept packed) is stacked field by field, as lax.scan will slice it.
    stacked[f"blocks/{path}"] = jax.tree_util.tree_map(lambda *arrays: np.stack(arrays), *layers)
  return stacked
