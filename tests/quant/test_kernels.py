"""combinax.quant.kernels: the quantized matmul kernel (qdot.cc, an XLA FFI handler) computes what its pure-JAX
reference computes, for every kind, both arithmetics and each vector version; llama.cpp's int8 arithmetic stays
within its stated bound of the float one (and is exact where x is on its grid); `QuantizedArray.contract` uses it
for decoding's few rows, with gradients to x; and where it cannot be built the same numbers come from JAX, said
once."""

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from combinax.quant import kernels, quantize_array

WEIGHTS = [("int8", 32), ("int8", 64), ("int8", None), ("q4", 32), ("q4_1", 32)]   # None: one scale a channel

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler here: the fallback is tested")


def normal(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def weight(kind, group, seed=0, k=192, n=40):
  return quantize_array(normal((k, n), seed), kind, group=group)


def relative(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@needs_kernel
@pytest.mark.parametrize("activations", kernels.ACTIVATIONS)
@pytest.mark.parametrize("kind, group", WEIGHTS)
def test_the_kernel_computes_what_its_reference_computes(kind, group, activations):
  w = weight(kind, group)
  for rows in (1, 2, 3, 5, 16):
    x = jnp.asarray(normal((rows, 192), rows))
    y = jax.jit(lambda x, w: kernels.qdot(x, w, activations=activations))(x, w)
    # The same products summed in another order (8 lanes a block, then the blocks): float32 rounding of sums of
    # 192 terms, a few 1e-7 of the largest output (measured <= 6.4e-7 at k = 576).
    assert relative(y, kernels.reference(x, w, activations=activations)) < 2e-6, (rows, activations)


@needs_kernel
@pytest.mark.parametrize("kind, group", WEIGHTS)
def test_int8_activations_err_within_their_bound_and_are_exact_on_their_grid(kind, group):
  w = weight(kind, group, k=576, n=64)
  x = jnp.asarray(normal((4, 576), 1))
  # Rounding x to 255 levels a block of 32 adds at most half a step (max|x| / 254) to each input: for Gaussian x
  # and these weights, ~0.5% of the largest output (measured 0.4-0.7% at k = 576).
  assert relative(kernels.qdot(x, w, activations="int8"), kernels.qdot(x, w)) < 0.015
  # x already on the grid (each block's largest |x| a multiple of 127 steps): the integer arithmetic loses nothing.
  steps = np.random.default_rng(2).integers(-127, 128, size=(4, 18, 32))
  steps[..., 0] = 127
  on_grid = jnp.asarray((steps * np.linspace(0.01, 0.05, 18)[None, :, None]).reshape(4, 576), jnp.float32)
  assert relative(kernels.qdot(on_grid, w, activations="int8"), kernels.qdot(on_grid, w)) < 2e-6


@needs_kernel
def test_every_vector_version_agrees_with_the_portable_one():
  # COMBINAX_QDOT_ISA caps the version chosen at start-up (the machine's best otherwise), so each runs in a process.
  script = textwrap.dedent("""
      import json, numpy as np, jax.numpy as jnp
      from combinax.quant import kernels, quantize_array
      rng = np.random.default_rng(0)
      x = jnp.asarray(rng.normal(size=(5, 256)), jnp.float32)
      out = {"isa": kernels.isa()}
      for kind, group in [("int8", 32), ("int8", 256), ("q4", 32), ("q4_1", 32)]:
        w = quantize_array(rng.normal(size=(256, 24)), kind, group=group)
        for act in kernels.ACTIVATIONS:
          out[f"{kind}/{group}/{act}"] = np.asarray(kernels.qdot(x, w, activations=act)).tolist()
      print(json.dumps(out))
  """)
  results = {}
  for isa in ("portable", "avx2", "avx512-vnni"):
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "COMBINAX_QDOT_ISA": isa})
    results[isa] = json.loads(done.stdout.strip().splitlines()[-1])
  portable = results.pop("portable")
  assert portable["isa"] == "portable"
  for isa, found in results.items():
    assert found.pop("isa") in ("portable", "avx2", isa)   # a CPU without the version runs the best it has
    for key, y in found.items():
      assert relative(jnp.asarray(y), jnp.asarray(portable[key])) < 2e-6, (isa, key)


@needs_kernel
def test_contract_sends_decodings_few_rows_to_the_kernel_and_many_to_xlas_dot():
  w = weight("int8", 32)
  hlo = lambda rows: jax.jit(lambda x: w.contract(x, axis=-2)).lower(jnp.ones((rows, 192))).as_text()
  assert kernels.TARGET in hlo(kernels.MAX_ROWS)
  assert kernels.TARGET not in hlo(kernels.MAX_ROWS + 1)
  x = jnp.asarray(normal((2, 3, 192), 4))
  assert relative(w.contract(x, axis=-2), x @ w.dequantize()) < 2e-6


@needs_kernel
@pytest.mark.parametrize("activations", kernels.ACTIVATIONS)
def test_gradients_reach_x_as_through_the_dequantized_weight(activations):
  w = weight("q4_1", 32)
  x = jnp.asarray(normal((2, 192), 5))
  target = jnp.asarray(normal((2, 40), 6))
  loss = lambda f: lambda x: jnp.sum((f(x) - target) ** 2)
  got = jax.grad(loss(lambda x: kernels.qdot(x, w, activations=activations)))(x)
  want = jax.grad(loss(lambda x: x @ w.dequantize()))(x)
  # Straight through: the cotangent goes back through the float weight; int8's forward values differ by ~0.5%.
  assert relative(got, want) < (2e-6 if activations == "float32" else 0.03)


