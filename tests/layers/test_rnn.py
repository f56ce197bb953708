"""Recurrent layers: exact math against a NumPy reference, parameter layout, predict mode, shapes, jit, grad, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl
from combinax.layers.rnn import GRU, LSTM, GRUCell, LSTMCell

KEY = jax.random.key(0)
B, T, D, N = 3, 7, 5, 4
TOL = dict(rtol=1e-5, atol=1e-5)


# --- A NumPy reference, written gate by gate from the textbook equations (float64) -----------------------------------

def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def block(matrix, k):
  """Keras keeps the gates side by side on the last axis; block k of them."""
  return matrix[..., k * N:(k + 1) * N]


def np_lstm_step(x, c, h, kernel, bias, recurrent):
  """Keras order i, f, g (candidate), o."""
  pre = [x @ block(kernel, k) + block(bias, k) + h @ block(recurrent, k) for k in range(4)]
  input_gate, forget_gate, output_gate = sigmoid(pre[0]), sigmoid(pre[1]), sigmoid(pre[3])
  candidate = np.tanh(pre[2])
  c = forget_gate * c + input_gate * candidate
  return output_gate * np.tanh(c), c


def np_gru_step(x, h, kernel, bias, recurrent, recurrent_bias):
  """Keras order z (update), r (reset), h (candidate); reset applied after the recurrent matmul (PyTorch's form)."""
  x_part = [x @ block(kernel, k) + block(bias, k) for k in range(3)]
  h_part = [h @ block(recurrent, k) + block(recurrent_bias, k) for k in range(3)]
  update = sigmoid(x_part[0] + h_part[0])
  reset = sigmoid(x_part[1] + h_part[1])
  new = np.tanh(x_part[2] + reset * h_part[2])
  return (1.0 - update) * new + update * h


def np_lstm(xs, *weights):
  c = h = np.zeros((xs.shape[0], N))
  hs = []
  for t in range(xs.shape[1]):
    h, c = np_lstm_step(xs[:, t], c, h, *weights)
    hs.append(h)
  return np.stack(hs, axis=1), c, h


def np_gru(xs, *weights):
  h = np.zeros((xs.shape[0], N))
  hs = []
  for t in range(xs.shape[1]):
    h = np_gru_step(xs[:, t], h, *weights)
    hs.append(h)
  return np.stack(hs, axis=1), h


def random_weights(gates, with_recurrent_bias, seed=0):
  rng = np.random.default_rng(seed)
  weights = [rng.normal(size=(D, gates * N)) * 0.5, rng.normal(size=(gates * N,)) * 0.5,
             rng.normal(size=(N, gates * N)) * 0.5]
  if with_recurrent_bias:
    weights.append(rng.normal(size=(gates * N,)) * 0.5)
  return weights


def as_params(weights):
  """Our layout, the same for cells and sequence layers: input/{kernel, bias}, recurrent/{kernel[, bias]}."""
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  recurrent = {"kernel": f32(weights[2])}
  if len(weights) == 4:
    recurrent["bias"] = f32(weights[3])
  return {"input": {"kernel": f32(weights[0]), "bias": f32(weights[1])}, "recurrent": recurrent}


def normal(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape)


# --- Math ------------------------------------------------------------------------------------------------------------

def test_lstm_cell_matches_numpy():
  x, c, h = normal(1, B, D), normal(2, B, N), normal(3, B, N)
  weights = random_weights(4, False)
  cell = LSTMCell(N)
  _, state = cell.init(KEY, (x, c, h))
  (h1, c1, h1_again), _ = cell.apply(as_params(weights), state,
                                     tuple(jnp.asarray(a, jnp.float32) for a in (x, c, h)))
  want_h, want_c = np_lstm_step(x, c, h, *weights)
  np.testing.assert_allclose(h1, want_h, **TOL)
  np.testing.assert_allclose(c1, want_c, **TOL)
  np.testing.assert_array_equal(h1, h1_again)


def test_gru_cell_matches_numpy():
  x, h = normal(1, B, D), normal(2, B, N)
  weights = random_weights(3, True)
  cell = GRUCell(N)
  _, state = cell.init(KEY, (x, h))
  (h1, carry), _ = cell.apply(as_params(weights), state, (jnp.asarray(x, jnp.float32),
                                                                      jnp.asarray(h, jnp.float32)))
  np.testing.assert_allclose(h1, np_gru_step(x, h, *weights), **TOL)
  np.testing.assert_array_equal(h1, carry)


def test_lstm_sequence_matches_numpy():
  xs = normal(4, B, T, D)
  weights = random_weights(4, False)
  lstm = LSTM(N)
  _, state = lstm.init(KEY, cx.ShapeDtype((B, T, D)))
  hs, _ = lstm.apply(as_params(weights), state, jnp.asarray(xs, jnp.float32))
  np.testing.assert_allclose(hs, np_lstm(xs, *weights)[0], **TOL)


def test_gru_sequence_matches_numpy():
  xs = normal(5, B, T, D)
  weights = random_weights(3, True)
  gru = GRU(N)
  _, state = gru.init(KEY, cx.ShapeDtype((B, T, D)))
  hs, _ = gru.apply(as_params(weights), state, jnp.asarray(xs, jnp.float32))
  np.testing.assert_allclose(hs, np_gru(xs, *weights)[0], **TOL)


@pytest.mark.parametrize("cell, layer, n_carry", [(LSTMCell, LSTM, 2), (GRUCell, GRU, 1)])
def test_scanning_the_cell_gives_the_sequence_layer(cell, layer, n_carry):
  xs = jnp.asarray(normal(6, B, T, D), jnp.float32)
  sequence = layer(N)
  params, state = sequence.init(KEY, xs)
  zeros = (jnp.zeros((B, N)),) * n_carry
  scanned = cl.Scan(cell(N), axis=1, n_carry=n_carry)
  outputs, _ = scanned.apply({f"{cell.__name__}_0": params}, {}, (xs,) + zeros)  # the cell takes the same params
  np.testing.assert_allclose(outputs[0], sequence.apply(params, state, xs)[0], **TOL)


# --- Parameters ------------------------------------------------------------------------------------------------------

def test_param_layout_and_forget_bias():
  params, _ = cl.Serial(LSTM(N), GRU(N)).init(KEY, cx.ShapeDtype((B, T, D)))
  shapes = {path: leaf.shape for path, leaf in cx.leaves_with_paths(params)}
  assert shapes == {
      "LSTM_0/input/kernel": (D, 4 * N), "LSTM_0/input/bias": (4 * N,), "LSTM_0/recurrent/kernel": (N, 4 * N),
      "GRU_0/input/kernel": (N, 3 * N), "GRU_0/input/bias": (3 * N,), "GRU_0/recurrent/kernel": (N, 3 * N),
      "GRU_0/recurrent/bias": (3 * N,)}
  bias = np.asarray(params["LSTM_0"]["input"]["bias"])
  np.testing.assert_array_equal(bias, np.concatenate([np.zeros(N), np.ones(N), np.zeros(2 * N)]))  # i f g o
  assert not np.any(LSTM(N, forget_bias=0.0).init(KEY, cx.ShapeDtype((B, T, D)))[0]["input"]["bias"])
  recurrent = np.asarray(params["LSTM_0"]["recurrent"]["kernel"])
  np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(N), atol=1e-5)  # orthogonal rows by default


