"""textgenrnn's pretrained character model (minimaxir/textgenrnn) from its Keras `.hdf5` weights and vocabulary.

The model is `combinax.models.TextGenRNN`: Embedding(465, 100), two LSTM(128) whose outputs are concatenated with the
embeddings, an `AttentionWeightedAverage` over the window of 40 characters, Dense(465). The weights were saved by
Keras's `CuDNNLSTM`, whose LSTM layout differs from Keras's own `LSTM` (and combinax's) in two ways, undone here as
Keras does when it loads such a file into an `LSTM`:

- each gate's input kernel (d_in, n) holds, row-major, the (n, d_in) matrix cuDNN multiplies by: it is re-laid out
  as `k.T.reshape(k.shape, order="F")`, and each gate's recurrent kernel (n, n) is transposed;
- the bias has 8n entries, cuDNN's input and recurrent biases (gates i, f, c, o in both): they are added.

A file saved by a plain Keras `LSTM` (4n biases) is read as it is. The tokenizer keeps textgenrnn's ids: 0 is padding
(and every character outside the vocabulary, as textgenrnn encodes them), 1..464 as in `textgenrnn_vocab.json`, whose
meta token `<s>` starts every text and ends a generated one. `generate` is textgenrnn's sampling loop.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from combinax.data.base import DataError
from combinax.data.tokenizers import Tokenizer
from combinax.layers.base import Layer
from combinax.models.rnn import TextGenRNN
from combinax.paths import unflatten
from combinax.pretrained.families import Imported, PretrainedError, check_params
from combinax.shapes import ShapeDtype
from combinax.store.rundir import write_atomically

FAMILY = "textgenrnn"
WEIGHTS, VOCAB = "textgenrnn_weights.hdf5", "textgenrnn_vocab.json"
META_TOKEN = "<s>"
WINDOW = 40          # textgenrnn's `max_length`: the model reads the last 40 ids
EPSILON = 1e-7       # Keras's K.epsilon(), in textgenrnn's sampling


class TextgenrnnTokenizer(Tokenizer):
  """textgenrnn's characters with their original ids; 0 pads (and stands for unknown characters), the meta token
  `<s>` (`meta_id`, also `eos_id`) starts every text and ends generation.

  >>> tok = TextgenrnnTokenizer({"a": 1, "b": 2, "<s>": 3})
  >>> ids = tok.encode("abc")
  >>> ids, tok.decode(ids), tok.vocab_size, tok.meta_id
  (array([1, 2, 0], dtype=int32), 'ab', 4, 3)
  """

  pad_id = 0

  def __init__(self, vocab: dict[str, int], meta_token: str = META_TOKEN):
    ids = [int(i) for i in vocab.values()]
    if len(set(ids)) != len(ids) or min(ids, default=0) < 1:
      raise DataError("TextgenrnnTokenizer: vocabulary ids must be distinct and >= 1 (0 is padding)")
    if meta_token not in vocab:
      raise DataError(f"TextgenrnnTokenizer: the meta token {meta_token!r} is not in the vocabulary")
    long = [key for key in vocab if len(key) != 1 and key != meta_token]
    if long:
      raise DataError(f"TextgenrnnTokenizer: {long[0]!r} is not one character (a word-level vocabulary?)")
    self.vocab = {key: int(i) for key, i in sorted(vocab.items(), key=lambda item: item[1])}
    self.meta_token, self.meta_id = meta_token, self.vocab[meta_token]
    self.eos_id = self.meta_id
    self._chars = {i: key for key, i in self.vocab.items()}

  @property
  def vocab_size(self) -> int:
    return max(self.vocab.values()) + 1

  def encode(self, text: str) -> np.ndarray:
    """One id per character of `text` (0 for a character outside the vocabulary, as textgenrnn encodes it)."""
    get = self.vocab.get
    return np.fromiter((get(c, 0) for c in text), np.int32, len(text))

  def decode(self, ids) -> str:
    """The characters of `ids`, without padding and the meta token."""
    ids = self._ids(ids)
    bad = [i for i in ids if i not in self._chars]
    if bad:
      raise DataError(f"TextgenrnnTokenizer: id {bad[0]} is not in its vocabulary (ids 1..{self.vocab_size - 1})")
    return "".join(self._chars[i] for i in ids)

  def id_to_token(self, i: int) -> str:
    """The character (or the meta token) of id `i`."""
    if int(i) not in self._chars:
      raise DataError(f"TextgenrnnTokenizer: id {int(i)} is not in its vocabulary (0 is padding)")
    return self._chars[int(i)]

  def save(self, path) -> None:
    """Writes JSON `{"type": "textgenrnn", "meta_token": "<s>", "vocab": {char: id, ...}}` (ids ascending)."""
    content = {"type": "textgenrnn", "meta_token": self.meta_token, "vocab": self.vocab}
    write_atomically(path, json.dumps(content).encode("utf-8"))

  @classmethod
  def load(cls, path) -> "TextgenrnnTokenizer":
    """A file written by `save`, or textgenrnn's own `textgenrnn_vocab.json` (a plain {char: id} object)."""
    try:
      content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
      raise DataError(f"{path}: not a readable textgenrnn vocabulary ({e})") from None
    if not isinstance(content, dict):
      raise DataError(f"{path}: not a textgenrnn vocabulary (a JSON object)")
    if "type" in content:
      if content["type"] != "textgenrnn":
        raise DataError(f"{path}: a {content['type']!r} tokenizer, not a textgenrnn vocabulary")
      return cls(content["vocab"], content.get("meta_token", META_TOKEN))
    return cls(content)


