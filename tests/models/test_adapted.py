"""models.LoRAModel: a model factory's model with LoRA adapters, the plain model's function at the start (so a
first stage's run starts it), and a decoder in predict mode like any LM."""

import jax
import jax.numpy as jnp
import numpy as np

import combinax as cx
from combinax import decoding
from combinax.models import LoRAModel, TransformerLM
from combinax.paths import unflatten

KEY = jax.random.key(0)
IDS = jax.random.randint(jax.random.key(1), (2, 7), 1, 20)


def lm(mode="train"):
  return TransformerLM(20, 16, 32, n_layers=2, n_heads=2, max_len=16, dropout=0.0, positions="rotary", mode=mode)


def adapted(mode="train"):
  return LoRAModel(lm, targets=["blocks/attention/*/kernel", "blocks/ff/*/kernel"], rank=2, mode=mode)


def test_the_params_are_the_models_plus_adapters_and_start_as_its_function():
  plain, _ = lm().init(KEY, IDS)
  flat = dict(cx.leaves_with_paths(adapted().init(KEY, IDS)[0]))
  assert ({p: v.shape for p, v in flat.items() if "_lora_" not in p} ==
          {p: v.shape for p, v in cx.leaves_with_paths(plain)})
  assert sorted(p for p in flat if p.endswith("_lora_b")) == [
      "blocks/attention/k/kernel_lora_b", "blocks/attention/o/kernel_lora_b", "blocks/attention/q/kernel_lora_b",
      "blocks/attention/v/kernel_lora_b", "blocks/ff/in/kernel_lora_b", "blocks/ff/out/kernel_lora_b"]
  assert flat["blocks/attention/q/kernel_lora_a"].shape == (2, 16, 2)   # one adapter per stacked block
  # A first stage's weights (here: the plain model's) with fresh adapters: the plain model's logits.
  started = unflatten({**flat, **dict(cx.leaves_with_paths(plain))})
  np.testing.assert_allclose(adapted().apply(started, {}, IDS)[0], lm().apply(plain, {}, IDS)[0], atol=1e-6)


def test_with_trained_adapters_decoding_equals_greedy_recomputation_with_the_adapters_merged():
  params = unflatten({p: v + 0.1 * jax.random.normal(jax.random.key(i), v.shape) if p.endswith("_lora_b") else v
                      for i, (p, v) in enumerate(cx.leaves_with_paths(adapted().init(KEY, IDS)[0]))})
  merged = adapted().merged_params(params)
  assert not np.allclose(adapted("eval").apply(params, {}, IDS)[0],
                         lm("eval").apply(unflatten({p: v for p, v in cx.leaves_with_paths(params)
                                                     if "_lora_" not in p}), {}, IDS)[0], atol=1e-3)
  greedy = decoding.autoregressive_sample(adapted("predict"), params, IDS[:, :3], max_length=4, temperature=0)
  ids = IDS[:, :3]
  for _ in range(4):   # (position t predicts token t from the tokens before it: one more position, the next token)
    logits = lm("eval").apply(merged, {}, jnp.pad(ids, ((0, 0), (0, 1))))[0]
    ids = jnp.concatenate([ids, jnp.argmax(logits[:, -1:], axis=-1).astype(ids.dtype)], axis=1)
  np.testing.assert_array_equal(greedy, ids[:, 3:])