def test_paths_are_the_same_in_every_mode():
  def paths(mode):
    model = cl.Serial(LSTM(N, mode=mode), GRU(N, mode=mode), LSTM(N, mode=mode, name="top"))
    return cx.paths(model.init(KEY, cx.ShapeDtype((B, T, D)))[0])
  assert paths("train") == paths("eval") == paths("predict")
  assert "top/recurrent/kernel" in paths("train")


def test_named_and_shared_layers():
  lstm = LSTM(N)
  params, _ = cl.Serial(lstm, lstm).init(KEY, cx.ShapeDtype((B, T, N)))
  assert cx.paths(params) == ["LSTM_0/input/bias", "LSTM_0/input/kernel", "LSTM_0/recurrent/kernel"]


# --- Predict mode ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer, n_carry", [(LSTM, 2), (GRU, 1)])
def test_predict_mode_continues_from_its_carries(layer, n_carry):
  xs = jnp.asarray(normal(7, B, T, D), jnp.float32)
  params, _ = layer(N).init(KEY, xs)
  full, _ = layer(N, mode="eval").apply(params, {}, xs)
  decoder = layer(N, mode="predict")
  _, state = decoder.init(KEY, xs[:, :1])
  assert len(state["Scan_0"]["carry"]) == n_carry and not np.any(state["Scan_0"]["carry"][0])
  pieces = []
  for start, stop in [(0, 3), (3, 4), (4, 5), (5, 7)]:  # a prefix, then steps
    ys, state = decoder.apply(params, state, xs[:, start:stop])
    pieces.append(ys)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, **TOL)
  np.testing.assert_allclose(state["Scan_0"]["carry"][-1], full[:, -1], **TOL)  # h is the last carry


# --- Contract: shapes, jit, grad -------------------------------------------------------------------------------------