# --- Import ----------------------------------------------------------------------------------------------------


def _h5py():
  try:
    import h5py
  except ImportError:
    raise ImportError("reading textgenrnn's Keras .hdf5 weights needs the h5py package: pip install h5py "
                      "(or pip install 'combinax[pretrained]')") from None
  return h5py


def read_keras_weights(path) -> dict[str, list[np.ndarray]]:
  """{layer name: its weights, in Keras's order} of a Keras `.hdf5` weights file (or a whole saved model)."""
  h5py = _h5py()
  try:
    with h5py.File(str(path), "r") as file:
      root = file["model_weights"] if "model_weights" in file else file
      if "layer_names" not in root.attrs:
        raise PretrainedError(f"{path}: not a Keras weights file (no 'layer_names')")
      layers = {}
      for layer in root.attrs["layer_names"]:
        layer = layer.decode("utf-8") if isinstance(layer, bytes) else str(layer)
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n)
                 for n in root[layer].attrs.get("weight_names", [])]
        layers[layer] = [np.asarray(root[layer][name], np.float32) for name in names]
      return layers
  except (OSError, KeyError) as e:
    raise PretrainedError(f"{path}: not a readable Keras weights file ({e})") from None


def _lstm_params(name: str, weights: list[np.ndarray]) -> dict[str, np.ndarray]:
  """A Keras LSTM's or CuDNNLSTM's (kernel, recurrent_kernel, bias) -> combinax LSTM params (see the docstring)."""
  if len(weights) != 3:
    raise PretrainedError(f"textgenrnn weights: layer {name} has {len(weights)} weights, an LSTM has 3 "
                          "(kernel, recurrent_kernel, bias)")
  kernel, recurrent, bias = weights
  n = recurrent.shape[0]
  if recurrent.shape != (n, 4 * n) or kernel.ndim != 2 or kernel.shape[1] != 4 * n or \
      bias.shape not in ((4 * n,), (8 * n,)):
    raise PretrainedError(f"textgenrnn weights: layer {name} is not an LSTM of {n} units: kernel "
                          f"{kernel.shape}, recurrent_kernel {recurrent.shape}, bias {bias.shape}; expected "
                          f"(d_in, {4 * n}), ({n}, {4 * n}), ({4 * n},) or cuDNN's ({8 * n},)")
  if bias.shape == (8 * n,):  # CuDNNLSTM: per gate, cuDNN's matrices; two biases
    kernel = np.concatenate([k.T.reshape(k.shape, order="F") for k in np.split(kernel, 4, axis=1)], axis=1)
    recurrent = np.concatenate([k.T for k in np.split(recurrent, 4, axis=1)], axis=1)
    bias = bias[:4 * n] + bias[4 * n:]
  return {"input/kernel": kernel, "recurrent/kernel": recurrent, "input/bias": bias}


