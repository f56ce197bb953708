"""BERT-family encoders (BERT, MiniLM, sentence-transformers) from Hugging Face `model.safetensors` + `config.json`.

The model is `combinax.models.TransformerEncoder` with BERT's options: post-LayerNorm blocks (`pre_norm=False`),
learned positions, token-type embeddings and a LayerNorm on the embeddings (`embed_norm=True`), exact GELU. Weights
map by readable path (`encoder.layer.3.attention.self.query.weight` -> row 3 of `blocks/attention/q/kernel`,
transposed); the pooler of `BertModel` is not used (sentence embeddings mean-pool, classifiers get a new head).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from combinax import layers as cl
from combinax.data.hf_tokenizers import WordPieceTokenizer
from combinax.layers.attention import PaddingMask
from combinax.models.transformer import Pool, TransformerEncoder
from combinax.paths import unflatten
from combinax.pretrained.families import Imported, PretrainedError, check_params, safetensors_numpy, stack_layers

FAMILY = "bert"
_ACTIVATIONS = {"gelu": cl.Gelu, "gelu_new": cl.FastGelu, "gelu_pytorch_tanh": cl.FastGelu, "relu": cl.Relu}

# Hugging Face name (after "encoder.layer.N.") -> (combinax path under blocks/, transpose?)
_BLOCK = {
    "attention.self.query.weight": ("attention/q/kernel", True),
    "attention.self.query.bias": ("attention/q/bias", False),
    "attention.self.key.weight": ("attention/k/kernel", True),
    "attention.self.key.bias": ("attention/k/bias", False),
    "attention.self.value.weight": ("attention/v/kernel", True),
    "attention.self.value.bias": ("attention/v/bias", False),
    "attention.output.dense.weight": ("attention/o/kernel", True),
    "attention.output.dense.bias": ("attention/o/bias", False),
    "attention.output.LayerNorm.weight": ("attention_norm/scale", False),
    "attention.output.LayerNorm.bias": ("attention_norm/bias", False),
    "intermediate.dense.weight": ("ff/in/kernel", True),
    "intermediate.dense.bias": ("ff/in/bias", False),
    "output.dense.weight": ("ff/out/kernel", True),
    "output.dense.bias": ("ff/out/bias", False),
    "output.LayerNorm.weight": ("ff_norm/scale", False),
    "output.LayerNorm.bias": ("ff_norm/bias", False),
}
_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "embed/embedding",
    "embeddings.position_embeddings.weight": "positions/embedding",
    "embeddings.token_type_embeddings.weight": "token_type_embed/embedding",
    "embeddings.LayerNorm.weight": "embed_norm/scale",
    "embeddings.LayerNorm.bias": "embed_norm/bias",
}
_UNUSED = ("embeddings.position_ids", "pooler.")


def ZeroTokenTypes() -> cl.Layer:
  """ids -> (ids, zeros like ids): every token of type 0, for single-segment inputs."""
  return cl.Fn("ZeroTokenTypes", lambda ids: (ids, jnp.zeros_like(ids)), n_out=2)


def SentenceEmbedding(encoder: cl.Layer, pad_id: int = 0, pool: str = "mean", normalize: bool = True) -> cl.Layer:
  """ids -> (batch, d) sentence embeddings: `encoder`'s activations pooled over non-padding tokens, L2-normalised.

  `encoder` maps ids (batch, length) to activations (batch, length, d) (e.g. a `TransformerEncoder` with
  `n_classes=None`). Normalisation divides by max(norm, 1e-12), as sentence-transformers does.
  """
  def l2_normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

  return cl.Serial(
      cl.Branch(encoder, PaddingMask(pad_id)),                    # activations, mask
      Pool(pool),                                                  # pooled (batch, d)
      [cl.Fn("L2Normalize", l2_normalize)] if normalize else [])   # embedding


def model_from_config(config: dict, *, n_classes: int | None = None, pool: str = "mean", output: str | None = None,
                      dropout: float = 0.0, mode: str = "eval", token_types: bool = False, scan_layers: bool = True,
                      remat: bool = False) -> cl.Layer:
  """The encoder described by a Hugging Face BERT `config.json`.

  Args:
    n_classes: a classifier head (`pool`ed activations -> Dense `classifier`); None for no head.
    output: without a head, "embedding" (pooled, L2-normalised sentence embeddings, the default) or "sequence"
      (activations (batch, length, d)).
    dropout: the fine-tuning dropout (BERT used 0.1); 0 by default, as for inference.
    token_types: take (ids, token type ids) instead of ids alone (all type 0).
  """
  output = output or ("logits" if n_classes else "embedding")
  if (output == "logits") != bool(n_classes) or output not in ("logits", "embedding", "sequence"):
    raise ValueError(f"bert model: output={output!r} with n_classes={n_classes}: use n_classes for logits, or "
                     "output='embedding' / 'sequence' without one")
  activation = config.get("hidden_act", "gelu")
  if activation not in _ACTIVATIONS:
    raise PretrainedError(f"bert config: hidden_act {activation!r} is not supported ({sorted(_ACTIVATIONS)})")
  pad_id = int(config.get("pad_token_id") or 0)
  encoder = TransformerEncoder(
      int(config["vocab_size"]), n_classes=n_classes, d_model=int(config["hidden_size"]),
      d_ff=int(config["intermediate_size"]), n_layers=int(config["num_hidden_layers"]),
      n_heads=int(config["num_attention_heads"]), dropout=dropout, max_len=int(config["max_position_embeddings"]),
      mode=mode, ff_activation=_ACTIVATIONS[activation], pool=pool, type_vocab_size=int(config.get("type_vocab_size", 0)),
      pad_id=pad_id, positions="learned", embed_norm=True, scan_layers=scan_layers, remat=remat, pre_norm=False,
      norm="layer", norm_epsilon=float(config.get("layer_norm_eps", 1e-12)))
  if config.get("type_vocab_size") and not token_types:
    encoder = cl.Serial(ZeroTokenTypes(), encoder)
  if output == "embedding":
    return SentenceEmbedding(encoder, pad_id, pool)
  return encoder


def example_input(config: dict):
  """A token-id signature the model initialises from."""
  from combinax.shapes import ShapeDtype
  return ShapeDtype((1, 8), jnp.int32)


def convert(tensors: dict[str, np.ndarray], config: dict) -> dict:
  """Hugging Face BERT tensors (optionally under a `bert.` prefix) -> combinax params (a nested dict)."""
  n_layers = int(config["num_hidden_layers"])
  flat, blocks, unused = {}, {}, []
  for name, value in tensors.items():
    key = name[len("bert."):] if name.startswith("bert.") else name
    if key in _EMBEDDINGS:
      flat[_EMBEDDINGS[key]] = value
    elif key.startswith("encoder.layer."):
      index, rest = key[len("encoder.layer."):].split(".", 1)
      if rest not in _BLOCK:
        raise PretrainedError(f"bert weights: unknown tensor {name!r}")
      path, transpose = _BLOCK[rest]
      blocks.setdefault(path, {})[int(index)] = value.T if transpose else value
    elif key.startswith(_UNUSED) or not key.startswith(("embeddings.", "encoder.")):
      unused.append(name)  # the pooler, position ids, task heads of other checkpoints
    else:
      raise PretrainedError(f"bert weights: unknown tensor {name!r}")
  flat.update(stack_layers(blocks, n_layers, "bert weights"))
  return unflatten({path: np.asarray(value, np.float32) for path, value in flat.items()})


def import_files(folder) -> Imported:
  """A BERT-family model from a folder with `config.json`, `model.safetensors` and `vocab.txt` or `tokenizer.json`."""
  folder = Path(folder)
  for needed in ("config.json", "model.safetensors"):
    if not (folder / needed).exists():
      raise PretrainedError(f"{folder}: no {needed} (a BERT folder needs config.json, model.safetensors and "
                            "vocab.txt or tokenizer.json)")
  config = json.loads((folder / "config.json").read_text())
  if config.get("model_type", "bert") != "bert":
    raise PretrainedError(f"{folder}/config.json: model_type {config.get('model_type')!r} is not 'bert'")
  if config.get("position_embedding_type", "absolute") != "absolute":
    raise PretrainedError(f"{folder}/config.json: position_embedding_type {config['position_embedding_type']!r} is "
                          "not supported (absolute)")
  params = convert(safetensors_numpy(folder / "model.safetensors"), config)
  check_params(params, model_from_config(config, output="sequence"), example_input(config), folder)
  lowercase = _lowercase(folder)
  if (folder / "tokenizer.json").exists():
    tokenizer = WordPieceTokenizer.load(folder / "tokenizer.json", lowercase=lowercase)
  elif (folder / "vocab.txt").exists():
    tokenizer = WordPieceTokenizer.load(folder / "vocab.txt", lowercase=lowercase)
  else:
    raise PretrainedError(f"{folder}: no vocab.txt or tokenizer.json")
  return Imported(config, params, tokenizer)


def _lowercase(folder: Path) -> bool:
  settings = folder / "tokenizer_config.json"
  if settings.exists():
    return bool(json.loads(settings.read_text()).get("do_lower_case", True))
  return True
