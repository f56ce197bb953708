"""RNNLM and GRULM: paths in every mode, eval == predict decoding, causality, dropout, gin, and a short training."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import combinax as cx
from combinax import layers as cl
from combinax.layers.rnn import GRUCell, LSTM
from combinax.models.rnn import GRULM, RNNLM

KEY = jax.random.key(0)
VOCAB, D_MODEL, B, T = 16, 32, 4, 16
TOL = dict(rtol=1e-5, atol=1e-5)

MODELS = {
    "RNNLM": lambda mode: RNNLM(VOCAB, d_model=D_MODEL, mode=mode),
    "RNNLM_3_gru": lambda mode: RNNLM(VOCAB, d_model=D_MODEL, n_layers=3, rnn_cell="gru", mode=mode),
    "GRULM": lambda mode: GRULM(VOCAB, d_model=D_MODEL, n_layers=2, mode=mode),
}


def tokens(seed=0, shape=(B, T)):
  return jax.random.randint(jax.random.key(seed), shape, 1, VOCAB, jnp.int32)


def shift_right(ids):
  return jnp.pad(ids, ((0, 0), (1, 0)))[:, :-1]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_and_the_same_paths_in_every_mode(name):
  sig = cx.ShapeDtype((B, T), jnp.int32)
  paths = {}
  for mode in ("train", "eval", "predict"):
    model = MODELS[name](mode)
    params, state = model.init(KEY, sig)
    paths[mode] = cx.paths(params)
    logits, _ = model.apply(params, state, tokens())
    assert cx.signature(logits) == model.output_signature(sig) == cx.ShapeDtype((B, T, VOCAB))
  assert paths["train"] == paths["eval"] == paths["predict"]


def test_rnnlm_layout():
  params, _ = RNNLM(VOCAB, d_model=D_MODEL, n_layers=3).init(KEY, cx.ShapeDtype((B, T), jnp.int32))
  assert cx.paths(params) == ["Dense_0/bias", "Dense_0/kernel", "Embedding_0/embedding"] + [
      f"LSTM_{i}/{leaf}" for i in range(3) for leaf in ("input/bias", "input/kernel", "recurrent/kernel")]
  assert params["Dense_0"]["kernel"].shape == (D_MODEL, VOCAB)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_equals_predict(name):
  ids = tokens(1)
  params, _ = MODELS[name]("train").init(KEY, ids)
  full, _ = MODELS[name]("eval").apply(params, {}, ids, train=False)

  decoder = MODELS[name]("predict")
  _, state = decoder.init(KEY, ids[:, :1])
  inputs = shift_right(ids)  # in predict mode ShiftRight is the identity: feed the previous token (0 first)
  prefix = 5
  logits, state = decoder.apply(params, state, inputs[:, :prefix])
  pieces = [logits]
  step = jax.jit(lambda state, x: decoder.apply(params, state, x))
  for t in range(prefix, T):
    logits, state = step(state, inputs[:, t:t + 1])
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, **TOL)


@pytest.mark.parametrize("name", ["RNNLM", "GRULM"])
def test_a_future_token_changes_no_earlier_logit(name):
  model = MODELS[name]("eval")
  ids = tokens(2)
  params, state = model.init(KEY, ids)
  k = 9
  changed = ids.at[:, k].set((ids[:, k] + 1) % VOCAB)
  before, _ = model.apply(params, state, ids)
  after, _ = model.apply(params, state, changed)
  np.testing.assert_array_equal(before[:, :k + 1], after[:, :k + 1])  # logits at <= k see tokens < k only
  assert not np.allclose(before[:, k + 1], after[:, k + 1])


def test_dropout_only_when_training():
  ids = tokens(3)
  model = RNNLM(VOCAB, d_model=D_MODEL, dropout=0.5)
  params, state = model.init(KEY, ids)
  plain, _ = model.apply(params, state, ids)
  dropped, _ = model.apply(params, state, ids, rng=jax.random.key(1), train=True)
  assert not np.allclose(plain, dropped)
  with pytest.raises(cx.LayerError, match="needs an rng"):
    model.apply(params, state, ids, train=True)
  # `train` alone decides: a model built in "eval" mode is the same model (it drops when applied with train=True).
  eval_model = RNNLM(VOCAB, d_model=D_MODEL, dropout=0.5, mode="eval")
  np.testing.assert_array_equal(eval_model.apply(params, state, ids, rng=jax.random.key(1), train=True)[0], dropped)
  np.testing.assert_array_equal(eval_model.apply(params, state, ids, rng=jax.random.key(1))[0], plain)


def test_rnn_cell_choices():
  sig = cx.ShapeDtype((B, T), jnp.int32)
  gru_paths = cx.paths(RNNLM(VOCAB, d_model=8, rnn_cell="gru").init(KEY, sig)[0])
  assert gru_paths == cx.paths(RNNLM(VOCAB, d_model=8, rnn_cell=GRUCell).init(KEY, sig)[0])  # Trax passes a cell
  assert "GRU_1/recurrent/bias" in gru_paths
  custom = RNNLM(VOCAB, d_model=8, rnn_cell=lambda n, mode: LSTM(n, mode=mode, forget_bias=0.0))
  assert not np.any(custom.init(KEY, sig)[0]["LSTM_0"]["input"]["bias"])
  with pytest.raises(ValueError, match="unknown rnn_cell"):
    RNNLM(VOCAB, rnn_cell="transformer")
  with pytest.raises(cx.LayerError, match="unknown mode"):
    RNNLM(VOCAB, mode="decode")


def test_gin_configures_the_models():
  try:
    gin.parse_config(["combinax.models.RNNLM.d_model = 8", "combinax.models.RNNLM.n_layers = 1",
                      "combinax.models.GRULM.vocab_size = 10"])
    params, _ = RNNLM(VOCAB).init(KEY, cx.ShapeDtype((B, T), jnp.int32))
    assert params["Embedding_0"]["embedding"].shape == (VOCAB, 8) and "LSTM_1" not in params
    assert GRULM(d_model=4).output_signature(cx.ShapeDtype((1, 3), jnp.int32)).shape == (1, 3, 10)
  finally:
    gin.clear_config()


def pattern_batch(step):
  """Sequences that repeat a period-4 pattern of ids from a random offset: learnable after the first tokens."""
  offsets = jax.random.randint(jax.random.fold_in(KEY, step), (B, 1), 0, 4)
  pattern = jnp.array([3, 7, 11, 5], jnp.int32)
  return pattern[(jnp.arange(T)[None, :] + offsets) % 4]


@pytest.mark.parametrize("name", ["RNNLM", "GRULM"])
def test_training_lowers_the_loss(name):
  model = MODELS[name]("train")
  loss_layer = cl.WeightedCategoryCrossEntropy()
  params, state = model.init(KEY, cx.ShapeDtype((B, T), jnp.int32))
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)

  def loss_fn(params, ids, rng):
    logits, _ = model.apply(params, state, ids, rng=rng, train=True)
    return loss_layer.apply({}, {}, (logits, ids, jnp.ones(ids.shape)))[0]

  @jax.jit
  def train_step(params, opt_state, step):
    ids = pattern_batch(step)
    loss, grads = jax.value_and_grad(loss_fn)(params, ids, jax.random.fold_in(KEY, step))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for step in range(40):
    params, opt_state, loss = train_step(params, opt_state, step)
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.5 * losses[0], losses
