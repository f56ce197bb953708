"""combinax.quant: int8 / 4-bit weights bit-exact with llama.cpp's arithmetic (`gguf.quants`), within their error
bounds of the float weights, computing exactly what their dequantized weights compute, as ordinary pytrees (jit,
scan over stacked blocks, checkpoints), and in the memory they promise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl
from combinax import quant
from combinax.models import TransformerLM
from combinax.paths import leaves_with_paths
from combinax.quant import QuantizedArray, kernels, quantize_array
from combinax.store import checkpoints

KINDS = ["int8", "q4", "q4_1"]


def weights(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def gguf_quants():
  return pytest.importorskip("gguf.quants", reason="the gguf package (pip install 'combinax[pretrained]')")


GGUF_TYPES = {"int8": "Q8_0", "q4": "Q4_0", "q4_1": "Q4_1"}


@pytest.mark.parametrize("kind", KINDS)
def test_quantizing_in_groups_of_32_is_bit_exact_with_llama_cpps_quantizer(kind, gguf_quants):
  qtype = getattr(gguf_quants.GGMLQuantizationType, GGUF_TYPES[kind])
  w = weights((64, 96)) * np.linspace(0.01, 3.0, 96, dtype=np.float32)   # (k, n), n rows in GGUF's order
  w[:32, 5] = 0.0                                                         # an all-zero block: scale 0
  raw = gguf_quants.quantize(np.ascontiguousarray(w.T), qtype)
  ours = quantize_array(w, kind, group=32, axis=-2)
  # The same bytes: our values and scales are the file's blocks...
  kept = quant.from_gguf_blocks(raw, kind)
  for a, b in [(ours.values, kept.values), (ours.scale, kept.scale), (ours.offset, kept.offset)]:
    assert (a is None) == (b is None)
    if a is not None:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # ... and the same weights when read back.
  reference = gguf_quants.dequantize(raw, qtype).T
  np.testing.assert_array_equal(np.asarray(ours.dequantize()), reference)
  np.testing.assert_array_equal(np.asarray(kept.dequantize()), reference)


@pytest.mark.parametrize("kind, bound", [("int8", 0.5), ("q4", 1.0), ("q4_1", 0.5)])
def test_each_weight_is_within_its_groups_step_of_the_float_one(kind, bound):
  # int8 and q4_1 round to the nearest step (half a scale at most); q4's largest positive values clip at 7 steps
  # of a scale set by the most negative extreme (one scale at most). The integers are found with the float32 scale
  # and the stored scale (and q4_1's offset) is float16: up to |q| * scale * 2^-11 (and |offset| * 2^-11) more.
  w = weights((256, 48), seed=1)
  q = quantize_array(w, kind, group=32, axis=-2)
  per_weight = lambda a: np.repeat(np.abs(np.asarray(a, np.float32)), 32, axis=-1).T   # (k, n)
  steps, largest = per_weight(q.scale), {"int8": 127, "q4": 8, "q4_1": 15}[kind]
  rounding = largest * steps * 2.0 ** -11 + (per_weight(q.offset) * 2.0 ** -11 if q.offset is not None else 0)
  error = np.abs(np.asarray(q.dequantize()) - w)
  assert np.all(error <= bound * steps + rounding + 1e-7), np.max(error / steps)
  assert np.max(error / steps) > 0.9 * bound   # (and the bound is not loose)


def test_int8_per_channel_has_one_float32_scale_per_output():
  w = weights((40, 7))
  q = quantize_array(w, "int8", axis=-2)
  assert q.scale.shape == (7, 1) and q.scale.dtype == jnp.float32 and q.shape == (40, 7)
  np.testing.assert_allclose(np.asarray(q.scale)[:, 0], np.abs(w).max(axis=0) / 127, rtol=1e-7)
  assert np.max(np.abs(np.asarray(q.dequantize()) - w) / (np.abs(w).max(axis=0) / 127)) <= 0.5 + 1e-6


def test_values_on_the_grid_come_back_exactly():
  q = np.random.default_rng(2).integers(-127, 128, size=(32, 8)).astype(np.float32)
  q[0] = 127                                     # each column's largest: its scale is exactly 0.25
  w = q * np.float32(0.25)
  np.testing.assert_array_equal(np.asarray(quantize_array(w, "int8", axis=-2).dequantize()), w)


@pytest.mark.parametrize("kind", KINDS)
def test_contracting_in_the_stored_layout_equals_a_matmul_with_the_dequantized_weight(kind):
  x = jnp.asarray(weights((3, 5, 64), seed=3))
  kernel = quantize_array(weights((64, 24)), kind, group=32, axis=-2)
  np.testing.assert_allclose(kernel.contract(x, axis=-2), x @ kernel.dequantize(), rtol=1e-5, atol=1e-5)
  table = quantize_array(weights((24, 64)), kind, group=32, axis=-1)
  np.testing.assert_allclose(table.contract(x, axis=-1), x @ table.dequantize().T, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"grouped along axis -2, and its use contracts axis -1: quantize it with "
                                       r"QuantSpec\(kind, group, axis=-1\)"):
    kernel.contract(x, axis=-1)


def model_and_params():
  model = TransformerLM(32, d_model=32, d_ff=64, n_layers=2, n_heads=2, max_len=16, mode="eval", dropout=0.0,
                        tie_embeddings=True)
  params, state = model.init(jax.random.key(0), cx.ShapeDtype((2, 16), jnp.int32))
  return model, params, state


RULES = {"int8": [("blocks/*kernel", "int8"), ("embed/embedding", "int8")],
         "q4": [("blocks/*kernel", "q4"), ("embed/embedding", "q4")]}


@pytest.mark.parametrize("kind", RULES)
def test_a_quantized_model_computes_what_its_dequantized_weights_compute(kind):
  model, params, state = model_and_params()
  small = quant.quantize(params, RULES[kind])
  ids = jax.random.randint(jax.random.key(1), (2, 16), 0, 32)
  apply = jax.jit(lambda p: model.apply(p, state, ids)[0])
  # The same weights; the matmul in the stored layout (and per nibble) may sum in another order: equal
  # to float32 rounding (a few 1e-7 of logits ~1).
  np.testing.assert_allclose(apply(small), apply(quant.dequantize(small)), atol=5e-6, rtol=1e-5)
  # and stays close to the float model. Random weights are the hard case: 16 levels over a group's +-2.5 sigma put
  # ~10% noise on each 4-bit weight, which two blocks make ~18% of the logits (int8: ~1%); a trained model's
  # perplexity is what matters (benchmarks/inference.py).
  y = apply(params)
  error = float(jnp.linalg.norm(apply(small) - y) / jnp.linalg.norm(y))
  assert error < {"int8": 0.02, "q4": 0.25}[kind], error


def test_the_stacked_blocks_quantize_per_layer_and_scan_as_arrays():
  model, params, state = model_and_params()
  small = quant.quantize(params, RULES["int8"])
  q_kernel = small["blocks"]["attention"]["q"]["kernel"]
  assert isinstance(q_kernel, QuantizedArray) and q_kernel.shape == params["blocks"]["attention"]["q"]["kernel"].shape
  assert q_kernel.values.shape[0] == 2 and q_kernel.scale.shape[0] == 2   # the layer axis leads: scan slices it
  assert "blocks/attention/q/kernel/values" in cx.paths(small)


def test_quantized_params_checkpoint_and_restore_into_their_template(tmp_path):
  _, params, _ = model_and_params()
  small = quant.quantize(params, RULES["q4"])
  path = checkpoints.save(tmp_path, 1, {"params": small})
  template = quant.quantize(jax.tree_util.tree_map(jnp.zeros_like, params), RULES["q4"])
  restored, _ = checkpoints.restore(path, {"params": template})
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves({"params": small})):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind, ratio", [("int8", 0.30), ("q4", 0.17)])
def test_quantized_params_take_the_promised_fraction_of_the_float_bytes(kind, ratio):
  model = TransformerLM(512, d_model=128, d_ff=512, n_layers=2, n_heads=4, max_len=16, mode="eval",
                        tie_embeddings=True, use_bias=False, norm="rms")
  params, _ = model.init(jax.random.key(0), cx.ShapeDtype((1, 16), jnp.int32))
  small = quant.quantize(params, RULES[kind])
  assert quant.nbytes(small) <= ratio * quant.nbytes(params), quant.nbytes(small) / quant.nbytes(params)


def test_an_embedding_looks_up_only_its_rows_and_tied_logits_use_the_same_table():
  embed = cl.Embedding(64, 32)
  model = cl.Serial(embed, cl.TiedLogits(embed))
  params, state = model.init(jax.random.key(0), cx.ShapeDtype((3, 5), jnp.int32))
  small = quant.quantize(params, [("*embedding", "q4_1")])
  ids = jnp.array([[0, 5, 63, 2, 2]] * 3)
  y, _ = model.apply(small, state, ids)
  np.testing.assert_allclose(y, model.apply(quant.dequantize(small), state, ids)[0], atol=5e-6, rtol=1e-5)
  table = quant.dequantize(small)["Embedding_0"]["embedding"]
  np.testing.assert_array_equal(embed.apply(small["Embedding_0"], {}, ids)[0], table[ids])


def test_mistakes_are_named():
  _, params, _ = model_and_params()
  with pytest.raises(ValueError, match=r"no param matches \['blocks/\*/kernal'\]"):
    quant.quantize(params, [("blocks/*/kernal", "int8")])
  with pytest.raises(ValueError, match=r"kind must be one of \('int8', 'q4', 'q4_1'\), got 'int4'"):
    quant.quantize(params, [("blocks/*kernel", "int4")])
  with pytest.raises(ValueError, match=r"final_norm/bias \(shape \(32,\)\) matches 'final_norm/\*', but only "
                                      r"matrices"):
    quant.quantize(params, [("final_norm/*", "int8")])
  with pytest.raises(ValueError, match=r"group 24 must divide axis -2 of length 32"):
    quantize_array(weights((32, 4)), "q4", group=24)


@pytest.mark.parametrize("kind", ["int8", "q4_1"])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_decoding_keeps_no_float32_copy_of_the_quantized_weights(kind, scan_layers, monkeypatch):
  # XLA hoists what a loop does not change out of the loop: a weight's dequantization, kept resident for the whole
  # decoding as a float32 copy (it did so with SmolLM2's table: +113 MB). The compiled decoding program's
  # temporaries show it. The 4 MB table is split in 2 chunks here, as SmolLM2's 113 MB table is in 8.
  from combinax import decoding
  from combinax.quant import weights as quant_weights
  monkeypatch.setattr(quant_weights, "_CHUNK_BYTES", 2 ** 21)
  model = TransformerLM(2048, d_model=512, d_ff=1024, n_layers=2, n_heads=4, max_len=24, mode="predict",
                        dropout=0.0, tie_embeddings=True, scan_layers=scan_layers)
  params, _ = TransformerLM(2048, d_model=512, d_ff=1024, n_layers=2, n_heads=4, max_len=24, dropout=0.0,
                            tie_embeddings=True, scan_layers=scan_layers).init(jax.random.key(0),
                                                                               cx.ShapeDtype((1, 4), jnp.int32))
  small = quant.quantize(params, [("*kernel", quant.QuantSpec(kind, 32)), ("*embedding", quant.QuantSpec(kind, 32))])
  prompt, settings = jnp.ones((1, 4), jnp.int32), decoding._Sampling(4, 20, 16, 0.0, None, None, None, 0, 0)

  def temporaries(p):
    state = decoding.init_state(model, 1, None)
    compiled = decoding._sample.lower(model, settings, p, state, prompt, jnp.full((1,), 4, jnp.int32), None,
                                      jax.random.key(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  float_bytes = quant.nbytes(params)   # 4 MB table + 2 x 4 MB of kernels
  extra = temporaries(small) - temporaries(params)
  # One chunk of the table (2 MB) or one kernel (<= 2 MB as float32) at a time, never all the weights.
  assert extra < 0.15 * float_bytes, (extra, float_bytes)
  if kernels.available():
    # The kernel (decoding's few rows) reads the weights as they are stored: no float32 temporary the size of even
    # the smallest weight (a 512 x 512 kernel, 1 MB as float32), and no copy of a layer sliced out of the stack.
    smallest = min(4 * int(np.prod(leaf.shape[-2:])) for path, leaf in leaves_with_paths(params)
                   if path.endswith(("kernel", "embedding")))
    assert extra < smallest, (extra, smallest)
  out = decoding.autoregressive_sample(model, small, prompt, max_length=16, temperature=0.0)
  np.testing.assert_array_equal(out, decoding.autoregressive_sample(model, quant.dequantize(small), prompt,
                                                                    max_length=16, temperature=0.0))
