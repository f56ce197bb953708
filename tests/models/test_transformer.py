"""Transformer models: eval == predict, causality, padding, options, and training on tiny synthetic tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import combinax as cx
from combinax import layers as cl
from combinax.models.transformer import Transformer, TransformerEncoder, TransformerLM

KEY = jax.random.key(0)
SMALL = dict(d_model=16, d_ff=32, n_heads=4, dropout=0.0, max_len=16)


def ids(batch, length, vocab=20, seed=0, low=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), low, vocab, jnp.int32)


def shifted(tokens, start=0):
  return jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=start)[:, :-1]


def decode_in_chunks(model, params, chunks, inputs=None):
  """Logits of a predict-mode model fed the given chunks one call after another."""
  first = chunks[0] if inputs is None else (inputs, chunks[0])
  _, state = model.init(KEY, first)
  pieces = []
  for chunk in chunks:
    logits, state = model.apply(params, state, chunk if inputs is None else (inputs, chunk))
    pieces.append(logits)
  return jnp.concatenate(pieces, axis=1)


LM_OPTIONS = {
    "default": dict(n_layers=2),
    "llama_style": dict(n_layers=3, n_kv_heads=2, positions="rotary", norm="rms", gated_ff=True,
                        ff_activation=cl.Silu, use_bias=False, tie_embeddings=True),
    "gptj_style_unrolled": dict(n_layers=2, positions="rotary_interleaved", scan_layers=False),
    "learned_positions_post_norm": dict(n_layers=2, positions="learned", pre_norm=False, ff_activation=cl.Gelu),
}


@pytest.mark.parametrize("options", LM_OPTIONS.values(), ids=LM_OPTIONS.keys())
def test_lm_eval_equals_predict(options):
  tokens = ids(2, 9)
  params, state = TransformerLM(20, **SMALL, **options).init(KEY, tokens)
  full = TransformerLM(20, **SMALL, **options).apply(params, state, tokens)[0]
  decoder = TransformerLM(20, **SMALL, **options, mode="predict")
  fed = shifted(tokens)
  chunks = [fed[:, :4]] + [fed[:, t:t + 1] for t in range(4, 9)]
  np.testing.assert_allclose(decode_in_chunks(decoder, params, chunks), full, rtol=1e-4, atol=1e-5)


def test_lm_is_causal():
  model = TransformerLM(20, n_layers=2, **SMALL)
  tokens = ids(1, 8)
  params, state = model.init(KEY, tokens)
  logits = model.apply(params, state, tokens)[0]
  changed = model.apply(params, state, tokens.at[:, 5].set(3))[0]
  np.testing.assert_allclose(logits[:, :6], changed[:, :6], rtol=1e-5, atol=1e-6)  # position 5 sees tokens < 5
  assert not np.allclose(logits[:, 6:], changed[:, 6:])


def test_lm_paths_are_the_same_in_every_mode_and_readable():
  tokens = cx.ShapeDtype((1, 4), jnp.int32)
  train_params, _ = TransformerLM(20, n_layers=2, **SMALL).init(KEY, tokens)
  predict_params, state = TransformerLM(20, n_layers=2, **SMALL, mode="predict").init(KEY, tokens)
  assert cx.paths(train_params) == cx.paths(predict_params)
  assert "blocks/attention/q/kernel" in cx.paths(train_params)
  assert train_params["blocks"]["attention"]["q"]["kernel"].shape == (2, 16, 16)
  assert cx.paths(state) == ["blocks/attention/DotProductAttention_0/index", "blocks/attention/DotProductAttention_0/k",
                             "blocks/attention/DotProductAttention_0/v", "positions/index"]


@pytest.mark.parametrize("output_vocab", [None, 24], ids=["shared_vocab", "separate_vocab"])
def test_encoder_decoder_eval_equals_predict(output_vocab):
  source, target = ids(2, 7), ids(2, 6, vocab=20)
  kw = dict(d_model=16, d_ff=32, n_heads=4, dropout=0.0, max_len=16, n_encoder_layers=2, n_decoder_layers=2)
  params, state = Transformer(20, output_vocab, **kw).init(KEY, (source, target))
  if output_vocab is None:
    assert "decoder/embed/embedding" not in cx.paths(params)  # one embedding, stored once, used by both
  else:
    assert "decoder/embed/embedding" in cx.paths(params)
  full = Transformer(20, output_vocab, **kw).apply(params, state, (source, target))[0]
  fed = shifted(target)
  chunks = [fed[:, :2]] + [fed[:, t:t + 1] for t in range(2, 6)]
  decoded = decode_in_chunks(Transformer(20, output_vocab, **kw, mode="predict"), params, chunks, inputs=source)
  np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-5)


def test_source_padding_changes_nothing():
  model = Transformer(20, d_model=16, d_ff=32, n_heads=4, dropout=0.0, n_encoder_layers=1, n_decoder_layers=1)
  source, target = ids(2, 5), ids(2, 4)
  params, state = model.init(KEY, (source, target))
  padded = jnp.pad(source, ((0, 0), (0, 3)))
  np.testing.assert_allclose(model.apply(params, state, (padded, target))[0],
                             model.apply(params, state, (source, target))[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_encoder_padding_changes_no_other_output(pool):
  kw = dict(d_model=16, d_ff=32, n_heads=4, dropout=0.0, n_layers=2, pool=pool)
  tokens = ids(2, 5)
  padded = jnp.pad(tokens, ((0, 0), (0, 3)))
  classifier = TransformerEncoder(20, n_classes=3, **kw)
  params, state = classifier.init(KEY, tokens)
  np.testing.assert_allclose(classifier.apply(params, state, padded)[0], classifier.apply(params, state, tokens)[0],
                             rtol=1e-5, atol=1e-5)
  sequence = TransformerEncoder(20, n_classes=None, **kw)
  seq_params, _ = sequence.init(KEY, tokens)
  np.testing.assert_allclose(sequence.apply(seq_params, {}, padded)[0][:, :5], sequence.apply(seq_params, {}, tokens)[0],
                             rtol=1e-5, atol=1e-5)


def test_bert_style_encoder_options():
  model = TransformerEncoder(30, n_classes=2, d_model=16, d_ff=32, n_layers=2, n_heads=4, positions="learned",
                             max_len=8, pre_norm=False, embed_norm=True, type_vocab_size=2, ff_activation=cl.Gelu,
                             norm_epsilon=1e-12, pool="cls")
  tokens, types = ids(2, 6, vocab=30), jnp.zeros((2, 6), jnp.int32).at[:, 3:].set(1)
  params, state = model.init(KEY, (tokens, types))
  top = sorted({p.split("/")[0] for p in cx.paths(params)})
  assert top == ["blocks", "classifier", "embed", "embed_norm", "positions", "token_type_embed"]
  logits = model.apply(params, state, (tokens, types))[0]
  other = model.apply(params, state, (tokens, jnp.zeros_like(types)))[0]
  assert logits.shape == (2, 2) and not np.allclose(logits, other)


def _train(model, batches, loss_inputs, steps, lr=3e-3):
  """Adam on a fixed stream of batches; returns the losses."""
  params, state = model.init(KEY, batches(0)[0])
  optimizer = optax.adam(lr)
  opt_state = optimizer.init(params)
  loss_layer = cl.WeightedCategoryCrossEntropy()

  @jax.jit
  def step(params, opt_state, inputs, targets, rng):
    def loss_fn(params):
      logits, _ = model.apply(params, state, inputs, rng=rng, train=True)
      return loss_layer.apply({}, {}, (logits, targets, jnp.ones(targets.shape)))[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(steps):
    inputs, targets = batches(i)
    params, opt_state, loss = step(params, opt_state, inputs, targets, jax.random.key(i))
    losses.append(float(loss))
  return losses


def test_lm_learns_a_repeated_pattern():
  def batches(i):
    start = jax.random.randint(jax.random.key(i), (8, 1), 0, 4)
    tokens = (start + jnp.arange(12)[None, :]) % 4 + 1          # 1 2 3 4 1 2 3 4 ... from a random phase
    return tokens.astype(jnp.int32), tokens.astype(jnp.int32)
  losses = _train(TransformerLM(8, n_layers=2, d_model=16, d_ff=32, n_heads=2, dropout=0.1, max_len=16),
                  batches, None, 60)
  assert losses[-1] < 0.3 * losses[0]


def test_encoder_decoder_learns_to_reverse():
  def batches(i):
    source = jax.random.randint(jax.random.key(i), (16, 5), 1, 8).astype(jnp.int32)
    target = source[:, ::-1]
    return (source, target), target
  model = Transformer(8, d_model=32, d_ff=64, n_encoder_layers=1, n_decoder_layers=1, n_heads=4, dropout=0.0)
  losses = _train(model, batches, None, 120, lr=5e-3)
  assert losses[-1] < 0.3 * losses[0]


def test_encoder_learns_a_classification():
  def batches(i):
    tokens = jax.random.randint(jax.random.key(i), (16, 6), 1, 10).astype(jnp.int32)
    return tokens, jnp.any(tokens == 3, axis=1).astype(jnp.int32)  # does token 3 occur?
  model = TransformerEncoder(10, n_classes=2, d_model=16, d_ff=32, n_layers=1, n_heads=2, dropout=0.0)
  losses = _train(model, batches, None, 80, lr=1e-2)
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_lstm_seq2seq_attention_eval_equals_predict_and_learns_to_copy():
  from combinax.models.rnn import LSTMSeq2SeqAttn
  kw = dict(d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_attention_heads=2)
  source, target = ids(2, 6, vocab=10), ids(2, 5, vocab=10, seed=3)
  padded_source = source.at[:, 4:].set(0)
  params, state = LSTMSeq2SeqAttn(10, 10, **kw).init(KEY, (padded_source, target))
  assert "attention/q/kernel" in cx.paths(params) and "encoder/LSTM_0/input/kernel" in cx.paths(params)
  full = LSTMSeq2SeqAttn(10, 10, **kw).apply(params, state, (padded_source, target))[0]
  fed = shifted(target)
  decoded = decode_in_chunks(LSTMSeq2SeqAttn(10, 10, **kw, mode="predict"), params,
                             [fed[:, :2], fed[:, 2:3], fed[:, 3:]], inputs=padded_source)
  np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-5)

  def batches(i):
    source = jax.random.randint(jax.random.key(i), (16, 5), 1, 8).astype(jnp.int32)
    return (source, source), source
  losses = _train(LSTMSeq2SeqAttn(8, 8, d_model=32, n_encoder_layers=1, n_decoder_layers=1), batches, None, 80,
                  lr=1e-2)
  assert losses[-1] < 0.3 * losses[0]


def test_models_are_gin_configurable():
  import gin
  gin.clear_config()
  try:
    gin.parse_config("""
        TransformerLM.d_model = 8
        TransformerLM.d_ff = 16
        TransformerLM.n_heads = 2
        TransformerLM.n_layers = 3
        TransformerLM.ff_activation = @Gelu
        TransformerLM.positions = "rotary"
        Dense.use_bias = False
    """)
    model = TransformerLM(12)
    params, _ = model.init(KEY, cx.ShapeDtype((1, 4), jnp.int32))
    assert params["blocks"]["attention"]["q"]["kernel"].shape == (3, 8, 8)
    assert "Gelu" in str(model) and "Relu" not in str(model)
    assert "bias" not in params["logits"]   # a layer's own binding reaches the layers inside models
    assert model.options.positions == "rotary" and "positions" not in params   # every option binds by name
    operative = gin.operative_config_str()   # and the operative config lists the options in force
    assert "TransformerLM.positions = 'rotary'" in operative and "TransformerLM.gated_ff = False" in operative
  finally:
    gin.clear_config()


@pytest.mark.parametrize("options, message", [
    (dict(n_heads=3), "TransformerOptions.n_heads: expected a divisor of d_model=16, got 3"),
    (dict(n_kv_heads=3), "TransformerOptions.n_kv_heads: expected None or a divisor of n_heads=4, got 3"),
    (dict(dropout=1.0), r"TransformerOptions.dropout: expected a rate in \[0, 1\), got 1.0"),
    (dict(positions="alibi"), "TransformerOptions.positions: expected one of .*'rotary_interleaved'.*got 'alibi'"),
    (dict(n_heads=16, positions="rotary"), "positions without rotation for the odd head size 1, got 'rotary'"),
    (dict(norm="batch"), r"TransformerOptions.norm: expected one of \('layer', 'rms'\), got 'batch'"),
    (dict(remat="all"), "TransformerOptions.remat: expected one of .*got 'all'"),
    (dict(d_ff=0), "TransformerOptions.d_ff: expected a positive int, got 0"),
    (dict(ff_activation="gelu"), "TransformerOptions.ff_activation: expected a function giving a layer"),
])
def test_options_are_checked_once_naming_the_field(options, message):
  for model in (TransformerLM, TransformerEncoder, Transformer):
    with pytest.raises(ValueError, match=message):
      model(20, **{**dict(d_model=16, d_ff=32, n_heads=4), **options})


def test_options_are_frozen_keyword_only_and_shown_by_str():
  from combinax.models import TransformerOptions
  options = TransformerOptions(d_model=16, d_ff=32, n_heads=4)
  with pytest.raises(AttributeError):
    options.d_model = 32
  with pytest.raises(TypeError):
    TransformerLM(20, 16, 32, 2)        # past d_ff, arguments are named
  model = TransformerLM(20, d_model=16, d_ff=32, n_layers=1, n_heads=4, n_kv_heads=2, ff_activation=cl.Gelu,
                        tie_embeddings=True)
  assert model.options == TransformerOptions(d_model=16, d_ff=32, n_heads=4, n_kv_heads=2, ff_activation=cl.Gelu)
  assert str(model).splitlines()[0] == "TransformerLM(d_model=16, d_ff=32, n_heads=4, n_kv_heads=2, ff_activation=Gelu)["
  encoder = TransformerEncoder(20, None, 16, d_ff=32, n_layers=1, n_heads=4, pre_norm=False)
  lines = [line.strip() for line in str(encoder).splitlines()]
  assert lines[0] == "TransformerEncoder(d_model=16, d_ff=32, n_heads=4, pre_norm=False)["
  # Post-norm blocks read as BERT's: the residual sum (ending in its Dropout), then the norm.
  assert lines[9:11] == ["Residual_in2_out2[", "attention_in2_out2["]
  assert lines[lines.index("attention_norm") - 2:lines.index("attention_norm")] == ["Dropout", "]"]

