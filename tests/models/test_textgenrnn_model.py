"""TextGenRNN: shapes, parameter paths in every mode, and its stack program against the layers composed by hand."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl
from combinax.models.rnn import TextGenRNN

KEY = jax.random.key(0)
VOCAB, D_EMB, N, B, T = 11, 6, 5, 3, 9


def ids(seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, VOCAB, jnp.int32)


def test_shapes_and_the_same_paths_in_every_mode():
  sig = cx.ShapeDtype((B, T), jnp.int32)
  model = TextGenRNN(VOCAB, D_EMB, N, 2)
  params, state = model.init(KEY, sig)
  logits, new_state = model.apply(params, state, ids())
  assert cx.signature(logits) == model.output_signature(sig) == cx.ShapeDtype((B, VOCAB))
  assert state == new_state == {}
  other = jax.eval_shape(lambda: TextGenRNN(VOCAB, D_EMB, N, 2, mode="eval").init(KEY, sig))
  assert cx.paths(other[0]) == cx.paths(params) and other[1] == {}
  with pytest.raises(cx.LayerError, match="no 'predict' mode"):   # it reads a whole window each call
    TextGenRNN(VOCAB, D_EMB, N, 2, mode="predict")


@pytest.mark.parametrize("n_layers", [1, 3])
def test_paths_and_widths(n_layers):
  model = TextGenRNN(VOCAB, D_EMB, N, n_layers)
  params = jax.eval_shape(lambda: model.init(KEY, cx.ShapeDtype((B, T), jnp.int32))[0])
  assert cx.paths(params) == ["attention/weights", "embedding/embedding", "output/bias", "output/kernel"] + [
      f"rnn_{i}/{leaf}" for i in range(1, n_layers + 1) for leaf in ("input/bias", "input/kernel", "recurrent/kernel")]
  assert params["attention"]["weights"].shape == (D_EMB + n_layers * N,)
  assert params["output"]["kernel"].shape == (D_EMB + n_layers * N, VOCAB)


def test_default_sizes_are_textgenrnns():
  params = jax.eval_shape(lambda: TextGenRNN().init(KEY, cx.ShapeDtype((1, 40), jnp.int32))[0])
  shapes = {path: tuple(leaf.shape) for path, leaf in cx.leaves_with_paths(params)}
  assert shapes["embedding/embedding"] == (465, 100)
  assert shapes["rnn_1/input/kernel"] == (100, 512) and shapes["rnn_2/input/kernel"] == (128, 512)
  assert shapes["attention/weights"] == (356,) and shapes["output/kernel"] == (356, 465)


def test_equals_the_layers_composed_by_hand():
  """Embeddings and both LSTM outputs are concatenated in that order, then pooled and projected."""
  model = TextGenRNN(VOCAB, D_EMB, N, 2, mode="eval")
  x = ids(1)
  params, _ = model.init(KEY, x)
  logits, _ = model.apply(params, {}, x)
  embedded = params["embedding"]["embedding"][x]
  r1, _ = cl.LSTM(N).apply(params["rnn_1"], {}, embedded)
  r2, _ = cl.LSTM(N).apply(params["rnn_2"], {}, r1)
  pooled, _ = cl.AttentionWeightedAverage().apply(params["attention"], {}, jnp.concatenate([embedded, r1, r2], -1))
  expected = pooled @ params["output"]["kernel"] + params["output"]["bias"][None]
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_gin_configurable():
  with gin.unlock_config():
    gin.parse_config(["TextGenRNN.n_units = 7", "TextGenRNN.vocab_size = 9"])
  try:
    model = gin.get_configurable("combinax.models.TextGenRNN")()
    params = jax.eval_shape(lambda: model.init(KEY, cx.ShapeDtype((2, 4), jnp.int32))[0])
    assert params["rnn_1"]["recurrent"]["kernel"].shape == (7, 28) and params["output"]["bias"].shape == (9,)
  finally:
    gin.clear_config()