@needs_kernel
def test_vmap_over_x_runs_the_kernel_once_per_element():
  w = weight("q4", 32)
  xs = jnp.asarray(normal((3, 2, 192), 7))
  assert relative(jax.vmap(lambda x: kernels.qdot(x, w))(xs), xs @ w.dequantize()) < 2e-6


def test_mistakes_are_named():
  with pytest.raises(ValueError, match=r"groups of 32 \(q4\) or a multiple of 32 \(int8\), got 16"):
    kernels.qdot(jnp.ones((1, 64)), quantize_array(normal((64, 8), 0), "q4", group=16))
  with pytest.raises(ValueError, match=r"x \(rows, 64\) for a weight of shape \(64, 8\), got \(1, 32\)"):
    kernels.qdot(jnp.ones((1, 32)), quantize_array(normal((64, 8), 0), "int8", group=32))
  with pytest.raises(ValueError, match=r"activations must be one of \('float32', 'int8'\), got 'int4'"):
    kernels.qdot(jnp.ones((1, 64)), quantize_array(normal((64, 8), 0), "int8", group=32), activations="int4")


FALLBACK = textwrap.dedent("""
    import json, warnings, numpy as np, jax.numpy as jnp
    from combinax.quant import kernels, quantize_array
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 64)), jnp.float32)
    w = quantize_array(rng.normal(size=(64, 8)), "int8", group=32)
    with warnings.catch_warnings(record=True) as said:
      warnings.simplefilter("always")
      y = [np.asarray(w.contract(x, axis=-2)).tolist() for _ in range(2)]
      z = np.asarray(kernels.qdot(x, w, activations="int8")).tolist()
    print(json.dumps({"available": kernels.available(), "said": [str(s.message) for s in said], "y": y, "z": z,
                      "want": np.asarray(x @ w.dequantize()).tolist(),
                      "want_int8": np.asarray(kernels.reference(x, w, activations="int8")).tolist()}))
""")


def test_without_a_compiler_the_same_numbers_come_from_jax_and_it_is_said_once(tmp_path):
  env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "COMBINAX_KERNELS_DIR": str(tmp_path / "cache")}
  done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, check=True, env=env)
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["available"] is False
  assert len(out["said"]) == 1 and "not available" in out["said"][0] and "pure-JAX path" in out["said"][0]
  for y in out["y"]:
    np.testing.assert_allclose(y, out["want"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["z"], out["want_int8"], rtol=1e-6, atol=1e-6)
  assert not list((tmp_path / "cache").rglob("*.so"))


def test_a_failed_build_leaves_no_library_behind(tmp_path):
  # A compiler that fails (here: `false`): nothing half-written in the cache, and the fallback said once.
  env = {**os.environ, "CXX": "false", "COMBINAX_KERNELS_DIR": str(tmp_path / "cache")}
  done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, check=True, env=env)
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["available"] is False and len(out["said"]) == 1 and "failed" in out["said"][0]
  assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_combinax_kernels_0_chooses_the_jax_path_without_a_warning(tmp_path):
  env = {**os.environ, "COMBINAX_KERNELS": "0"}
  done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, check=True, env=env)
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["available"] is False and out["said"] == []


@needs_kernel
@pytest.mark.parametrize("scan", [True, False])
def test_a_stack_of_quantized_layers_is_read_in_place_and_computes_what_its_dequantized_stack_computes(scan):
  # Repeat hands each block its quantized weights whole, with the layer's index (QuantizedArray.layer), so the kernel
  # reads the layer where it lies; sliced by the scan, each layer's int8 values were copied first.
  from combinax import layers as cl, quant
  blocks = cl.Repeat(cl.Serial(cl.Dense(96), cl.Relu(), cl.Dense(64)), 3, scan=scan, name="blocks")
  params, state = blocks.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 64), jnp.float32))
  small = quant.quantize(params, [("*kernel", quant.QuantSpec("int8", 32))])
  x = jnp.asarray(normal((1, 64), 8))
  apply = jax.jit(lambda p, x: blocks.apply(p, state, x)[0])
  assert relative(apply(small, x), apply(quant.dequantize(small), x)) < 2e-6
  hlo = apply.lower(small, x).compile().as_text()
  assert hlo.count(f'custom_call_target="{kernels.TARGET}"') == (2 if scan else 6)
  # No instruction makes int8 values (a slice, a dynamic slice, a copy, or a fusion of one): the compiled program
  # only passes the stacked parameter on. (Sliced per layer, each showed as `s8[1,96,2,32] fusion(...)` or
  # `s8[96,2,32] dynamic-slice(...)`.)
  made = re.findall(r"= s8\[[^\]]*\]\S* (fusion|slice|dynamic-slice|copy)\(", hlo)
  assert not made, made


@needs_kernel
def test_a_layer_index_past_the_stack_is_clamped_as_xlas_dynamic_index_is():
  import dataclasses
  w = quantize_array(normal((3, 64, 8), 9), "q4", group=32)
  x = jnp.asarray(normal((1, 64), 10))
  last = kernels.qdot(x, dataclasses.replace(w, layer=jnp.int32(2)))
  assert relative(kernels.qdot(x, dataclasses.replace(w, layer=jnp.int32(7))), last) == 0
  assert relative(last, x @ quantize_array(normal((3, 64, 8), 9)[2], "q4", group=32).dequantize()) < 2e-6
