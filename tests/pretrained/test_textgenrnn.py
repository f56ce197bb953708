"""textgenrnn import: probabilities and generated texts equal an independent PyTorch forward pass of the Keras model
(tools/textgenrnn_reference.py); the tokenizer keeps textgenrnn's ids; damaged weight files fail clearly."""

import json
import shutil
import sys

import jax
import numpy as np
import pytest

import combinax as cx
from combinax.data.base import DataError
from combinax.pretrained import textgenrnn
from combinax.pretrained.families import PretrainedError
from combinax.pretrained.textgenrnn import TextgenrnnTokenizer

from conftest import FIXTURES, files_of

h5py = pytest.importorskip("h5py")


@pytest.fixture(scope="module")
def folder():
  return files_of("textgenrnn")  # skips: pip install --no-deps textgenrnn==2.0.0


@pytest.fixture(scope="module")
def imported(folder):
  return textgenrnn.import_files(folder)


@pytest.fixture(scope="module")
def ref():
  return json.loads((FIXTURES / "textgenrnn_reference.json").read_text(encoding="utf-8"))


def test_config_params_and_tokenizer(imported):
  assert imported.config == {"vocab_size": 465, "d_embedding": 100, "n_units": 128, "n_layers": 2, "max_length": 40}
  assert cx.paths(imported.params) == [
      "attention/weights", "embedding/embedding", "output/bias", "output/kernel",
      "rnn_1/input/bias", "rnn_1/input/kernel", "rnn_1/recurrent/kernel",
      "rnn_2/input/bias", "rnn_2/input/kernel", "rnn_2/recurrent/kernel"]
  assert cx.count_params(imported.params) == 465 * 100 + 356 + 356 * 465 + 465 + 2 * (128 * 512 + 512) + 100 * 512 + \
      128 * 512
  tok = imported.tokenizer
  assert (tok.vocab_size, tok.pad_id, tok.meta_token, tok.meta_id, tok.eos_id) == (465, 0, "<s>", 464, 464)


def test_windows_equal_the_reference(imported, ref):
  tok = imported.tokenizer
  for prefix, window in zip(ref["prefixes"], ref["windows"]):
    ids = [tok.meta_id] + list(tok.encode(prefix))
    np.testing.assert_array_equal(textgenrnn.context_ids(tok, ids), window)


def test_probabilities_equal_the_reference(imported, ref):
  model = textgenrnn.model_from_config(imported.config)
  probs = textgenrnn.probabilities(model, imported.params, np.asarray(ref["windows"]))
  expected = np.asarray(ref["probabilities"], np.float32)
  assert probs.shape == expected.shape == (3, 465)
  assert np.abs(probs - expected).max() <= 1e-5
  np.testing.assert_array_equal(probs.argmax(-1), expected.argmax(-1))


def test_generate_equals_the_reference(imported, ref):
  model = textgenrnn.model_from_config(imported.config)
  for setting in ref["generated"]:
    text = textgenrnn.generate(model, imported.params, imported.tokenizer, setting["prefix"],
                               max_length=setting["max_length"], temperature=setting["temperature"],
                               seed=setting["seed"])
    assert text == setting["text"]
  assert ref["generated"][1]["text"].startswith("The ")


def test_sample_id():
  probs = np.array([0.6, 0.3, 0.1])
  assert textgenrnn.sample_id(probs, 0.0, None) == 1  # never padding: the second most likely instead
  assert textgenrnn.sample_id(np.array([0.1, 0.2, 0.7]), 0.0, None) == 2
  draws = [textgenrnn.sample_id(np.array([0.0, 0.25, 0.75]), 1.0, np.random.default_rng(s)) for s in range(200)]
  assert set(draws) == {1, 2} and 100 < draws.count(2) < 190
  again = [textgenrnn.sample_id(np.array([0.0, 0.25, 0.75]), 1.0, np.random.default_rng(s)) for s in range(200)]
  assert draws == again
  cold = [textgenrnn.sample_id(np.array([0.0, 0.25, 0.75]), 0.05, np.random.default_rng(s)) for s in range(50)]
  assert set(cold) == {2}


