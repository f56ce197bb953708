"""Exact values for Trax's stack semantics, weight sharing, rng splitting and printing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl

KEY = jax.random.key(0)


def run(layer, inputs, **kwargs):
  params, state = layer.init(KEY, inputs)
  return layer.apply(params, state, inputs, **kwargs)[0]


def arr(*values):
  return jnp.array(values, jnp.float32)


def test_serial_arity_follows_from_its_layers():
  assert (cl.Serial(cl.Dup(), cl.Dup()).n_in, cl.Serial(cl.Dup(), cl.Dup()).n_out) == (1, 3)
  assert (cl.Serial(cl.Add(), cl.Add()).n_in, cl.Serial(cl.Add(), cl.Add()).n_out) == (3, 1)
  assert (cl.Serial(cl.Drop(), cl.Dup()).n_in, cl.Serial(cl.Drop(), cl.Dup()).n_out) == (2, 2)
  out = run(cl.Serial(cl.Dup(), cl.Dup()), arr(1, 2))
  assert len(out) == 3 and all(np.array_equal(o, [1, 2]) for o in out)


def test_an_empty_serial_is_the_identity_as_in_trax():
  """Trax: "a special-case (but useful) 1-input 1-output no-op"; Trax code leans on it inside Branch."""
  for empty in (cl.Serial(), cl.Serial([], None), cl.Serial([[]])):
    assert (empty.n_in, empty.n_out) == (1, 1)
    np.testing.assert_array_equal(run(empty, arr(1, 2)), [1, 2])
    assert str(empty) == "Serial" and empty.init(jax.random.key(0), arr(1, 2)) == ({}, {})
  for branch in (cl.Branch(cl.Serial(), cl.Dup()), cl.Branch([], cl.Dup()), cl.Branch(None, cl.Dup())):
    assert (branch.n_in, branch.n_out) == (1, 3)
    assert all(np.array_equal(o, [1, 2]) for o in run(branch, arr(1, 2)))
  np.testing.assert_array_equal(run(cl.Residual(cl.Serial()), arr(1, 2)), [2, 4])   # x + identity(x)


def test_serial_runs_on_top_of_the_stack_and_passes_the_rest():
  # Stack (a, b, c): Add makes (a+b, c); Multiply makes ((a+b)*c).
  out = run(cl.Serial(cl.Add(), cl.Multiply()), (arr(1), arr(2), arr(10)))
  np.testing.assert_array_equal(out, [30])
  # Only the top is consumed; c passes through untouched.
  a_plus_b, c = run(cl.Serial(cl.Add(), cl.Select([0, 1])), (arr(1), arr(2), arr(10)))
  np.testing.assert_array_equal(a_plus_b, [3])
  np.testing.assert_array_equal(c, [10])


def test_serial_flattens_lists_of_layers():
  layer = cl.Serial([cl.Dup(), [cl.Dup()]], None)
  assert len(layer.sublayers) == 2 and layer.n_out == 3


def test_parallel_gives_each_layer_its_own_span():
  three_to_one = cl.Fn("Sum3", lambda a, b, c: a + 10 * b + 100 * c)
  two_to_two = cl.Swap()
  layer = cl.Parallel(cl.Fn("Neg", lambda x: -x), three_to_one, two_to_two)
  assert (layer.n_in, layer.n_out) == (6, 4)
  out = run(layer, tuple(arr(v) for v in range(1, 7)))
  np.testing.assert_array_equal(jnp.stack(out)[:, 0], [-1, 2 + 30 + 400, 6, 5])


def test_branch_example_from_trax():
  out = run(cl.Branch(cl.Add(), cl.Fn("Halve", lambda x: x / 0.5)), (arr(1, 2, 3), arr(10, 20, 30)))
  np.testing.assert_array_equal(out[0], [11, 22, 33])
  np.testing.assert_array_equal(out[1], [2, 4, 6])


def test_residual_adds_its_shortcut():
  double = cl.Fn("Double", lambda x: 2 * x)
  np.testing.assert_array_equal(run(cl.Residual(double), arr(1, 2)), [3, 6])
  np.testing.assert_array_equal(run(cl.Residual(double, shortcut=cl.Fn("Neg", lambda x: -x)), arr(1, 2)), [1, 2])
  # A main path with two inputs (e.g. x and a mask) keeps the second item, as in Trax.
  with_mask = cl.Residual(cl.Fn("UseMask", lambda x, m: (x * m, m), n_out=2))
  y, mask = run(with_mask, (arr(1, 2), arr(0, 1)))
  np.testing.assert_array_equal(y, [1, 4])
  np.testing.assert_array_equal(mask, [0, 1])


def test_select_dup_swap_drop():
  a, b, c = arr(1), arr(2), arr(3)
  picked = run(cl.Select([2, 0]), (a, b, c))
  assert [float(x[0]) for x in picked] == [3, 1]
  assert [float(x[0]) for x in run(cl.Swap(), (a, b))] == [2, 1]
  assert run(cl.Drop(), a) == ()
  assert cl.Select([0], n_in=3).n_in == 3
  out = run(cl.Serial(cl.Select([0], n_in=2), cl.Add()), (a, b, c))  # Select drops b; Add adds a and c.
  np.testing.assert_array_equal(out, [4])


def test_fn_takes_its_arity_from_the_function():
  assert cl.Fn("F", lambda x, y, z=1: x).n_in == 2
  assert cl.Fn("F", lambda: jnp.zeros(())).n_in == 0
  with pytest.raises(ValueError, match="\\*args"):
    cl.Fn("F", lambda *xs: xs[0])


def test_concatenate_split_and_arithmetic():
  x = run(cl.Concatenate(2, axis=0), (arr(1, 2), arr(3)))
  np.testing.assert_array_equal(x, [1, 2, 3])
  parts = run(cl.Split(3), arr(1, 2, 3))
  assert [float(p[0]) for p in parts] == [1, 2, 3]
  np.testing.assert_array_equal(run(cl.SubtractTop(), (arr(1), arr(5))), [4])
  np.testing.assert_array_equal(run(cl.Gate(), (arr(10), arr(0.25), arr(2))), [0.25 * 10 + 0.75 * 2])


def _running_sum():
  return cl.Scan(cl.Serial(cl.Add(), cl.Dup()))  # (x_t, carry) -> (x_t + carry, x_t + carry)


def test_scan_gives_running_sums_and_final_carry_on_axis0():
  xs = jnp.arange(12.0).reshape(4, 3)
  sums, carry = run(_running_sum(), (xs, jnp.zeros(3)))
  np.testing.assert_array_equal(sums, np.cumsum(np.arange(12.0).reshape(4, 3), axis=0))
  np.testing.assert_array_equal(carry, [18, 22, 26])


def test_scan_on_axis1():
  xs = jnp.arange(6.0).reshape(2, 3)
  layer = cl.Scan(cl.Serial(cl.Add(), cl.Dup()), axis=1)
  sums, carry = run(layer, (xs, jnp.zeros(2)))
  np.testing.assert_array_equal(sums, [[0, 1, 3], [3, 7, 12]])
  np.testing.assert_array_equal(carry, [3, 12])


def test_scan_rejects_a_carry_that_changes_shape():
  grow = cl.Scan(cl.Serial(cl.Add(), cl.Fn("Grow", lambda x: (x, jnp.concatenate([x, x])), n_out=2)))
  with pytest.raises(cx.LayerError, match="carries"):
    grow.init(KEY, (cx.ShapeDtype((4, 3)), cx.ShapeDtype((3,))))


def test_scan_gives_each_step_its_own_rng():
  layer = cl.Scan(cl.Serial(cl.Fn("Keep", lambda x, c: x), cl.Dropout(0.5), cl.Fn("Carry", lambda y: (y, y), 2)),
                  n_carry=1)
  x = jnp.ones((6, 64))
  params, state = layer.init(KEY, (x, jnp.zeros(64)))
  (ys, _), _ = layer.apply(params, state, (x, jnp.zeros(64)), rng=jax.random.key(1), train=True)
  assert len({tuple(np.asarray(row)) for row in ys}) == 6


def test_cond_runs_one_branch():
  layer = cl.Cond(cl.Fn("Positive", lambda x: jnp.sum(x) > 0), cl.Fn("Double", lambda x: 2 * x),
                  cl.Fn("Neg", lambda x: -x))
  np.testing.assert_array_equal(run(layer, arr(1, 2)), [2, 4])
  np.testing.assert_array_equal(run(layer, arr(-1, -2)), [1, 2])
  identity_false = cl.Cond(cl.Fn("Positive", lambda x: jnp.sum(x) > 0), cl.Fn("Double", lambda x: 2 * x))
  np.testing.assert_array_equal(jax.jit(lambda x: run(identity_false, x))(arr(-1, -2)), [-1, -2])


def test_cond_keeps_each_branch_state():
  layer = cl.Cond(cl.Fn("Positive", lambda x: jnp.sum(x) > 0), cl.BatchNorm(momentum=0.5))
  x = jnp.arange(8.0).reshape(4, 2)
  params, state = layer.init(KEY, x)
  _, taken = layer.apply(params, state, x, train=True)
  _, skipped = layer.apply(params, state, -x, train=True)
  np.testing.assert_allclose(taken["BatchNorm_0"]["mean"], 0.5 * np.mean(np.asarray(x), axis=0))
  np.testing.assert_array_equal(skipped["BatchNorm_0"]["mean"], [0, 0])


def test_chunk_equals_the_unchunked_layer():
  dense = cl.Dense(3)
  x = jax.random.normal(KEY, (6, 5))
  params, state = dense.init(KEY, x)
  chunked = cl.Chunk(dense, chunk_size=2)
  np.testing.assert_allclose(chunked.apply({"Dense_0": params}, {}, x)[0], dense.apply(params, state, x)[0],
                             rtol=1e-6)
  with pytest.raises(cx.LayerError, match="divisible"):
    chunked.apply({"Dense_0": params}, {}, x[:5])


def test_batch_leading_axes_folds_and_restores():
  flat = run(cl.BatchLeadingAxes(cl.Flatten(), n_last_axes_to_keep=2), jnp.arange(48.0).reshape(2, 3, 2, 4))
  assert flat.shape == (2, 3, 8)
  np.testing.assert_array_equal(flat[1, 2], np.arange(40.0, 48.0))


def test_bidirectional_runs_a_copy_backwards():
  prefix_sum = cl.Scan(cl.Serial(cl.Add(), cl.Dup()), axis=1)
  layer = cl.Bidirectional(cl.Serial(cl.Fn("Zero", lambda x: (x, jnp.zeros(x.shape[:1] + x.shape[2:])), 2),
                                     prefix_sum, cl.Select([0], n_in=2)), axis=1)
  out = run(layer, jnp.array([[[1.0], [2.0], [3.0]]]))
  np.testing.assert_array_equal(out[0, :, 0], [1, 3, 6])   # forward prefix sums
  np.testing.assert_array_equal(out[0, :, 1], [6, 5, 3])   # backward (suffix) sums
  dense = cl.Bidirectional(cl.Dense(2))
  params, _ = dense.init(KEY, cx.ShapeDtype((1, 3, 4)))
  assert sorted(params) == ["Dense_0", "Dense_1"]  # the copy has weights of its own


def test_remat_matches_plain_gradients():
  inner = cl.Serial(cl.Dense(4), cl.Tanh(), cl.Dense(1))
  x = jax.random.normal(KEY, (3, 5))
  params, state = inner.init(KEY, x)
  plain = jax.grad(lambda p: jnp.sum(inner.apply(p, state, x)[0]))(params)
  remat = cl.Remat(inner)
  grads = jax.grad(lambda p: jnp.sum(remat.apply(p, {}, x)[0]))(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), plain, grads)


def test_readable_paths_and_scopes():
  model = cl.Serial(
      cl.Embedding(10, 4),
      cl.Serial(cl.Residual(cl.LayerNorm(), cl.Dense(4)), cl.Dense(4), name="block"),
      cl.Dense(3))
  params, _ = model.init(KEY, cx.ShapeDtype((2, 5), jnp.int32))
  assert cx.paths(params) == [
      "Dense_0/bias", "Dense_0/kernel", "Embedding_0/embedding",
      "block/Dense_0/bias", "block/Dense_0/kernel", "block/Dense_1/bias", "block/Dense_1/kernel",
      "block/LayerNorm_0/bias", "block/LayerNorm_0/scale"]
  assert sorted(cx.select(params, "block/*/kernel")) == ["block/Dense_0/kernel", "block/Dense_1/kernel"]
  mask = cx.mask(params, ["*/bias", "*LayerNorm*"])
  assert mask["Dense_0"]["bias"] and not mask["Dense_0"]["kernel"] and mask["block"]["LayerNorm_0"]["scale"]
  assert cx.count_params(params) == 40 + 2 * 20 + 8 + 15


def test_adding_a_layer_at_the_end_changes_no_weights():
  small = cl.Serial(cl.Dense(4), cl.Relu(), cl.Dense(3))
  big = cl.Serial(cl.Dense(4), cl.Relu(), cl.Dense(3), cl.Dense(2))
  p_small, _ = small.init(KEY, cx.ShapeDtype((2, 5)))
  p_big, _ = big.init(KEY, cx.ShapeDtype((2, 5)))
  for key in p_small:
    jax.tree_util.tree_map(np.testing.assert_array_equal, p_small[key], p_big[key])
  assert not np.array_equal(p_big["Dense_0"]["kernel"][:, :3], p_big["Dense_1"]["kernel"][:3])


def test_same_object_twice_shares_weights():
  dense = cl.Dense(3)
  model = cl.Serial(dense, cl.Relu(), dense)
  x = jax.random.normal(KEY, (2, 3))
  params, state = model.init(KEY, x)
  assert list(params) == ["Dense_0"]
  expected = dense.apply(params["Dense_0"], {}, jax.nn.relu(dense.apply(params["Dense_0"], {}, x)[0]))[0]
  np.testing.assert_allclose(model.apply(params, state, x)[0], expected, rtol=1e-6)
  # The gradient of a shared weight sums the contributions of both uses.
  grad = jax.grad(lambda p: jnp.sum(model.apply(p, state, x)[0]))(params)
  def separate(k1, k2):
    bias = params["Dense_0"]["bias"][None]
    return jnp.sum(jax.nn.relu(x @ k1 + bias) @ k2 + bias)
  g1, g2 = jax.grad(separate, argnums=(0, 1))(params["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
  np.testing.assert_allclose(grad["Dense_0"]["kernel"], g1 + g2, rtol=1e-5)


def test_sharing_across_scopes():
  embed = cl.Embedding(10, 4)
  model = cl.Parallel(cl.Serial(embed, cl.Dense(2), name="encoder"), cl.Serial(embed, name="decoder"))
  ids = jnp.array([[1, 2]], jnp.int32)
  params, state = model.init(KEY, (ids, ids))
  assert cx.paths(params) == ["encoder/Dense_0/bias", "encoder/Dense_0/kernel", "encoder/Embedding_0/embedding"]
  _, dec = model.apply(params, state, (ids, ids))[0]
  np.testing.assert_array_equal(dec, params["encoder"]["Embedding_0"]["embedding"][ids])
  grad = jax.grad(lambda p: jnp.sum(model.apply(p, state, (ids, ids))[0][1]))(params)
  assert float(jnp.sum(grad["encoder"]["Embedding_0"]["embedding"])) == pytest.approx(8.0)


def test_rng_is_split_per_child_and_apply_is_reproducible():
  model = cl.Serial(cl.Dropout(0.5), cl.Dropout(0.5))
  x = jnp.ones((1000,))
  a = model.apply({}, {}, x, rng=jax.random.key(1), train=True)[0]
  b = model.apply({}, {}, x, rng=jax.random.key(1), train=True)[0]
  c = model.apply({}, {}, x, rng=jax.random.key(2), train=True)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  two = cl.Parallel(cl.Dropout(0.5), cl.Dropout(0.5)).apply({}, {}, (x, x), rng=jax.random.key(1), train=True)[0]
  assert not np.array_equal(two[0], two[1])


def test_str_prints_the_tree_trax_style():
  model = cl.Serial(cl.Dense(4), cl.Branch(cl.Relu(), cl.Dup()), cl.Residual(cl.LayerNorm(), cl.Dense(4)))
  assert str(model) == "\n".join([
      "Serial_out3[",
      "  Dense",
      "  Branch_out3[",
      "    Relu",
      "    Dup_out2",
      "  ]",
      "  Residual[",
      "    LayerNorm",
      "    Dense",
      "  ]",
      "]"])


def test_shared_layer_state():
  bn = cl.BatchNorm(momentum=0.5)
  x, y = jnp.ones((4, 2)), 3 * jnp.ones((4, 2))
  # Within one scope the second use sees the first use's update.
  twice = cl.Serial(bn, cl.Fn("Shift", lambda h: h + 2.0), bn)
  params, state = twice.init(KEY, x)
  assert list(state) == ["BatchNorm_0"]
  _, new = twice.apply(params, state, x, train=True)
  # First use: running mean 0.5 * 0 + 0.5 * 1; it outputs zeros, shifted to 2; second use: 0.5 * 0.5 + 0.5 * 2.
  np.testing.assert_allclose(new["BatchNorm_0"]["mean"], [1.25, 1.25])
  # Across scopes one copy is stored, and the last occurrence's update is kept.
  split = cl.Parallel(cl.Serial(bn, name="a"), cl.Serial(bn, name="b"))
  params, state = split.init(KEY, (x, y))
  assert cx.paths(state) == ["a/BatchNorm_0/mean", "a/BatchNorm_0/var"]
  _, new = split.apply(params, state, (x, y), train=True)
  assert cx.paths(new) == cx.paths(state)
  np.testing.assert_allclose(new["a"]["BatchNorm_0"]["mean"], [1.5, 1.5])


def test_scan_in_predict_mode_continues_from_its_stored_carry():
  xs = jnp.arange(12.0).reshape(4, 3)
  full, _ = run(_running_sum(), (xs, jnp.zeros(3)))
  decoder = cl.Scan(cl.Serial(cl.Add(), cl.Dup()), mode="predict")
  params, state = decoder.init(KEY, (xs[:1], jnp.zeros(3)))
  np.testing.assert_array_equal(state["Scan_0"]["carry"][0], np.zeros(3))
  pieces = []
  for chunk in (xs[:2], xs[2:3], xs[3:]):  # a prefix, then one step at a time
    (ys, carry), state = decoder.apply(params, state, (chunk, jnp.zeros(3)))
    pieces.append(ys)
  np.testing.assert_array_equal(jnp.concatenate(pieces), full)
  np.testing.assert_array_equal(state["Scan_0"]["carry"][0], full[-1])
  with pytest.raises(cx.LayerError, match="unknown mode"):
    cl.Scan(cl.Add(), mode="decode")


def test_walk_yields_the_layer_and_every_sublayer_depth_first_plumbing_and_repeats_included():
  dense, relu = cl.Dense(2, name="dense"), cl.Relu()
  model = cl.Serial(dense, cl.Residual(relu, name="res"), cl.Serial(dense, name="again"), name="model")
  names = [layer.name for layer in cl.walk(model)]
  # Residual is Serial(Branch(identity, relu), Add) inside; the Branch is Serial(Select, Parallel(identity, relu)).
  assert names == ["model", "dense", "res", "Branch", "Select", "Parallel", "Identity", "Relu", "Add", "again",
                   "dense"]
  assert [layer for layer in cl.walk(model) if layer is dense] == [dense, dense]   # shared: met at each use
  assert list(cl.walk(relu)) == [relu]


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_interleave_runs_repeats_blocks_with_the_inserted_layer_after_every_group(scan):
  block, inserted = cl.Serial(cl.Dense(3), cl.Tanh()), cl.Serial(cl.Dense(3), cl.Sigmoid())
  layer = cl.Interleave(block, 4, inserted, every=2, scan=scan)
  x = jax.random.normal(jax.random.key(1), (2, 3))
  params, state = layer.init(jax.random.key(0), x)
  assert params["blocks"]["Dense_0"]["kernel"].shape == (4, 3, 3)      # Repeat(block, 4)'s paths and shapes
  assert params["inserted"]["Dense_0"]["kernel"].shape == (2, 3, 3)
  take = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)
  expected = x
  for i in range(4):                                                   # block, block, inserted, block, block, inserted
    expected = block.apply(take(params["blocks"], i), {}, expected)[0]
    if i % 2 == 1:
      expected = inserted.apply(take(params["inserted"], i // 2), {}, expected)[0]
  np.testing.assert_allclose(layer.apply(params, state, x)[0], expected, rtol=1e-6, atol=1e-6)
  with pytest.raises(cx.LayerError, match=r"(?s)every >= 1 dividing n_layers=4.*every=3"):
    cl.Interleave(block, 4, inserted, every=3)
