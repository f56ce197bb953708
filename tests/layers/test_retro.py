"""RETRO's chunked cross-attention: each position reads the neighbours of the chunk before its own (equal to a numpy
reference, position by position), never its own chunk's or a later one's, and decoding a token at a time equals
running the whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from combinax import layers as cl

M = 3   # chunk size


def reference(q, k, v, n_heads, chunk):
  """Position by position: softmax attention over the neighbour tokens of chunk p // chunk - 1, else zeros."""
  b, t, hd = q.shape
  d = hd // n_heads
  out = np.zeros((b, t, n_heads, d))
  for p in range(t):
    c = p // chunk - 1
    if c < 0 or c >= k.shape[1]:
      continue
    keys = k[:, c].reshape(b, -1, n_heads, d)
    values = v[:, c].reshape(b, -1, n_heads, d)
    query = q[:, p].reshape(b, n_heads, d)
    logits = np.einsum("bhd,bshd->bhs", query, keys) / np.sqrt(d)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out[:, p] = np.einsum("bhs,bshd->bhd", weights, values)
  return out.reshape(b, t, hd)


def arrays(t=8, chunks=3, neighbours=2, tokens=4, width=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (2, t, width))
  k, v = (jax.random.normal(key, (2, chunks, neighbours, tokens, width)) for key in keys[1:])
  return q, k, v


def test_each_position_attends_to_the_neighbours_of_the_chunk_before_its_own():
  q, k, v = arrays()
  out, _ = cl.ChunkedAttention(2, chunk_size=M).apply({}, {}, (q, k, v))
  np.testing.assert_allclose(out, reference(*map(np.asarray, (q, k, v)), 2, M), atol=1e-5)
  assert np.all(np.asarray(out[:, :M]) == 0)   # the first chunk has no chunk before it


@pytest.mark.parametrize("changed", [0, 1, 2])
def test_no_position_sees_the_neighbours_of_its_own_chunk_or_a_later_one(changed):
  layer = cl.ChunkedCrossAttention(8, n_heads=2, chunk_size=M)
  x, neighbours = jax.random.normal(jax.random.key(1), (2, 9, 8)), jax.random.normal(jax.random.key(2),
                                                                                     (2, 3, 2, 4, 6))
  params, _ = layer.init(jax.random.key(0), (x, neighbours))
  before = layer.apply(params, {}, (x, neighbours))[0][0]
  other = neighbours.at[:, changed].set(jax.random.normal(jax.random.key(3), neighbours[:, changed].shape))
  after = layer.apply(params, {}, (x, other))[0][0]
  first_reader = (changed + 1) * M   # the first position allowed to read chunk `changed`'s neighbours
  np.testing.assert_array_equal(after[:, :first_reader], before[:, :first_reader])
  if first_reader < 9:
    assert not np.allclose(after[:, first_reader:first_reader + M], before[:, first_reader:first_reader + M])


def test_decoding_a_token_at_a_time_equals_the_whole_sequence_and_rewinds():
  x, neighbours = jax.random.normal(jax.random.key(1), (2, 9, 8)), jax.random.normal(jax.random.key(2),
                                                                                     (2, 3, 2, 4, 6))
  whole = cl.ChunkedCrossAttention(8, n_heads=4, n_kv_heads=2, chunk_size=M)
  decoder = cl.ChunkedCrossAttention(8, n_heads=4, n_kv_heads=2, chunk_size=M, mode="predict")
  params, _ = whole.init(jax.random.key(0), (x, neighbours))
  expected = whole.apply(params, {}, (x, neighbours))[0][0]
  _, state = decoder.init(jax.random.key(0), (x[:, :1], neighbours))
  step = jax.jit(lambda s, token: decoder.apply(params, s, (token, neighbours)))
  (prefill, _), state = decoder.apply(params, state, (x[:, :4], neighbours))   # a prompt, then one token a call
  outputs = [prefill]
  for p in range(4, 9):
    (y, _), state = step(state, x[:, p:p + 1])
    outputs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), expected, atol=1e-5)
  rewound = decoder.rewind(state, 5)
  (again, _), _ = decoder.apply(params, rewound, (x[:, 5:6], neighbours))
  np.testing.assert_allclose(again, expected[:, 5:6], atol=1e-5)


def test_a_sequence_longer_than_its_neighbours_and_bad_shapes_are_named():
  q, k, v = arrays(t=10)
  with pytest.raises(cl.LayerError, match=r"a sequence of 10 positions needs neighbours for 4 chunks of 3"):
    cl.ChunkedAttention(2, chunk_size=M).apply({}, {}, (q, k, v))
  with pytest.raises(cl.LayerError, match=r"neighbours' k, v"):
    cl.ChunkedAttention(2, chunk_size=M).apply({}, {}, (q[:, :6], k[:, 0], v[:, 0]))
  with pytest.raises(cl.LayerError, match=r"chunk_size must be positive"):
    cl.ChunkedAttention(2, chunk_size=0)
