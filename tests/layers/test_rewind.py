"""Rewinding decoding state is the layers' own contract: each stateful layer takes its state back to an earlier
position exactly (a KV cache up to its masked tail), and a layer that cannot (an RNN's carry) says so."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import decoding
from combinax import layers as cl
from combinax.models.rnn import RNNLM
from combinax.models.transformer import Transformer, TransformerLM

KEY = jax.random.key(0)
N = 6   # positions decoded before rewinding
SOURCE = jax.random.randint(jax.random.key(7), (2, 5), 1, 12, jnp.int32)


def _floats(length):
  return jax.random.normal(jax.random.key(3), (2, length, 8))


def _ids(length):
  return jax.random.randint(jax.random.key(4), (2, length), 1, 12, jnp.int32)


def _shared_across_scopes():
  shared = cl.PositionalEncoding(mode="predict")
  return cl.Serial(cl.Serial(shared, name="a"), cl.Serial(shared, name="b"))


LM = dict(d_model=8, d_ff=16, n_layers=2, n_heads=2, dropout=0.0, max_len=16, mode="predict")
# name: (a predict-mode layer or model, its first N positions as one array, how to feed a span of them)
CASES = {
    "CausalAttention": (lambda: cl.CausalAttention(8, n_heads=2, max_len=16, mode="predict"), _floats, None),
    "CausalAttention, rotary": (lambda: cl.CausalAttention(8, n_heads=2, max_len=16, rotary="half", mode="predict"),
                                _floats, None),
    "PositionalEncoding": (lambda: cl.PositionalEncoding(mode="predict"), _floats, None),
    "LearnedPositionalEncoding": (lambda: cl.LearnedPositionalEncoding(16, mode="predict"), _floats, None),
    "ShiftRight": (lambda: cl.ShiftRight(mode="predict"), _ids, None),
    "BatchNorm beside a cache": (lambda: cl.Serial(cl.BatchNorm(), cl.PositionalEncoding(mode="predict")), _floats,
                                 None),
    "Parallel": (lambda: cl.Parallel(cl.PositionalEncoding(mode="predict"),
                                     cl.LearnedPositionalEncoding(16, mode="predict")),
                 lambda n: (_floats(n), _floats(n) + 1), lambda x, a, b: (x[0][:, a:b], x[1][:, a:b])),
    "a layer shared across scopes": (_shared_across_scopes, _floats, None),
    "TransformerLM, stacked blocks (Repeat)": (lambda: TransformerLM(12, **LM), _ids, None),
    "TransformerLM, unrolled, learned positions": (
        lambda: TransformerLM(12, **LM, scan_layers=False, positions="learned"), _ids, None),
    "Transformer, encoder in a Cache": (
        lambda: Transformer(12, d_model=8, d_ff=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, dropout=0.0,
                            max_len=16, mode="predict"),
        _ids, lambda x, a, b: (SOURCE, x[:, a:b])),
}


def _span(case, x, start, stop):
  slicer = CASES[case][2] or (lambda x, a, b: x[:, a:b])
  return slicer(x, start, stop)


def _decoded(case, layer, params, state, x, start, stop, chunks):
  """The state after feeding positions start..stop of `x` in `chunks` calls, and every call's outputs."""
  outputs, bounds = [], np.linspace(start, stop, chunks + 1).astype(int)
  for a, b in zip(bounds[:-1], bounds[1:]):
    y, state = layer.apply(params, state, _span(case, x, a, b))
    outputs.append(y)
  return state, outputs


def _assert_same_state(rewound, expected, masked_from=None):
  """Leaf for leaf equal, but for any KV cache entries at positions >= masked_from, which attention masks."""
  def check(path, a, b):
    if masked_from is not None and getattr(path[-1], "key", None) in ("k", "v"):   # (..., max_len, heads, d_head)
      a, b = a[..., :masked_from, :, :], b[..., :masked_from, :, :]
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  assert jax.tree_util.tree_structure(rewound) == jax.tree_util.tree_structure(expected)
  jax.tree_util.tree_map_with_path(check, rewound, expected)


