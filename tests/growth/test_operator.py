"""The LiGO operator: its fixed settings are stacking and Net2Net exactly, the function-preserving one keeps the small
model's outputs, only the operator trains, its size is its formula, and model pairs it cannot grow are clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import combinax as cx
from combinax import growth, models as cm
from combinax.growth import GrowthError, GrowthOptions, METHODS

TOKENS = cx.ShapeDtype((2, 6), jnp.int32)


def lm(d_model, n_layers, n_heads, **kw):
  options = dict(d_ff=4 * d_model, positions="rotary", dropout=0.0, max_len=16)
  return cm.TransformerLM(40, d_model, **{**options, **kw}, n_layers=n_layers, n_heads=n_heads)


def grown(small, large, options, rng=1):
  small_params, _ = small.init(jax.random.key(rng), TOKENS)
  plan = growth.make_plan(small, small_params, large)
  operator = growth.init_operator(jax.random.key(0), plan, options)
  return small_params, growth.expand(plan, operator, small_params), plan, operator


def tokens(seed=3, shape=(3, 6)):
  return jax.random.randint(jax.random.key(seed), shape, 1, 40)


# --- The fixed settings are the classic methods, exactly ------------------------------------------------------------

def test_stacking_with_cyclic_copies_is_hand_computable():
  # d 2 -> 4 (1 head of 2 -> 2 heads of 2), ff 8 -> 16, 2 layers -> 4: every unit i' copies i' mod n; a copied
  # input unit's weights are split between its 2 copies; layer l copies layer l mod 2.
  small, large = lm(2, 2, 1), lm(4, 4, 2)
  s, g, _, _ = grown(small, large, METHODS["stack"])
  tile = lambda x, reps: np.tile(np.asarray(x), reps)
  for layer in range(4):
    j = layer % 2
    for name in ("q", "k", "v", "o"):
      np.testing.assert_array_equal(g["blocks"]["attention"][name]["kernel"][layer],
                                    tile(s["blocks"]["attention"][name]["kernel"][j], (2, 2)) / 2)
      np.testing.assert_array_equal(g["blocks"]["attention"][name]["bias"][layer],
                                    tile(s["blocks"]["attention"][name]["bias"][j], 2))
    for name in ("in", "out"):
      np.testing.assert_array_equal(g["blocks"]["ff"][name]["kernel"][layer],
                                    tile(s["blocks"]["ff"][name]["kernel"][j], (2, 2)) / 2)
    for norm in ("attention_norm", "ff_norm"):
      np.testing.assert_array_equal(g["blocks"][norm]["scale"][layer], tile(s["blocks"][norm]["scale"][j], 2))
  np.testing.assert_array_equal(g["embed"]["embedding"], tile(s["embed"]["embedding"], (1, 2)))
  np.testing.assert_array_equal(g["final_norm"]["scale"], tile(s["final_norm"]["scale"], 2) / 2)  # it reads
  np.testing.assert_array_equal(g["logits"]["kernel"], tile(s["logits"]["kernel"], (2, 1)))       # it writes


def test_net2net_setting_inserts_a_copy_with_zero_outputs_after_each_layer():
  small, large = lm(4, 2, 2), lm(4, 4, 2)   # depth only: the widths stay, so the copies are exact
  s, g, _, _ = grown(small, large, METHODS["net2net"])
  blocks, small_blocks = g["blocks"], s["blocks"]
  for layer, (j, copy) in enumerate([(0, False), (0, True), (1, False), (1, True)]):
    np.testing.assert_array_equal(blocks["attention"]["q"]["kernel"][layer],
                                  small_blocks["attention"]["q"]["kernel"][j])
    np.testing.assert_array_equal(blocks["ff"]["in"]["kernel"][layer], small_blocks["ff"]["in"]["kernel"][j])
    for module in (blocks["attention"]["o"], blocks["ff"]["out"]):
      zero = not np.any(module["kernel"][layer]) and not np.any(module["bias"][layer])
      assert zero == copy


def test_interpolation_repeats_each_layer_in_place():
  small, large = lm(4, 2, 2), lm(4, 6, 2)
  s, g, _, _ = grown(small, large, METHODS["interpolate"])
  for layer, j in enumerate([0, 0, 0, 1, 1, 1]):
    np.testing.assert_array_equal(g["blocks"]["ff"]["out"]["kernel"][layer], s["blocks"]["ff"]["out"]["kernel"][j])


def test_random_width_copies_select_whole_heads_the_same_for_q_k_and_v():
  small, large = lm(4, 1, 2), lm(12, 1, 6)   # heads of 2 dims: 4 new heads, each a copy of one of the 2 old
  _, _, _, operator = grown(small, large, GrowthOptions(noise=0.0))
  q, k, v = (np.asarray(operator["width"][name][0]) for name in ("q", "k", "v"))
  np.testing.assert_array_equal(q, k)
  np.testing.assert_array_equal(q, v)
  source = q.argmax(axis=1).reshape(4, 2)                  # per new head, its 2 dims' source dims
  assert np.all(source[:, 1] == source[:, 0] + 1) and np.all(source[:, 0] % 2 == 0)
  assert set(np.unique(q)) == {0.0, 1.0} and np.all(q.sum(axis=1) == 1)


# --- Function preservation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(tie_embeddings=True), dict(tie_embeddings=False), dict(gated_ff=True, use_bias=False, norm="rms"),
    dict(n_kv_heads=1), dict(positions="learned"), dict(positions="rotary_interleaved")],
    ids=["tied", "untied", "gated-rms", "grouped-query", "learned-positions", "rotary-interleaved"])
def test_the_net2net_setting_keeps_a_pre_norm_lms_function(kw):
  large_kw = {**kw, "n_kv_heads": 2} if "n_kv_heads" in kw else kw     # 2 query heads per kv head in both
  small, large = lm(8, 2, 2, **kw), lm(16, 4, 4, **large_kw)
  small_params, large_params, _, _ = grown(small, large, METHODS["net2net"])
  x = tokens()
  expected, _ = small.apply(small_params, {}, x)
  actual, _ = large.apply(large_params, {}, x)
  np.testing.assert_allclose(actual, expected, atol=2e-5, rtol=1e-5)


def test_width_growth_keeps_a_post_norm_bert_encoders_function():
  # Post-norm (BERT): LayerNorm of a vector whose units are each copied twice has the same mean and variance. A new
  # layer is no identity after a norm, so only width grows here.
  bert = lambda d, heads: cm.TransformerEncoder(40, 3, d, d_ff=4 * d, n_layers=2, n_heads=heads, pre_norm=False,
                                                positions="learned", max_len=16, embed_norm=True, type_vocab_size=2,
                                                dropout=0.0, ff_activation=cx.layers.Gelu, norm_epsilon=1e-12)
  small, large = bert(8, 2), bert(16, 4)
  signature = (TOKENS, TOKENS)
  small_params, _ = small.init(jax.random.key(1), signature)
  plan = growth.make_plan(small, small_params, large)
  large_params = growth.expand(plan, growth.init_operator(jax.random.key(0), plan, METHODS["net2net"]), small_params)
  x = (tokens(), jax.random.randint(jax.random.key(4), (3, 6), 0, 2))
  np.testing.assert_allclose(large.apply(large_params, {}, x)[0], small.apply(small_params, {}, x)[0], atol=2e-5)


def test_ligos_initial_operator_is_not_the_small_function_but_near_it():
  small, large = lm(8, 2, 2), lm(16, 4, 4)
  small_params, large_params, _, _ = grown(small, large, METHODS["ligo"])
  x = tokens()
  small_out, large_out = small.apply(small_params, {}, x)[0], large.apply(large_params, {}, x)[0]
  assert 1e-3 < float(jnp.max(jnp.abs(small_out - large_out))) < float(jnp.max(jnp.abs(small_out)))


# --- Training touches only the operator ---------------------------------------------------------------------------

def test_gradients_reach_only_the_operator():
  small, large = lm(8, 1, 2), lm(16, 2, 4)
  model = growth.Grown(small, large)
  params, state = model.init(jax.random.key(0), TOKENS)
  x = tokens()

  def loss(params):
    logits, _ = model.apply(params, state, x)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, x[..., None], -1)[..., 0])
  grads = jax.grad(loss)(params)
  small_grads = jax.tree_util.tree_leaves(model.small_params(grads))
  assert small_grads and all(not np.any(g) for g in small_grads)
  operator_grads = cx.paths(grads["growth"])
  assert all(np.any(g) for g in jax.tree_util.tree_leaves(grads["growth"])), operator_grads


def test_grow_trains_the_operator_and_returns_the_large_models_params():
  small, large = lm(8, 1, 2), lm(16, 2, 4)
  small_params, _ = small.init(jax.random.key(1), TOKENS)
  x = jnp.tile(jnp.arange(1, 9), (8, 1))                          # one sequence, learnable in a few steps
  batches = iter([(x, x, jnp.ones(x.shape, jnp.float32))] * 30)
  losses = []
  params = growth.grow(small, small_params, large, batches, steps=30, callback=lambda step, m: losses.append(
      float(m["loss"])), optimizer=optax.adam(1e-2))
  assert len(losses) == 30 and losses[-1] < 0.7 * losses[0]
  before = jax.tree_util.tree_map(np.asarray, small_params)           # the caller's params outlive the steps
  growth.grow(small, small_params, large, iter([(x, x, jnp.ones(x.shape, jnp.float32))] * 2), steps=2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.asarray, small_params), before)
  template = large.init(jax.random.key(0), TOKENS)[0]
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(template)
  assert [p.shape for p in jax.tree_util.tree_leaves(params)] == [p.shape for p in jax.tree_util.tree_leaves(template)]


def test_grow_with_no_steps_is_the_initial_operator():
  small, large = lm(8, 2, 2), lm(16, 4, 4)
  small_params, expected, _, _ = grown(small, large, METHODS["net2net"])
  x = tokens()
  params = growth.grow(small, small_params, large, iter([(x, x, jnp.ones(x.shape))]), steps=0,
                       options=METHODS["net2net"])
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(a, b)   # net2net's setting draws nothing at random


# --- Size, shapes and errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dense", [False, True])
def test_the_operators_size_is_its_formula(dense):
  # small: d 8, ff 32, 2 layers, 2 heads of 4, 1 kv head; large: d 16, ff 48, 3 layers, 4 heads, 2 kv heads.
  small = lm(8, 2, 2, d_ff=32, n_kv_heads=1)
  large = lm(16, 3, 4, d_ff=48, n_kv_heads=2)
  options = GrowthOptions(dense=dense)
  _, _, plan, operator = grown(small, large, options)
  rows = (lambda n, n_new: n_new) if dense else (lambda n, n_new: n_new - n)
  width = (rows(8, 16) * 8                     # embed: one for the residual stream
           + 2 * rows(8, 16) * 8               # q, per small layer
           + 2 * 2 * rows(4, 8) * 4            # k and v: 1 kv head of 4 -> 2, per small layer
           + 2 * rows(32, 48) * 32)            # ff, per small layer
  depth = 8 * 3 * 2                            # q, k, v, o, 2 norms, ff in/out: L' x L each
  assert cx.count_params(operator) == growth.operator_size(plan, options) == width + depth


def test_only_axes_that_grow_have_expanders():
  _, _, plan, operator = grown(lm(8, 1, 2), lm(8, 3, 2), METHODS["ligo"])
  assert plan.grown == () and list(operator["width"]) == []
  assert {w.shape for w in jax.tree_util.tree_leaves(operator["depth"])} == {(3, 1)}


@pytest.mark.parametrize("small, large, message", [
    (lm(8, 2, 2), lm(16, 2, 2), "heads grow in number, not width"),
    (lm(16, 2, 4), lm(8, 2, 2), "d_model must be at least"),
    (lm(8, 2, 2), lm(8, 1, 2), "n_layers must be at least"),
    (lm(8, 2, 2), lm(8, 2, 2, pre_norm=False), "differ in pre_norm"),
    (lm(8, 2, 2, n_kv_heads=1), lm(16, 2, 4, n_kv_heads=1), "query heads per key/value head"),
    (lm(8, 1, 2), cm.TransformerEncoder(40, 3, 8, d_ff=32, n_layers=1, n_heads=2), "cannot grow a TransformerLM"),
    (cx.layers.Serial(cx.layers.Dense(4)), lm(8, 1, 2), "exactly one of"),
])
def test_models_that_cannot_be_grown_are_named(small, large, message):
  with pytest.raises(GrowthError, match=message):
    growth.make_plan(small, {}, large)


def test_an_unknown_parameter_is_named_by_its_path():
  small = lm(8, 1, 2)
  params, _ = small.init(jax.random.key(0), TOKENS)
  params["blocks"]["adapter"] = {"kernel": jnp.zeros((1, 8, 8))}
  with pytest.raises(GrowthError, match="'blocks/adapter/kernel'"):
    growth.make_plan(small, params, lm(16, 2, 4))


def test_sizes_growth_keeps_must_match_and_the_error_names_the_leaf():
  small = lm(8, 1, 2)
  large = cm.TransformerLM(50, 16, d_ff=64, n_layers=2, n_heads=4, positions="rotary")   # another vocabulary
  with pytest.raises(ValueError, match=r"embed/embedding: expected \(50, 16\) \(large model\), got \(40, 16\)"):
    growth.Grown(small, large).init(jax.random.key(0), TOKENS)


def test_growth_options_are_checked():
  with pytest.raises(ValueError, match="GrowthOptions.width: expected one of"):
    GrowthOptions(width="zeros")
  with pytest.raises(ValueError, match="GrowthOptions.noise"):
    GrowthOptions(noise=-1.0)


def test_grown_agrees_on_shapes_with_its_apply_and_with_the_large_model():
  small, large = lm(8, 1, 2), lm(16, 2, 4)
  model = growth.Grown(small, large)
  params, state = model.init(jax.random.key(0), TOKENS)
  outputs, _ = model.apply(params, state, tokens(shape=TOKENS.shape))
  assert model.output_signature(TOKENS) == cx.shapes.signature(outputs) == large.output_signature(TOKENS)
  assert str(model).startswith("Grown(TransformerLM(d_model=8, d_ff=32, n_heads=2")
  assert "-> TransformerLM(d_model=16" in str(model)