def _layer(layers: dict, name: str, n_weights: int, source) -> list[np.ndarray]:
  if name not in layers:
    raise PretrainedError(f"{source}: no layer {name!r} (layers: {', '.join(layers)})")
  if len(layers[name]) != n_weights:
    raise PretrainedError(f"{source}: layer {name!r} has {len(layers[name])} weights, expected {n_weights}")
  return layers[name]


def convert(layers: dict[str, list[np.ndarray]], config: dict, source="textgenrnn weights") -> dict:
  """Keras layer weights (as `read_keras_weights` gives them) -> the params of `model_from_config(config)`."""
  flat = {"embedding/embedding": _layer(layers, "embedding", 1, source)[0]}
  for i in range(1, config["n_layers"] + 1):
    lstm = _lstm_params(f"rnn_{i}", _layer(layers, f"rnn_{i}", 3, source))
    flat.update({f"rnn_{i}/{path}": value for path, value in lstm.items()})
  (attention,) = _layer(layers, "attention", 1, source)
  flat["attention/weights"] = attention[:, 0] if attention.ndim == 2 and attention.shape[1] == 1 else attention
  flat["output/kernel"], flat["output/bias"] = _layer(layers, "output", 2, source)
  return unflatten({path: np.ascontiguousarray(value, np.float32) for path, value in flat.items()})


def read_config(layers: dict[str, list[np.ndarray]], tokenizer: TextgenrnnTokenizer, source) -> dict:
  """The hyperparameters of `model_from_config`, from the vocabulary and the weights' shapes."""
  n_layers = 0
  while f"rnn_{n_layers + 1}" in layers:
    n_layers += 1
  if not n_layers or any(name.startswith("rnn_") and name[4:].isdigit() and int(name[4:]) > n_layers
                         for name in layers):
    raise PretrainedError(f"{source}: the recurrent layers must be rnn_1, rnn_2, ... (layers: {', '.join(layers)})")
  embedding = _layer(layers, "embedding", 1, source)[0]
  recurrent = _layer(layers, "rnn_1", 3, source)[1]
  if embedding.ndim != 2 or recurrent.ndim != 2:
    raise PretrainedError(f"{source}: embedding {embedding.shape} and rnn_1 recurrent_kernel {recurrent.shape} "
                          "must be matrices")
  return {"vocab_size": tokenizer.vocab_size, "d_embedding": int(embedding.shape[1]),
          "n_units": int(recurrent.shape[0]), "n_layers": n_layers, "max_length": WINDOW}


def model_from_config(config: dict, *, mode: str = "eval") -> Layer:
  """The `TextGenRNN` that `config` describes: ids (batch, window) -> next-character logits (batch, vocab_size)."""
  return TextGenRNN(vocab_size=int(config["vocab_size"]), d_embedding=int(config["d_embedding"]),
                    n_units=int(config["n_units"]), n_layers=int(config["n_layers"]), mode=mode)


def example_input(config: dict) -> ShapeDtype:
  """The ids signature the model initialises from: one window."""
  return ShapeDtype((1, int(config.get("max_length", WINDOW))), jnp.int32)


def import_files(folder) -> Imported:
  """textgenrnn's model from a folder with `textgenrnn_weights.hdf5` and `textgenrnn_vocab.json` (the installed
  `textgenrnn` package's folder, or a model trained with textgenrnn and saved under those names)."""
  folder = Path(folder)
  for needed in (WEIGHTS, VOCAB):
    if not (folder / needed).exists():
      raise PretrainedError(f"{folder}: no {needed} (a textgenrnn folder has {WEIGHTS} and {VOCAB})")
  tokenizer = TextgenrnnTokenizer.load(folder / VOCAB)
  source = folder / WEIGHTS
  layers = read_keras_weights(source)
  config = read_config(layers, tokenizer, source)
  params = convert(layers, config, source)
  check_params(params, model_from_config(config), example_input(config), source)
  return Imported(config, params, tokenizer)


