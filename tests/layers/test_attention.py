"""Attention, masks, positions, Repeat, Cache and Prefill: exact values, causality, padding, and the KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl

KEY = jax.random.key(0)


def normal(*shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def _reference_attention(q, k, v, mask):
  """Per-head softmax(q k^T / sqrt(d)) v in NumPy; q (b, t, h, d), k/v (b, s, h, d), mask (b, 1|h, t, s)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", weights, v)


@pytest.mark.parametrize("fast", [True, False])
def test_attend_matches_reference_with_grouped_heads(fast):
  q, k, v = normal(2, 3, 4, 8, seed=1), normal(2, 5, 2, 8, seed=2), normal(2, 5, 2, 8, seed=3)
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
  out = cl.attend(q, k, v, mask, fast=fast)
  expected = _reference_attention(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), np.asarray(mask))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# (max_len, block, start, tq): a first step, a prefill, steps inside, at the edge of and past a block, the last
# block overlapping the one before (11 = 4 + 4 + 3), blocks of one position, a cache of one block.
CACHED = [(11, 4, 0, 1), (11, 4, 0, 5), (11, 4, 3, 1), (11, 4, 4, 4), (11, 4, 8, 3), (11, 4, 10, 1), (12, 4, 7, 2),
          (12, 4, 8, 1), (9, 1, 4, 3), (11, 16, 7, 2)]


@pytest.mark.parametrize("max_len, block, start, tq", CACHED)
@pytest.mark.parametrize("prefix", [False, True])
def test_decoding_attention_reads_the_caches_filled_blocks_and_equals_attention_over_the_whole_cache(
    max_len, block, start, tq, prefix):
  # Whatever the cache holds past the filled positions (here: noise) must not matter; the last block may overlap
  # the one before it (max_len not a multiple of block), and the overlap is counted once.
  from combinax.layers.attention import attend_cached
  q, k, v = normal(2, tq, 4, 8, seed=1), normal(2, max_len, 2, 8, seed=2), normal(2, max_len, 2, 8, seed=3)
  lengths = jnp.array([2, 6]) if prefix else None
  got = jax.jit(lambda q, k, v, s: attend_cached(q, k, v, s, prefix_lengths=lengths, block=block))(q, k, v, start)
  query_pos, key_pos = start + np.arange(tq)[:, None], np.arange(max_len)[None]
  mask = np.broadcast_to(key_pos <= query_pos, (2, 1, tq, max_len))
  if prefix:
    mask = mask | ((key_pos < np.asarray(lengths)[:, None, None, None]) & (key_pos < start + tq))
  expected = _reference_attention(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), mask)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_decoding_step_reads_only_the_cache_blocks_up_to_the_index_and_is_differentiable():
  # Record which blocks the compiled step reads (a callback in the block's function: it runs only where the
  # block's branch is taken): (index + tq) / block of them, not max_len / block.
  from combinax.layers import attention
  read = []
  original = attention._read_block

  def recording(q, k_cache, v_cache, i, carry, **kw):
    jax.debug.callback(lambda i: read.append(int(i)), i)
    return original(q, k_cache, v_cache, i, carry, **kw)

  q, k, v = normal(1, 1, 2, 4), normal(1, 64, 2, 4), normal(1, 64, 2, 4)
  step = jax.jit(lambda q, k, v, start: attention.attend_cached(q, k, v, start, block=8))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(attention, "_read_block", recording)
    counts = []
    for start in (0, 7, 8, 40, 63):
      read.clear()
      jax.block_until_ready(step(q, k, v, start))
      jax.effects_barrier()
      counts.append(sorted(read))
  assert counts == [[0], [0], [0, 1], list(range(6)), list(range(8))]
  gradient = jax.grad(lambda q: attention.attend_cached(q, k, v, 9, block=8).sum())(q)
  assert np.all(np.isfinite(gradient)) and np.any(gradient)


