"""The jitted training step: accumulation, frozen params, 1 vs 8 devices (data-parallel, FSDP, tensor-parallel),
non-finite losses, mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from combinax import layers as cl
from combinax import sharding
from combinax.models import MLP, TransformerLM
from combinax.train import objective
from combinax.train.step import TrainStep
from combinax.train.trainer import TrainTask

KEY = jax.random.key(0)


def mlp_batch(seed=0, n=16):
  x = jax.random.normal(jax.random.key(seed), (n, 8))
  return x, (jnp.sum(x, axis=1) > 0).astype(jnp.int32)


def run(step_fn, batches, seed=0):
  state = step_fn.init(jax.random.key(seed), batches[0])
  for batch in batches:
    state, metrics = step_fn(state, batch)
  return state, metrics


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_accumulating_micro_batches_equals_one_big_batch():
  batches = [mlp_batch(i) for i in range(3)]
  make = lambda k: TrainStep(MLP((16, 2)), cl.CategoryCrossEntropy(), optax.sgd(0.5), accumulate_steps=k)
  whole, _ = run(make(1), batches)
  accumulated, _ = run(make(4), batches)
  assert_trees_close(whole.params, accumulated.params)


def test_frozen_params_stay_bit_identical():
  batches = [mlp_batch(i) for i in range(3)]
  step = TrainStep(MLP((16, 2)), cl.CategoryCrossEntropy(), optax.adam(0.1), frozen=["Dense_0/*"])
  start = step.init(jax.random.key(0), batches[0])
  before = jax.tree_util.tree_map(np.asarray, start.params)
  state, _ = run(step, batches)
  np.testing.assert_array_equal(state.params["Dense_0"]["kernel"], before["Dense_0"]["kernel"])
  np.testing.assert_array_equal(state.params["Dense_0"]["bias"], before["Dense_0"]["bias"])
  assert not np.array_equal(state.params["Dense_1"]["kernel"], before["Dense_1"]["kernel"])


def test_one_device_equals_eight_data_parallel_and_fsdp():
  batches = [mlp_batch(i) for i in range(3)]
  model = MLP((64, 2))
  one = TrainStep(model, cl.CategoryCrossEntropy(), optax.adam(0.01), mesh=sharding.make_mesh(devices=jax.devices()[:1]))
  eight = TrainStep(model, cl.CategoryCrossEntropy(), optax.adam(0.01))
  fsdp = TrainStep(model, cl.CategoryCrossEntropy(), optax.adam(0.01), rules=sharding.fsdp_rules(min_size=64))
  reference, _ = run(one, batches)
  for other in (eight, fsdp):
    state, _ = run(other, batches)
    assert_trees_close(reference.params, state.params)
  kernel = state.params["Dense_0"]["kernel"]                       # (8, 64): split on its larger axis
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "data")
  assert len({s.device for s in kernel.addressable_shards}) == 8
  assert kernel.addressable_shards[0].data.shape == (8, 8)
  mu = state.opt_state[0].mu["Dense_0"]["kernel"]                   # the optimizer state is split the same way
  assert mu.sharding.spec == kernel.sharding.spec


def test_tensor_parallel_transformer_matches_data_parallel():
  tokens = jax.random.randint(KEY, (8, 6), 0, 16, jnp.int32)
  batches = [(tokens, tokens, jnp.ones(tokens.shape))]
  model = TransformerLM(16, d_model=16, d_ff=32, n_layers=2, n_heads=4, dropout=0.0)
  # SGD, not Adam: the key bias's true gradient is 0 (softmax ignores it), and Adam would blow rounding noise up.
  data_parallel = TrainStep(model, cl.WeightedCategoryCrossEntropy(), optax.sgd(0.1))
  tensor_parallel = TrainStep(model, cl.WeightedCategoryCrossEntropy(), optax.sgd(0.1),
                              mesh=sharding.make_mesh(model_parallel=2), rules=sharding.tensor_parallel_rules())
  a, _ = run(data_parallel, batches * 2)
  b, _ = run(tensor_parallel, batches * 2)
  assert_trees_close(a.params, b.params, rtol=1e-4, atol=1e-5)
  q = b.params["blocks"]["attention"]["q"]["kernel"]               # (layers, d_in, d_out): split on d_out
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, None, "model")


def test_a_non_finite_loss_freezes_the_state_and_names_the_step():
  good, bad = mlp_batch(0), (mlp_batch(1)[0].at[0, 0].set(jnp.nan), mlp_batch(1)[1])
  # Adam's moments and batch-norm statistics must freeze as well as the weights.
  model = cl.Serial(cl.Dense(16), cl.BatchNorm(), cl.Relu(), cl.Dense(2))
  step = TrainStep(model, cl.CategoryCrossEntropy(), optax.adam(0.1))
  state = step.init(KEY, good)
  state, _ = step(state, good)
  after_good = jax.tree_util.tree_map(np.asarray, (state.params, state.opt_state, state.state))
  state, metrics = step(state, bad)
  state, _ = step(state, good)   # stays frozen after the first bad step
  assert int(state.bad_step) == 1 and int(state.step) == 1
  assert not np.isfinite(float(metrics["loss"]))
  assert jax.tree_util.tree_leaves(state.state)  # the model does have state
  jax.tree_util.tree_map(np.testing.assert_array_equal, (state.params, state.opt_state, state.state), after_good)


def test_l2_and_mixed_precision():
  batches = [mlp_batch(i) for i in range(2)]
  plain, _ = run(TrainStep(MLP((16, 2)), cl.CategoryCrossEntropy(), optax.sgd(0.1)), batches)
  with_l2, metrics = run(TrainStep(MLP((16, 2)), cl.CategoryCrossEntropy(), optax.sgd(0.1), l2_weight=0.5), batches)
  assert float(metrics["total_loss"]) > float(metrics["loss"])
  assert float(jnp.sum(with_l2.params["Dense_0"]["kernel"] ** 2)) < float(jnp.sum(plain.params["Dense_0"]["kernel"] ** 2))
  np.testing.assert_allclose(with_l2.params["Dense_0"]["bias"], plain.params["Dense_0"]["bias"], rtol=0.2, atol=0.05)
  in_bf16 = objective.compute_dtype(jnp.bfloat16)(objective.plain(MLP((16, 2)), cl.CategoryCrossEntropy()))
  bf16, metrics = run(TrainStep(MLP((16, 2)), in_bf16, optax.sgd(0.1)), batches)
  assert bf16.params["Dense_0"]["kernel"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
  assert_trees_close(bf16.params, plain.params, rtol=0.05, atol=0.02)


def test_batch_must_split_over_the_devices():
  step = TrainStep(MLP((16, 2)), cl.CategoryCrossEntropy(), optax.sgd(0.1))
  state = step.init(KEY, mlp_batch(0, n=16))
  with pytest.raises(ValueError, match="multiple of the 8 data-parallel devices"):
    step(state, mlp_batch(0, n=12))


@pytest.mark.parametrize("loss_layer", [cl.WeightedCategoryCrossEntropy(label_smoothing=0.1),
                                        cl.CategoryCrossEntropy()])
def test_fused_logits_loss_trains_exactly_like_the_plain_path(loss_layer):
  tokens = jax.random.randint(KEY, (8, 12), 0, 40, jnp.int32)
  weights = (jax.random.uniform(jax.random.key(1), tokens.shape) > 0.2).astype(jnp.float32)
  batches = [(tokens, tokens, weights)] * 3
  model = TransformerLM(40, d_model=16, d_ff=32, n_layers=2, n_heads=2, dropout=0.1)
  # SGD: Adam would turn the rounding noise of the key bias's zero gradient into full-size steps.
  fused = TrainStep(model, objective.fused_head(model, loss_layer), optax.sgd(0.1), l2_weight=0.01)
  plain = TrainStep(model, loss_layer, optax.sgd(0.1), l2_weight=0.01)   # the default: the model as written
  a, metrics_a = run(fused, batches)
  b, metrics_b = run(plain, batches)
  np.testing.assert_allclose(metrics_a["total_loss"], metrics_b["total_loss"], rtol=1e-5)
  assert_trees_close(a.params, b.params, rtol=1e-4, atol=1e-5)


def test_fusion_is_asked_for_and_refused_with_the_reason_where_it_would_not_be_exact():
  from combinax.train.fused_head import fused_head
  lm = dict(d_model=8, d_ff=16, n_layers=1, n_heads=2)
  assert fused_head(TransformerLM(16, **lm), cl.CategoryCrossEntropy()).key == "logits"
  dense = cl.Dense(4)
  refused = [(TransformerLM(16, tie_embeddings=True, **lm), cl.CategoryCrossEntropy(), "ends in TiedLogits"),
             (TransformerLM(16, **lm), cl.L2Loss(), "the loss is L2Loss"),
             (cl.Serial(dense, cl.Relu(), dense), cl.CategoryCrossEntropy(), "shared"),
             (cl.Serial(cl.Dense(4), cl.Softmax()), cl.CategoryCrossEntropy(), "ends in Softmax"),
             (cl.Dense(4), cl.CategoryCrossEntropy(), "not a Serial")]
  for model, loss_layer, reason in refused:
    with pytest.raises(ValueError, match=f"fuse_loss=True: .*{reason}.*Set fuse_loss=False"):
      objective.fused_head(model, loss_layer)
  task = TrainTask(data=lambda: None, loss_layer=cl.CategoryCrossEntropy(), fuse_loss=True)
  with pytest.raises(ValueError, match="compute_dtype=bfloat16"):
    task.make_objective(TransformerLM(16, **lm), None, compute_dtype=jnp.bfloat16)
  # A (batch, features) classifier has the fusable shape but takes the plain path inside (no length axis).
  batches = [mlp_batch(i) for i in range(2)]
  mlp = MLP((16, 2))
  make = lambda fuse: TrainStep(mlp, (objective.fused_head if fuse else objective.plain)(
      mlp, cl.CategoryCrossEntropy()), optax.sgd(0.5))
  assert_trees_close(run(make(True), batches)[0].params, run(make(False), batches)[0].params)