@pytest.mark.parametrize("index", [0, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_rewinding_restores_the_state_after_that_many_positions_and_decoding_goes_on_identically(case, index):
  make, inputs, _ = CASES[case]
  layer, x = make(), inputs(N)
  assert layer.rewindable and decoding.rewind_blocker(layer) is None
  params, init_state = layer.init(KEY, _span(case, x, 0, 1))
  at_index, _ = _decoded(case, layer, params, init_state, x, 0, index, 1) if index else (init_state, [])
  after_n, _ = _decoded(case, layer, params, at_index, x, index, N, 2)
  rewound = layer.rewind(after_n, index)
  _assert_same_state(rewound, at_index, index)
  _assert_same_state(jax.jit(layer.rewind)(after_n, jnp.int32(index)), at_index, index)   # a traced index
  # From there, decoding the same positions again gives what it gave the first time, state included.
  again, outputs_again = _decoded(case, layer, params, rewound, x, index, N, 2)
  first, outputs_first = _decoded(case, layer, params, at_index, x, index, N, 2)
  _assert_same_state(again, first)
  for a, b in zip(jax.tree_util.tree_leaves(outputs_again), jax.tree_util.tree_leaves(outputs_first)):
    np.testing.assert_array_equal(a, b)


def _first_positions(state, like):
  """`state` with each KV cache (..., max_len, heads, d_head) cut to the length of its counterpart in `like`."""
  def cut(path, a, b):
    return a[..., :b.shape[-3], :, :] if getattr(path[-1], "key", None) in ("k", "v") else a
  return jax.tree_util.tree_map_with_path(cut, state, like)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_shortened_state_holds_its_first_positions_and_decodes_them_as_the_whole_one(case):
  make, inputs, _ = CASES[case]
  layer, x = make(), inputs(N)
  params, whole = layer.init(KEY, _span(case, x, 0, 1))
  short = layer.shorten(whole, N)
  for path, leaf in jax.tree_util.tree_flatten_with_path(short)[0]:
    assert getattr(path[-1], "key", None) not in ("k", "v") or leaf.shape[-3] == N, jax.tree_util.keystr(path)
  _assert_same_state(short, _first_positions(whole, short))
  # Decoded, equal up to float32 rounding: the attention's dots sum over fewer masked (zero-weight) positions, in
  # another order (4e-6 relative, measured).
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  after_short, outputs_short = _decoded(case, layer, params, short, x, 0, N, 2)
  after_whole, outputs_whole = _decoded(case, layer, params, whole, x, 0, N, 2)
  jax.tree_util.tree_map(close, after_short, _first_positions(after_whole, after_short))
  jax.tree_util.tree_map(close, outputs_short, outputs_whole)


def test_a_cache_is_not_lengthened_and_the_error_names_it():
  model = TransformerLM(12, **LM)
  _, state = model.init(KEY, _ids(1))
  with pytest.raises(cl.LayerError, match=r"(?s)blocks.*DotProductAttention.*can only be shortened.*"
                                          r"expected: 1 <= positions <= 16\n  actual: +17"):
    model.shorten(state, 17)


def test_an_rnn_model_is_named_as_not_rewindable():
  model = RNNLM(12, d_model=8, n_layers=1, mode="predict")
  assert not model.rewindable
  blocker = decoding.rewind_blocker(model)
  assert isinstance(blocker, cl.Scan) and blocker.mode == "predict"
  _, state = model.init(KEY, _ids(1))
  with pytest.raises(cl.LayerError, match=r"Scan.*: a recurrent carry cannot be rewound to an earlier position"):
    model.rewind(state, 0)
  for rnn in (cl.LSTM, cl.GRU):
    assert not rnn(4, mode="predict").rewindable
    assert rnn(4).rewindable   # trained on whole sequences, it keeps no decoding state


def test_a_layer_that_keeps_decoding_state_and_says_nothing_of_rewinding_cannot_rewind():
  class Counter(cl.Layer):
    decodes = True

    def init_params_and_state(self, rng, input_signature):
      return {}, {"seen": jnp.zeros((), jnp.int32)}

    def forward(self, params, state, x, *, rng, train):
      return x, {"seen": state["seen"] + x.shape[1]}

  model = cl.Serial(cl.Relu(), Counter())
  assert not model.rewindable and decoding.rewind_blocker(model) is model.sublayers[1]
  _, state = model.init(KEY, _floats(1))
  with pytest.raises(cl.LayerError, match=r"(?s)Serial/Counter\[1\]: .*cannot rewind.*overrides rewindable and "
                     r"rewind_state.*Counter keeping \['seen'\]"):
    model.rewind(state, 0)


def test_layers_say_how_many_positions_they_hold():
  assert cl.DotProductAttention(2, causal=True, max_len=8, mode="predict").max_positions == 8
  assert cl.DotProductAttention(2, causal=True, max_len=8).max_positions is None   # no cache: any length
  assert cl.LearnedPositionalEncoding(8).max_positions == 8                      # a table of 8 rows, in every mode
  assert cl.LearnedPositionalEncoding(8, mode="predict").max_positions == 8
  assert cl.PositionalEncoding(8).max_positions == 8                             # whole sequences are checked
  assert cl.PositionalEncoding(8, mode="predict").max_positions is None          # sinusoids of any position
  assert cl.Dense(4).max_positions is None
  assert decoding.max_positions(TransformerLM(12, **{**LM, "max_len": 24})) == 24
  assert decoding.max_positions(RNNLM(12, d_model=8, n_layers=1, mode="predict")) is None


def test_decoding_state_is_initialised_and_fed_through_public_functions():
  model = TransformerLM(12, **LM)
  params, _ = TransformerLM(12, **{**LM, "mode": "train"}).init(KEY, _ids(3))
  state = decoding.init_state(model, 2)
  assert cx.paths(state) == cx.paths(model.init(KEY, _ids(1))[1])
  logits, state = decoding.next_token_logits(model, params, state, None, _ids(3))
  assert logits.shape == (2, 12) and logits.dtype == jnp.float32
  decoding.check_model(model, 16)
  with pytest.raises(ValueError, match="needs max_len >= 17"):
    decoding.check_model(model, 17)