S = cx.ShapeDtype
CASES = {
    "LSTMCell": (lambda: LSTMCell(N), (S((B, D)), S((B, N)), S((B, N)))),
    "GRUCell": (lambda: GRUCell(N), (S((B, D)), S((B, N)))),
    "LSTM": (lambda: LSTM(N), S((B, T, D))),
    "GRU": (lambda: GRU(N), S((B, T, D))),
    "LSTM_predict": (lambda: LSTM(N, mode="predict"), S((B, 2, D))),  # 2 steps: h0 = 0 gives no recurrent grad
    "GRU_predict": (lambda: GRU(N, mode="predict"), S((B, 2, D))),
    "Scan_LSTMCell": (lambda: cl.Scan(LSTMCell(N), axis=1, n_carry=2), (S((B, T, D)), S((B, N)), S((B, N)))),
}


def make(sig, seed=0):
  if isinstance(sig, tuple):
    return tuple(make(s, seed + i) for i, s in enumerate(sig))
  return jax.random.normal(jax.random.key(seed), sig.shape, sig.dtype)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_jit_and_grad(name):
  factory, sig = CASES[name]
  layer = factory()
  params, state = layer.init(KEY, sig)
  x = make(sig)
  outputs, new_state = layer.apply(params, state, x)
  assert cx.signature(outputs) == layer.output_signature(sig)
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)

  jitted, _ = jax.jit(lambda p, s, x: layer.apply(p, s, x))(params, state, x)
  for a, b in zip(jax.tree_util.tree_leaves(outputs), jax.tree_util.tree_leaves(jitted)):
    np.testing.assert_allclose(a, b, **TOL)

  def loss(p, x):
    out = layer.apply(p, state, x)[0]
    return sum(jnp.sum(jnp.sin(y)) for y in jax.tree_util.tree_leaves(out))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  assert jax.tree_util.tree_structure(grads[0]) == jax.tree_util.tree_structure(params)
  assert all(np.all(np.isfinite(g)) and np.any(g) for g in jax.tree_util.tree_leaves(grads))


def test_printing():
  assert str(LSTM(N)).splitlines()[0] == "LSTM[" and "recurrent_in3_out3" in str(LSTM(N))


# --- Errors ----------------------------------------------------------------------------------------------------------

def test_wrong_rank_names_the_layer():
  model = cl.Serial(cl.Dense(N), LSTM(N))
  with pytest.raises(cx.LayerError) as info:
    model.init(KEY, cx.ShapeDtype((B, D)))
  assert info.value.path == "Serial/LSTM[1]"
  assert "(batch, length, features)" in str(info.value) and f"({B}, {N}) float32" in str(info.value)
  params, state = model.init(KEY, cx.ShapeDtype((B, T, D)))
  with pytest.raises(cx.LayerError, match="Serial/LSTM"):
    model.apply(params, state, jnp.ones((B, D)))


def test_token_ids_into_a_gru_are_refused():
  with pytest.raises(cx.LayerError, match="embed token ids first") as info:
    GRU(N).init(KEY, cx.ShapeDtype((B, T, D), jnp.int32))
  assert info.value.path == "GRU"


def test_cell_carries_of_the_wrong_size():
  with pytest.raises(cx.LayerError, match="carries must be") as info:
    LSTMCell(N).init(KEY, (S((B, D)), S((B, N + 1)), S((B, N))))
  assert info.value.path == "LSTMCell/recurrent[1]"
  assert f"({B}, {N + 1}) float32" in str(info.value)


def test_lstm_recurrence_gradient_is_autodiff_of_the_scanned_cell():
  from jax.test_util import check_grads
  from combinax.layers.rnn import _lstm_forward, lstm_recurrence
  k = jax.random.split(jax.random.key(7), 4)
  projected, kernel = jax.random.normal(k[0], (3, 6, 16)), 0.5 * jax.random.normal(k[1], (4, 16))
  c0, h0 = jax.random.normal(k[2], (3, 4)), jax.random.normal(k[3], (3, 4))
  weights = [jax.random.normal(jax.random.key(i), s) for i, s in enumerate([(3, 6, 4), (3, 4), (3, 4)])]

  def loss(recurrence, *args):   # uses every output: the sequence and both final carries
    return sum(jnp.sum(w * y) for w, y in zip(weights, recurrence(*args)))

  def by_autodiff(projected, kernel, c0, h0):
    hs, cs, _ = _lstm_forward(projected, kernel, c0, h0)
    return hs, cs[-1], hs[:, -1]

  args = (projected, kernel, c0, h0)
  want = jax.value_and_grad(lambda *a: loss(by_autodiff, *a), argnums=(0, 1, 2, 3))(*args)
  got = jax.value_and_grad(lambda *a: loss(lstm_recurrence, *a), argnums=(0, 1, 2, 3))(*args)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for a, b in zip(got[1], want[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  check_grads(lambda *a: loss(lstm_recurrence, *a), args, order=1, modes=["rev"], eps=1e-2, atol=3e-2, rtol=3e-2)
