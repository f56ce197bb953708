"""LoRA adapters: the adapted model starts equal to the original, trains only its adapters, merges back exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import combinax as cx
from combinax import layers as cl
from combinax import models as cm
from combinax.layers import LayerError

X = cx.ShapeDtype((2, 4))


def _mlp():
  return cl.Serial(cl.Dense(8, name="up"), cl.Relu(), cl.Dense(3, name="down"))


def test_starts_equal_to_the_original_and_merges_exactly():
  lora = cl.LoRA(_mlp(), targets="*/kernel", rank=2, alpha=4.0)
  params, _ = lora.init(jax.random.key(0), X)
  assert params["up"]["kernel_lora_a"].shape == (4, 2) and params["up"]["kernel_lora_b"].shape == (2, 8)
  assert not params["up"]["kernel_lora_b"].any()
  x = jax.random.normal(jax.random.key(1), (2, 4))
  plain = lora.merged_params(params)
  np.testing.assert_array_equal(plain["up"]["kernel"], params["up"]["kernel"])
  np.testing.assert_array_equal(lora.apply(params, {}, x)[0], lora.layer.apply(plain, {}, x)[0])
  b = jax.random.normal(jax.random.key(2), (2, 3))
  params["down"]["kernel_lora_b"] = b
  merged = lora.merged_params(params)
  np.testing.assert_allclose(merged["down"]["kernel"],
                             params["down"]["kernel"] + 2.0 * params["down"]["kernel_lora_a"] @ b, rtol=1e-6)
  np.testing.assert_allclose(lora.apply(params, {}, x)[0], lora.layer.apply(merged, {}, x)[0], rtol=1e-6)


def test_gradients_of_the_adapters_are_right():
  lora = cl.LoRA(_mlp(), targets="up/kernel", rank=2)
  params, _ = lora.init(jax.random.key(0), X)
  params["up"]["kernel_lora_b"] = jax.random.normal(jax.random.key(3), (2, 8))
  x = jax.random.normal(jax.random.key(1), (2, 4))

  def f(a, b):
    p = {**params, "up": {**params["up"], "kernel_lora_a": a, "kernel_lora_b": b}}
    return lora.apply(p, {}, x)[0]

  check_grads(f, (params["up"]["kernel_lora_a"], params["up"]["kernel_lora_b"]), order=1, modes=["rev"],
              atol=1e-2, rtol=1e-2)


def test_stacked_transformer_kernels_get_one_adapter_per_layer():
  lm = cm.TransformerLM(20, d_model=8, d_ff=16, n_layers=3, n_heads=2, dropout=0.0)
  lora = cl.LoRA(lm, targets=["blocks/attention/q/kernel", "blocks/attention/v/kernel"], rank=4)
  ids = cx.ShapeDtype((2, 5), jnp.int32)
  params, _ = lora.init(jax.random.key(0), ids)
  assert params["blocks"]["attention"]["q"]["kernel_lora_a"].shape == (3, 8, 4)
  assert params["blocks"]["attention"]["v"]["kernel_lora_b"].shape == (3, 4, 8)
  assert cx.paths(lora.merged_params(params)) == cx.paths(lm.init(jax.random.key(0), ids)[0])
  assert lora.output_signature(ids) == cx.ShapeDtype((2, 5, 20))


def test_bad_targets_are_named():
  with pytest.raises(LayerError, match="no parameter matches the LoRA targets"):
    cl.LoRA(_mlp(), targets="*/attention/*").init(jax.random.key(0), X)
  with pytest.raises(LayerError, match="up/bias is not"):
    cl.LoRA(_mlp(), targets="up/*").init(jax.random.key(0), X)
  with pytest.raises(LayerError, match="rank must be at least 1"):
    cl.LoRA(_mlp(), rank=0)


def test_training_only_the_adapters_lowers_the_loss_and_keeps_the_base(tmp_path):
  from combinax.pretrained.export import load_safetensors, save_safetensors
  from combinax.pretrained.families import PretrainedError
  from combinax.train.step import TrainStep
  import optax
  lm = cm.TransformerLM(16, d_model=16, d_ff=32, n_layers=2, n_heads=2, dropout=0.0)
  lora = cl.LoRA(lm, targets="blocks/*/kernel", rank=4, alpha=8.0)
  tokens = np.tile(np.arange(1, 9, dtype=np.int32), (8, 2))            # a pattern to learn
  batch = (tokens, tokens)
  step = TrainStep(lora, cl.CategoryCrossEntropy(), optax.adam(1e-2), trainable=["*_lora_*"])
  state = step.init(jax.random.key(0), batch)
  base = jax.tree_util.tree_map(np.asarray, lora.merged_params(state.params))
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  for path, value in cx.leaves_with_paths(state.params):
    if "_lora_" not in path:  # the base weights are bit-identical
      np.testing.assert_array_equal(value, cx.select(base, path)[path])
  merged = lora.merged_params(state.params)
  file = save_safetensors(merged, tmp_path / "adapted.safetensors")
  reloaded = load_safetensors(file, template=base)
  other = cm.TransformerLM(16, d_model=8, d_ff=32, n_layers=2, n_heads=2).init(jax.random.key(0), tokens)[0]
  wrong = r"blocks/attention/k/kernel: shape \(2, 16, 16\), the model wants \(2, 8, 8\)"
  with pytest.raises(PretrainedError, match=wrong):
    load_safetensors(file, template=other)
  out, _ = lm.apply(reloaded, {}, tokens)
  np.testing.assert_allclose(out, lora.apply(state.params, {}, tokens)[0], atol=1e-5)