# --- Generation ------------------------------------------------------------------------------------------------


def context_ids(tokenizer: TextgenrnnTokenizer, ids: Sequence[int], window: int = WINDOW) -> np.ndarray:
  """The model's input for a text's ids: the last `window` of them, left-padded with 0 (Keras's `pad_sequences`).

  >>> context_ids(TextgenrnnTokenizer({"a": 1, "<s>": 2}), [2, 1, 1], window=5)
  array([0, 0, 2, 1, 1], dtype=int32)
  """
  ids = list(ids)[-window:] if window else []
  return np.asarray([tokenizer.pad_id] * (window - len(ids)) + ids, np.int32)


@functools.lru_cache(maxsize=8)
def _probabilities_fn(model: Layer):
  return jax.jit(lambda params, ids: jax.nn.softmax(model.apply(params, {}, ids)[0], axis=-1))


def probabilities(model: Layer, params, ids) -> np.ndarray:
  """Next-character probabilities (batch, vocab_size), float32, for id windows (batch, window): textgenrnn's
  outputs (the softmax of the model's logits). Compiled once per model and window shape."""
  return np.asarray(_probabilities_fn(model)(params, jnp.asarray(ids, jnp.int32)))


def sample_id(probs, temperature: float, rng: np.random.Generator) -> int:
  """textgenrnn's choice of the next id from `probs`, made reproducible.

  Temperature 0 (or None) takes the argmax. Otherwise the float64 probabilities are re-weighted as textgenrnn does,
  `q ∝ exp(log(p + 1e-7) / temperature)`, and one uniform `u = rng.random()` picks the first id whose cumulative
  `q` exceeds it (inverse CDF). Id 0 (padding) is never returned: the second most likely id replaces it.
  """
  p = np.asarray(probs, np.float64).reshape(-1)
  if temperature is None or temperature == 0:
    weights, choice = p, int(np.argmax(p))
  else:
    logits = np.log(p + EPSILON) / float(temperature)
    weights = np.exp(logits - logits.max())
    weights = weights / weights.sum()
    choice = min(int(np.searchsorted(np.cumsum(weights), rng.random(), side="right")), len(weights) - 1)
  if choice == 0:
    choice = int(np.argsort(weights, kind="stable")[-2])
  return choice


def generate(model: Layer, params, tokenizer: TextgenrnnTokenizer, prefix: str = "", max_length: int = 300,
             temperature: float | Sequence[float] = 0.5, seed: int = 0, *, window: int = WINDOW) -> str:
  """Text from textgenrnn's generation loop: `prefix` followed by sampled characters.

  The text starts as the meta token `<s>` and the characters of `prefix`; each step reads the last `window` ids
  (left-padded with 0), picks the next id with `sample_id` and stops at `<s>` or when the text (the meta token
  included) has `max_length` items. The same `seed` gives the same text.

  Args:
    model: `model_from_config(config)` (any mode).
    temperature: 0 for the most likely character; a sequence cycles, one temperature per step, as textgenrnn's does.
    seed: seeds `np.random.default_rng`, which draws one uniform per sampled character.
  """
  rng = np.random.default_rng(seed)
  temperatures = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature]
  params = jax.device_put(params)
  text = [tokenizer.meta_token] + list(prefix)
  ids = [tokenizer.meta_id] + [int(i) for i in tokenizer.encode(prefix)]
  while len(text) < max_length:
    probs = probabilities(model, params, context_ids(tokenizer, ids, window)[None])[0]
    next_id = sample_id(probs, temperatures[(len(text) - 1) % len(temperatures)], rng)
    ids.append(next_id)
    text.append(tokenizer.id_to_token(next_id))
    if next_id == tokenizer.meta_id:
      break
  text = text[1:]
  if tokenizer.meta_token in text:
    text.remove(tokenizer.meta_token)
  return "".join(text)
