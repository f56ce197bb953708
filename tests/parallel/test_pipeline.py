"""GPipe: the pipelined stack computes what the plain stack computes, on its stages' devices, with the bubble the
schedule says and nothing computed on bubbles."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import combinax as cx
from combinax import layers as cl
from combinax.models import DecoderBlock, EncoderBlock, TransformerOptions
from combinax.parallel import Pipeline, gpipe, schedule

KEY = jax.random.key(0)
N_LAYERS = 8


def block():
  return cl.Residual(cl.LayerNorm(), cl.Dense(8), cl.Tanh(), cl.Dense(8))


def inputs(batch=8):
  return jax.random.normal(jax.random.key(1), (batch, 5, 8))


def mesh(stages):
  return Mesh(np.array(jax.devices()).reshape(stages, 8 // stages), ("stage", "data"))


def loss_and_grads(model, params, x, on=None):
  """Loss and gradients of a jitted step, run under the mesh `on` (or none)."""
  step = jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply(p, {}, x)[0] ** 2)))
  if on is None:
    return step(params)
  with jax.set_mesh(on):
    return step(params)


def max_relative_difference(a, b):
  return max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-30))
             for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("stages", [2, 4, 8])
@pytest.mark.parametrize("with_data_axis", [False, True])
def test_pipelined_loss_and_gradients_equal_the_plain_stacks(stages, with_data_axis):
  plain = cl.Repeat(block(), N_LAYERS, name="blocks")
  x = inputs()
  params, _ = plain.init(KEY, x)
  want, want_grads = loss_and_grads(plain, params, x)
  for microbatches in (1, 2, 8):
    pipelined = Pipeline(block(), N_LAYERS, stages=stages, microbatches=microbatches, name="blocks")
    loss, grads = loss_and_grads(pipelined, params, x, on=mesh(stages) if with_data_axis else None)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert max_relative_difference(grads, want_grads) < 1e-5    # measured: <= 1.2e-6 here


def test_the_params_are_a_repeats_so_checkpoints_move_both_ways():
  x = inputs()
  plain, pipelined = cl.Repeat(block(), N_LAYERS, name="blocks"), Pipeline(block(), N_LAYERS, stages=4,
                                                                             microbatches=2, name="blocks")
  ours, _ = pipelined.init(KEY, x)
  theirs, _ = plain.init(KEY, x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours, theirs)   # the same paths, shapes and values
  assert pipelined.output_signature(x) == plain.output_signature(x) == cx.signature(x)
  np.testing.assert_allclose(pipelined.apply(theirs, {}, x)[0], plain.apply(ours, {}, x)[0], rtol=1e-5, atol=1e-6)


def test_transformer_blocks_with_a_padding_mask_pipeline_exactly():
  options = TransformerOptions(d_model=8, d_ff=16, n_heads=2, dropout=0.0, max_len=8)
  ids = jax.random.randint(KEY, (8, 6), 0, 3)
  x, mask = jax.random.normal(jax.random.key(2), (8, 6, 8)), (ids > 0)[:, None, None, :]
  for make, stack in ((lambda: EncoderBlock(options), (x, mask)), (lambda: DecoderBlock(options), x)):
    plain = cl.Repeat(make(), 4, name="blocks")
    params, _ = plain.init(KEY, stack)
    pipelined = Pipeline(make(), 4, stages=4, microbatches=4, name="blocks")
    with jax.set_mesh(mesh(4)):
      got = jax.jit(lambda p, s: pipelined.apply(p, {}, s)[0])(params, stack)
    want = plain.apply(params, {}, stack)[0]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


def test_a_few_training_steps_give_the_params_of_unpipelined_training():
  x, target = inputs(), jax.random.normal(jax.random.key(3), (8, 5, 8))
  optimizer = optax.adam(1e-2)

  def train(model, params):
    state = optimizer.init(params)
    step = jax.jit(lambda p, s: _sgd_step(model, optimizer, p, s, x, target))
    for _ in range(3):
      params, state = step(params, state)
    return params

  params, _ = cl.Repeat(block(), N_LAYERS).init(KEY, x)
  want = train(cl.Repeat(block(), N_LAYERS), params)
  with jax.set_mesh(mesh(4)):
    got = train(Pipeline(block(), N_LAYERS, stages=4, microbatches=4), params)
  assert max_relative_difference(got, want) < 1e-4


def _sgd_step(model, optimizer, params, opt_state, x, target):
  grads = jax.grad(lambda p: jnp.mean((model.apply(p, {}, x)[0] - target) ** 2))(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


@pytest.mark.parametrize("stages, microbatches", [(2, 1), (2, 6), (4, 4), (4, 16), (8, 8), (8, 32)])
def test_the_schedules_bubble_is_k_minus_1_over_m_plus_k_minus_1(stages, microbatches):
  table = schedule(stages, microbatches)
  assert table.shape == (microbatches + stages - 1, stages)
  assert (table < 0).mean() == pytest.approx((stages - 1) / (microbatches + stages - 1))
  for k in range(stages):   # every micro-batch passes every stage once, in order, one iteration after the stage before
    assert table[:, k][table[:, k] >= 0].tolist() == list(range(microbatches))
    assert np.flatnonzero(table[:, k] == 0)[0] == k


def test_bubbles_are_never_computed_on():
  stages, microbatches = 4, 3
  kernels = jax.random.normal(KEY, (stages, 6, 6)) / 3
  xs = jax.random.normal(jax.random.key(1), (microbatches, 2, 6))

  def stage_fn(kernel, stage, items, micro):
    return (jnp.tanh(items[0] @ kernel) / jnp.sqrt(jnp.sum(items[0] ** 2) + 1.0),)   # NaN in, NaN out

  def run(fill):
    return jax.value_and_grad(lambda k: jnp.sum(gpipe(stage_fn, k, (xs,), stages=stages, fill=fill)[0]))(kernels)

  (clean, clean_grads), (dirty, dirty_grads) = run(0.0), run(jnp.nan)
  assert np.isfinite(dirty) and np.all(np.isfinite(dirty_grads))
  np.testing.assert_array_equal(dirty, clean)
  np.testing.assert_array_equal(dirty_grads, clean_grads)
  reference = xs
  for k in range(stages):
    reference = jax.vmap(lambda x: stage_fn(kernels[k], k, (x,), 0)[0])(reference)
  np.testing.assert_allclose(run(0.0)[0], jnp.sum(reference), rtol=1e-6)


@pytest.mark.parametrize("stages", [2, 8])
def test_params_live_on_their_stages_devices(stages):
  x = inputs()
  model = Pipeline(block(), N_LAYERS, stages=stages, microbatches=4, name="blocks")
  params, _ = model.init(KEY, x)
  placed = jax.device_put(params, NamedSharding(mesh(stages), P("stage")))
  total = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params))
  for device in jax.devices():
    held = sum(shard.data.nbytes for leaf in jax.tree_util.tree_leaves(placed) for shard in leaf.addressable_shards
               if shard.device == device)
    assert held == total // stages
  kernel = placed["Dense_0"]["kernel"]    # the device at stage k holds layers k * L/K ... (k + 1) * L/K - 1
  for shard in kernel.addressable_shards:
    stage = list(mesh(stages).devices.flat).index(shard.device) // (8 // stages)
    np.testing.assert_array_equal(shard.data, params["Dense_0"]["kernel"][shard.index])
    assert shard.index[0] == slice(stage * N_LAYERS // stages, (stage + 1) * N_LAYERS // stages)
  _, grads = loss_and_grads(model, placed, x, on=mesh(stages))
  assert grads["Dense_0"]["kernel"].sharding.spec == P("stage")
  step = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, {}, x)[0])))
  with jax.set_mesh(mesh(stages)):   # the shift between stages is a permute between neighbouring devices
    assert "collective-permute" in step.lower(placed).compile().as_text()


def test_the_compiled_program_does_not_grow_with_the_micro_batches_or_the_depth():
  x = inputs(32)
  sizes = []
  for n_layers, microbatches in ((8, 4), (8, 32), (32, 4)):
    params, _ = cl.Repeat(block(), n_layers).init(KEY, x)
    model = Pipeline(block(), n_layers, stages=4, microbatches=microbatches)
    text = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, {}, x)[0]))).lower(params).as_text()
    sizes.append(len(text.splitlines()))
  # One scan over the M + K - 1 iterations, and in each stage one over its layers: the program's size is the same.
  assert max(sizes) - min(sizes) <= 0.02 * min(sizes), sizes


def test_dropout_draws_a_mask_per_layer_and_micro_batch():
  model = Pipeline(cl.Serial(cl.Dense(8), cl.Dropout(0.5)), 4, stages=2, microbatches=2)
  x = inputs()
  params, _ = model.init(KEY, x)
  a, b = (model.apply(params, {}, x, rng=jax.random.key(k), train=True)[0] for k in (1, 2))
  assert np.all(np.isfinite(a)) and not np.allclose(a, b)
  np.testing.assert_array_equal(model.apply(params, {}, x, rng=jax.random.key(1))[0], model.apply(params, {}, x)[0])


def test_bad_settings_say_what_is_wrong():
  with pytest.raises(cx.LayerError, match="the stages must split the layers evenly"):
    Pipeline(block(), 6, stages=4, microbatches=2)
  four_stages = Pipeline(block(), 8, stages=4, microbatches=2)
  params, _ = four_stages.init(KEY, inputs())
  with pytest.raises(cx.LayerError, match="'stage' axis must have one device group per stage"):
    loss_and_grads(four_stages, params, inputs(), on=mesh(2))
  model = Pipeline(block(), 8, stages=2, microbatches=3)
  params, _ = model.init(KEY, inputs())
  with pytest.raises(cx.LayerError, match="3 micro-batches divide"):
    model.apply(params, {}, inputs())
  stateful = Pipeline(cl.BatchNorm(), 2, stages=2, microbatches=2)
  params, state = stateful.init(KEY, inputs())
  with pytest.raises(cx.LayerError, match="keeps state"):
    stateful.apply(params, state, inputs())


def test_a_pipelined_transformer_lm_has_the_plain_ones_loss_and_gradients():
  from combinax.models import TransformerLM
  ids = jax.random.randint(jax.random.key(1), (16, 16), 0, 64)
  kw = dict(d_model=32, d_ff=64, n_layers=8, n_heads=4, dropout=0.0, max_len=16)
  params, _ = TransformerLM(64, **kw).init(KEY, ids)

  def loss_and_grads(model, on=None):
    step = jax.jit(jax.value_and_grad(
        lambda p: cl.CategoryCrossEntropy().apply({}, {}, (model.apply(p, {}, ids)[0], ids))[0]))
    if on is None:
      return step(params)
    with jax.set_mesh(on):
      return step(params)

  want, want_grads = loss_and_grads(TransformerLM(64, **kw))
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(want_grads))
  loss, grads = loss_and_grads(TransformerLM(64, **kw, pipeline_stages=4, microbatches=4), on=mesh(4))
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  # Measured over K = 2, 4, 8 and M = 1, 4, 16: at most 6e-8 against a largest gradient of 0.13. (The key bias's
  # gradient is zero up to rounding, ~1e-9, so a per-leaf relative bound would measure noise.)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale), grads, want_grads)