def test_attention_dropout_needs_rng_and_changes_output():
  layer = cl.CausalAttention(8, n_heads=2, dropout=0.5)
  x = normal(1, 4, 8)
  params, state = layer.init(KEY, x)
  with pytest.raises(cx.LayerError, match="needs an rng"):
    layer.apply(params, state, x, train=True)
  a = layer.apply(params, state, x, rng=jax.random.key(1), train=True)[0]
  b = layer.apply(params, state, x, train=False)[0]
  assert not np.allclose(a, b)


def test_causal_attention_sees_only_the_past():
  layer = cl.CausalAttention(8, n_heads=2, n_kv_heads=1)
  x = normal(1, 6, 8)
  params, state = layer.init(KEY, x)
  y = layer.apply(params, state, x)[0]
  y_changed = layer.apply(params, state, x.at[:, 4].set(10.0))[0]
  np.testing.assert_allclose(y[:, :4], y_changed[:, :4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(y[:, 4:], y_changed[:, 4:])


def test_padded_keys_change_no_output():
  layer = cl.Attention(8, n_heads=2)
  x = normal(1, 5, 8)
  mask = jnp.array([[1, 1, 1, 0, 0]], bool)[:, None, None, :]
  params, state = layer.init(KEY, (x, mask))
  y, _ = layer.apply(params, state, (x, mask))[0]
  y_changed, _ = layer.apply(params, state, (x.at[:, 3:].set(-7.0), mask))[0]
  np.testing.assert_allclose(y[:, :3], y_changed[:, :3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rotary", [None, "half", "interleaved"])
def test_kv_cache_prefill_then_steps_equals_one_pass(rotary):
  x = normal(2, 7, 8)
  full = cl.CausalAttention(8, n_heads=4, n_kv_heads=2, rotary=rotary)
  decoder = cl.CausalAttention(8, n_heads=4, n_kv_heads=2, rotary=rotary, mode="predict", max_len=9)
  params, _ = full.init(KEY, x)
  expected = full.apply(params, {}, x)[0]
  _, state = decoder.init(KEY, x[:, :1])
  pieces = []
  for chunk in (x[:, :3], x[:, 3:4], x[:, 4:6], x[:, 6:]):
    y, state = decoder.apply(params, state, chunk)
    pieces.append(y)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), expected, rtol=1e-5, atol=1e-5)
  assert int(state["DotProductAttention_0"]["index"]) == 7


def test_rotary_layouts_and_relative_positions():
  x = normal(1, 1, 1, 8)
  q, k = normal(1, 1, 1, 8, seed=4), normal(1, 1, 1, 8, seed=5)
  # Rotation keeps the norm, and q.k after rotating by positions m, n depends only on m - n.
  rotated = cl.rotary(x, jnp.array([3]))
  assert float(jnp.linalg.norm(rotated)) == pytest.approx(float(jnp.linalg.norm(x)), rel=1e-5)
  dot = lambda m, n: float(jnp.sum(cl.rotary(q, jnp.array([m])) * cl.rotary(k, jnp.array([n]))))
  assert dot(5, 2) == pytest.approx(dot(13, 10), rel=1e-4)
  # The interleaved layout is the half layout on features reordered (0, 2, 4, 6, 1, 3, 5, 7).
  order = np.r_[0:8:2, 1:8:2]
  half = cl.rotary(x[..., order], jnp.array([3]), layout="half")
  interleaved = cl.rotary(x, jnp.array([3]), layout="interleaved")
  np.testing.assert_allclose(interleaved[..., order], half, rtol=1e-5, atol=1e-6)
  # Position 0 is the identity; feature pair (0, d/2) at position p turns by p radians.
  np.testing.assert_allclose(cl.rotary(x, jnp.array([0])), x, rtol=1e-6)
  e0 = jnp.zeros((1, 1, 1, 8)).at[..., 0].set(1.0)
  turned = cl.rotary(e0, jnp.array([2]))
  np.testing.assert_allclose([turned[0, 0, 0, 0], turned[0, 0, 0, 4]], [np.cos(2), np.sin(2)], rtol=1e-5)


def test_positional_encodings():
  table = np.asarray(cl.sinusoids(jnp.arange(3), 4))
  p, i = np.arange(3)[:, None], np.arange(2)[None, :]
  angle = p / 10000 ** (2 * i / 4)
  np.testing.assert_allclose(table[:, 0::2], np.sin(angle), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(table[:, 1::2], np.cos(angle), rtol=1e-5, atol=1e-6)
  for make in (cl.PositionalEncoding, lambda **kw: cl.LearnedPositionalEncoding(16, **kw)):
    x = normal(2, 6, 4)
    params, _ = make().init(KEY, x)
    full = make().apply(params, {}, x)[0]
    decoder = make(mode="predict")
    _, state = decoder.init(KEY, x[:, :1])
    first, state = decoder.apply(params, state, x[:, :4])
    rest, state = decoder.apply(params, state, x[:, 4:])
    np.testing.assert_allclose(jnp.concatenate([first, rest], axis=1), full, rtol=1e-6)
  with pytest.raises(cx.LayerError, match="max_len=4"):
    cl.PositionalEncoding(max_len=4).init(KEY, cx.ShapeDtype((1, 5, 4)))


def test_masks():
  mask = cl.PaddingMask().apply({}, {}, jnp.array([[5, 3, 0, 0]]))[0]
  assert mask.shape == (1, 1, 1, 4) and mask[0, 0, 0].tolist() == [True, True, False, False]
  cross = cl.EncoderDecoderMask().apply({}, {}, (jnp.zeros((1, 3, 2)), mask))[0]
  assert cross.shape == (1, 1, 3, 4) and cross[0, 0, 2].tolist() == [True, True, False, False]
  shifted = cl.ShiftRight().apply({}, {}, jnp.array([[4, 5, 6]]))[0]
  assert shifted.tolist() == [[0, 4, 5]]
  assert cl.ShiftRight(mode="predict").apply({}, {}, jnp.array([[4]]))[0].tolist() == [[4]]


def test_repeat_scan_equals_unrolled_and_stacks_params():
  block = cl.Residual(cl.LayerNorm(), cl.Dense(6), cl.Dropout(0.3))
  scanned, unrolled = cl.Repeat(block, 4, name="blocks"), cl.Repeat(block, 4, scan=False, name="blocks")
  x = normal(2, 6)
  params, state = scanned.init(KEY, x)
  assert params["Dense_0"]["kernel"].shape == (4, 6, 6)
  layer_kernels = params["Dense_0"]["kernel"]
  assert not np.allclose(layer_kernels[0], layer_kernels[1])  # each copy has weights of its own
  a = scanned.apply(params, state, x, rng=jax.random.key(1), train=True)[0]
  b = unrolled.apply(params, state, x, rng=jax.random.key(1), train=True)[0]
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  one = lambda i: jax.tree_util.tree_map(lambda t: t[i], params)
  h = x
  for i in range(4):
    h = block.apply(one(i), {}, h)[0]
  np.testing.assert_allclose(scanned.apply(params, state, x)[0], h, rtol=1e-5, atol=1e-6)


def test_repeat_compiles_to_the_same_program_at_any_depth():
  block = cl.Serial(cl.Dense(4), cl.Relu())
  def size(n):
    layer = cl.Repeat(block, n)
    params, state = layer.init(KEY, cx.ShapeDtype((1, 4)))
    return len(jax.make_jaxpr(lambda p: layer.apply(p, state, jnp.ones((1, 4)))[0])(params).eqns)
  assert size(2) == size(24)


def test_repeat_rejects_a_block_that_changes_shape():
  with pytest.raises(cx.LayerError, match="keep the signature"):
    cl.Repeat(cl.Dense(3), 2).init(KEY, cx.ShapeDtype((1, 4)))


def test_cache_runs_its_layer_once_in_predict_mode():
  cache = cl.Cache(cl.Dense(2), mode="predict")
  params, state = cache.init(KEY, cx.ShapeDtype((1, 3)))
  first, state = cache.apply(params, state, jnp.ones((1, 3)))
  again, state = cache.apply(params, state, jnp.zeros((1, 3)))
  np.testing.assert_array_equal(first, again)
  plain = cl.Cache(cl.Dense(2))
  assert not np.allclose(plain.apply(params, {}, jnp.zeros((1, 3)))[0], first)


def test_a_prefill_runs_its_prefix_once_and_refuses_outputs_that_grow_with_the_prefix():
  sig = (cx.ShapeDtype((2, 4, 5)), cx.ShapeDtype((2, 2, 3)))
  pooled = cl.Prefill(cl.Dense(3), cl.Fn("AddPooled", lambda p, x: x + jnp.sum(p, axis=1, keepdims=True)),
                      mode="predict")
  params, state = pooled.init(KEY, sig)
  prefix, x = normal(2, 4, 5), normal(2, 2, 3, seed=1)
  first, state = pooled.apply(params, state, (prefix, x))
  later, _ = pooled.apply(params, state, (prefix, x))
  dense = params["Dense_0"]
  expected = x + np.sum(np.asarray(prefix) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]), axis=1,
                        keepdims=True)
  np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(later, x)   # the prefix is not computed again: later calls get an empty one
  np.testing.assert_array_equal(cl.Prefill(cl.Dense(3), pooled.layer).apply(params, {}, (prefix, x))[0], first)
  joined = cl.Prefill(cl.Dense(3), cl.Fn("Join", lambda p, x: jnp.concatenate([p, x], axis=1)), mode="predict")
  params, state = joined.init(KEY, sig)
  with pytest.raises(cx.LayerError, match=r"must not depend on the prefix's length(.|\n)*float32\[2,2,3\]"):
    joined.apply(params, state, (prefix, x))


def test_tied_logits_use_the_embedding_table():
  embed = cl.Embedding(5, 3)
  model = cl.Serial(embed, cl.TiedLogits(embed))
  ids = jnp.array([[1, 4]])
  params, state = model.init(KEY, ids)
  table = np.asarray(params["Embedding_0"]["embedding"])
  np.testing.assert_allclose(model.apply(params, state, ids)[0][0], table[[1, 4]] @ table.T, rtol=1e-5)


def test_bad_attention_inputs_name_the_layer():
  layer = cl.CausalAttention(8, n_heads=4)
  with pytest.raises(cx.LayerError, match="DotProductAttention"):
    cl.DotProductAttention(4, causal=True).init(KEY, (cx.ShapeDtype((1, 2, 6)),) * 3)
  with pytest.raises(ValueError, match="multiple of n_heads"):
    cl.CausalAttention(8, n_heads=3)
  with pytest.raises(cx.LayerError, match="multiple of n_kv_heads"):
    cl.DotProductAttention(4, n_kv_heads=3)
  assert layer.output_signature(cx.ShapeDtype((1, 2, 8))).shape == (1, 2, 8)


@pytest.mark.parametrize("scan", [True, False])
def test_repeat_remat_policies_give_the_same_values_and_gradients(scan):
  block = cl.Residual(cl.LayerNorm(), cl.Dense(6), cl.Relu(), cl.Dropout(0.3))
  x = normal(2, 6)
  params, state = cl.Repeat(block, 3, scan=scan).init(KEY, x)

  def loss_and_grads(remat):
    layer = cl.Repeat(block, 3, scan=scan, remat=remat)
    loss = lambda p: jnp.sum(layer.apply(p, state, x, rng=jax.random.key(1), train=True)[0] ** 2)
    return jax.value_and_grad(loss)(params)

  reference = loss_and_grads(False)
  for remat in ("dots", True):
    value, grads = loss_and_grads(remat)
    np.testing.assert_allclose(value, reference[0], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(reference[1])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(cx.LayerError, match="unknown remat"):
    cl.Repeat(block, 2, remat="everything")


@pytest.mark.parametrize("fast", [True, False])
def test_a_prefix_lm_sees_its_whole_prefix_and_only_the_past_after_it(fast):
  q, k, v = normal(2, 6, 2, 4, seed=1), normal(2, 6, 2, 4, seed=2), normal(2, 6, 2, 4, seed=3)
  lengths = jnp.array([0, 4])
  layer = cl.DotProductAttention(2, causal=True, prefix=True, fast=fast)
  out, _ = layer.apply({}, {}, tuple(a.reshape(2, 6, 8) for a in (q, k, v)) + (lengths,))
  t = np.arange(6)
  mask = np.stack([(t[None, :] <= t[:, None]) | (t[None, :] < n) for n in (0, 4)])[:, None]   # (2, 1, 6, 6)
  assert mask[1, 0, 0].tolist() == [True] * 4 + [False] * 2 and mask[0, 0, 0].tolist() == [True] + [False] * 5
  np.testing.assert_allclose(out.reshape(2, 6, 2, 4), _reference_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_a_prefix_of_zero_is_causal_attention_and_a_whole_one_is_full_attention_with_the_same_params():
  x = normal(2, 5, 8)
  causal = cl.CausalAttention(8, n_heads=2)
  prefixed = cl.CausalAttention(8, n_heads=2, prefix=True)
  params, _ = causal.init(KEY, x)
  params_prefixed, _ = prefixed.init(KEY, (x, jnp.zeros(2, jnp.int32)))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(params_prefixed)
  np.testing.assert_allclose(prefixed.apply(params, {}, (x, jnp.zeros(2, jnp.int32)))[0][0],
                             causal.apply(params, {}, x)[0], rtol=1e-6, atol=1e-6)
  full, _ = cl.Attention(8, n_heads=2).apply(params, {}, (x, jnp.ones((2, 1, 1, 5), bool)))
  np.testing.assert_allclose(prefixed.apply(params, {}, (x, jnp.full(2, 5, jnp.int32)))[0][0], full[0],
                             rtol=1e-5, atol=1e-6)


def test_decoding_a_prefix_lm_fills_the_prefix_first_and_equals_one_pass():
  x, lengths = normal(2, 8, 8), jnp.array([3, 5])
  full = cl.CausalAttention(8, n_heads=4, n_kv_heads=2, rotary="half", prefix=True)
  decoder = cl.CausalAttention(8, n_heads=4, n_kv_heads=2, rotary="half", prefix=True, mode="predict", max_len=10)
  params, _ = full.init(KEY, (x, lengths))
  expected = full.apply(params, {}, (x, lengths))[0][0]
  _, state = decoder.init(KEY, (x[:, :5], lengths))
  (first, _), state = decoder.apply(params, state, (x[:, :5], lengths))   # the prefill holds every prefix
  pieces = [first]
  for t in range(5, 8):
    (y, _), state = decoder.apply(params, state, (x[:, t:t + 1], lengths))
    pieces.append(y)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), expected, rtol=1e-5, atol=1e-5)


def test_a_prefix_without_causality_and_prefix_lengths_of_another_shape_are_named():
  with pytest.raises(cx.LayerError, match="prefix=True with causal=True"):
    cl.DotProductAttention(2, prefix=True)
  layer = cl.CausalAttention(8, n_heads=2, prefix=True)
  x = normal(2, 5, 8)
  params, _ = layer.init(KEY, (x, jnp.zeros(2, jnp.int32)))
  with pytest.raises(cx.LayerError, match=r"prefix length[\s\S]*expected: int \(2,\)"):
    layer.apply(params, {}, (x, jnp.zeros((2, 1), jnp.int32)))