def test_tokenizer_round_trip_save_and_load(imported, folder, tmp_path):
  tok = imported.tokenizer
  text = "Hello, world! ça va? 3 € — ü"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and len(ids) == len(text) and 0 not in ids
  assert tok.decode(ids) == text
  assert list(tok.encode("a\nb")) == [tok.vocab["a"], 0, tok.vocab["b"]]  # outside the vocabulary: 0, as textgenrnn
  assert tok.decode([0, tok.meta_id, *ids, 0]) == text
  original = json.loads((folder / "textgenrnn_vocab.json").read_text(encoding="utf-8"))
  assert tok.vocab == original
  tok.save(tmp_path / "tokenizer.json")
  saved = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
  assert saved["type"] == "textgenrnn" and saved["meta_token"] == "<s>" and saved["vocab"] == original
  loaded = TextgenrnnTokenizer.load(tmp_path / "tokenizer.json")
  assert loaded.vocab == tok.vocab and loaded.meta_id == tok.meta_id
  np.testing.assert_array_equal(loaded.encode(text), ids)
  (tmp_path / "other.json").write_text(json.dumps({"type": "char", "chars": "ab"}))
  with pytest.raises(DataError, match="not a textgenrnn vocabulary"):
    TextgenrnnTokenizer.load(tmp_path / "other.json")
  with pytest.raises(DataError, match="meta token"):
    TextgenrnnTokenizer({"a": 1})


def _copy(folder, tmp_path):
  for name in (textgenrnn.WEIGHTS, textgenrnn.VOCAB):
    shutil.copy(folder / name, tmp_path / name)
  return h5py.File(tmp_path / textgenrnn.WEIGHTS, "r+")


def test_import_rejects_a_wrong_shape(folder, tmp_path):
  with _copy(folder, tmp_path) as f:
    del f["output/output/kernel:0"]
    f["output/output/kernel:0"] = np.zeros((356, 464), np.float32)
  with pytest.raises(PretrainedError, match=r"output/kernel: shape \(356, 464\), the model wants \(356, 465\)"):
    textgenrnn.import_files(tmp_path)


def test_import_rejects_a_broken_lstm_and_missing_pieces(folder, tmp_path):
  with _copy(folder, tmp_path) as f:
    del f["rnn_2/rnn_2/bias:0"]
    f["rnn_2/rnn_2/bias:0"] = np.zeros((1000,), np.float32)
  with pytest.raises(PretrainedError, match=r"layer rnn_2 is not an LSTM of 128 units.*bias \(1000,\)"):
    textgenrnn.import_files(tmp_path)
  (tmp_path / textgenrnn.WEIGHTS).write_bytes(b"not hdf5")
  with pytest.raises(PretrainedError, match="not a readable Keras weights file"):
    textgenrnn.import_files(tmp_path)
  (tmp_path / textgenrnn.WEIGHTS).unlink()
  with pytest.raises(PretrainedError, match="no textgenrnn_weights.hdf5"):
    textgenrnn.import_files(tmp_path)


def test_plain_keras_lstm_layout_is_read_as_it_is():
  """A Keras LSTM's (4n biases) weights are not re-laid out; a CuDNNLSTM's are (per gate, as Keras converts them)."""
  rng = np.random.default_rng(0)
  kernel, recurrent = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)
  bias = rng.normal(size=(8,)).astype(np.float32)
  plain = textgenrnn._lstm_params("rnn_1", [kernel, recurrent, bias])
  assert all(np.array_equal(a, b) for a, b in zip(plain.values(), (kernel, recurrent, bias)))
  cudnn = textgenrnn._lstm_params("rnn_1", [kernel, recurrent, np.concatenate([bias, bias])])
  np.testing.assert_array_equal(cudnn["input/bias"], 2 * bias)
  # gate 1 (forget): cuDNN multiplies by the gate's flat buffer read as a (n, d_in) matrix
  gate = kernel[:, 2:4]
  np.testing.assert_array_equal(cudnn["input/kernel"][:, 2:4], gate.reshape(-1).reshape(2, 3).T)
  np.testing.assert_array_equal(cudnn["recurrent/kernel"][:, 2:4], recurrent[:, 2:4].T)


def test_missing_h5py_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "h5py", None)
  with pytest.raises(ImportError, match="pip install h5py"):
    textgenrnn.read_keras_weights(tmp_path / "weights.hdf5")


def test_params_run_under_jit_with_the_registry_signature(imported):
  model = textgenrnn.model_from_config(imported.config, mode="eval")
  signature = textgenrnn.example_input(imported.config)
  assert signature == cx.ShapeDtype((1, 40), np.int32)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), signature)[0])
  assert jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(imported.params)


def test_registry_caches_and_reloads(folder, pretrained_cache, ref):
  from combinax.pretrained import registry
  model, params, tok = registry.load("textgenrnn")
  assert isinstance(tok, TextgenrnnTokenizer) and tok.meta_id == 464 and tok.vocab_size == 465
  probs = textgenrnn.probabilities(model, params, np.asarray(ref["windows"]))
  assert np.abs(probs - np.asarray(ref["probabilities"], np.float32)).max() <= 1e-5
