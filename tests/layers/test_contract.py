"""The layer contract, checked for every layer in the catalogue: shape agreement, jit, grad, determinism,
purity, and a golden file of parameter paths and shapes."""

import copy
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from catalogue import CATALOGUE, make_inputs

GOLDEN = Path(__file__).with_name("golden_params.txt")


def _items(x):
  return list(x) if isinstance(x, tuple) else [x]


def _float_total(outputs):
  return sum((jnp.sum(y.astype(jnp.float32)) for y in _items(outputs)), jnp.zeros((), jnp.float32))


@pytest.fixture(params=sorted(CATALOGUE))
def case(request):
  factory, sig = CATALOGUE[request.param]
  return request.param, factory(), sig


@pytest.mark.parametrize("train", [False, True])
def test_shape_agreement(case, train):
  _, layer, sig = case
  params, state = layer.init(jax.random.key(0), sig)
  outputs, new_state = layer.apply(params, state, make_inputs(sig), rng=jax.random.key(2), train=train)
  predicted = layer.output_signature(sig)
  assert cx.signature(outputs) == predicted
  assert len(_items(outputs)) == layer.n_out
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  assert cx.signature(jax.tree_util.tree_leaves(new_state)) == cx.signature(jax.tree_util.tree_leaves(state))


def test_jit_matches_eager(case):
  _, layer, sig = case
  params, state = layer.init(jax.random.key(0), sig)
  x = make_inputs(sig)
  run = lambda p, s, x, r: layer.apply(p, s, x, rng=r, train=True)
  eager = run(params, state, x, jax.random.key(3))
  jitted = jax.jit(run)(params, state, x, jax.random.key(3))
  for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_grad_is_finite(case):
  _, layer, sig = case
  params, state = layer.init(jax.random.key(0), sig)
  x = make_inputs(sig)
  float_inputs = [i for i, item in enumerate(_items(x)) if jnp.issubdtype(item.dtype, jnp.floating)]

  def loss(params, floats):
    items = _items(x)
    for i, value in zip(float_inputs, floats):
      items[i] = value
    inputs = tuple(items) if isinstance(x, tuple) else items[0]
    return _float_total(layer.apply(params, state, inputs, rng=jax.random.key(4), train=True)[0])

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, [_items(x)[i] for i in float_inputs])
  assert jax.tree_util.tree_structure(grads[0]) == jax.tree_util.tree_structure(params)
  for g in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(g))


def test_init_is_deterministic(case):
  _, layer, sig = case
  first, _ = layer.init(jax.random.key(7), sig)
  again, _ = layer.init(jax.random.key(7), sig)
  other, _ = layer.init(jax.random.key(8), sig)
  jax.tree_util.tree_map(np.testing.assert_array_equal, first, again)
  # Leaves with more than two distinct values are random draws (a forget-gate bias of 0s and 1s is not).
  random_leaves = [a for a in jax.tree_util.tree_leaves(first) if np.unique(np.asarray(a)).size > 2]
  for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(other)):
    if any(a is r for r in random_leaves):
      assert not np.array_equal(a, b)


def test_layer_object_never_changes(case):
  _, layer, sig = case
  before = copy.copy(layer.__dict__)
  params, state = layer.init(jax.random.key(0), sig)
  layer.apply(params, state, make_inputs(sig), rng=jax.random.key(1), train=True)
  jax.jit(lambda p, s, x: layer.apply(p, s, x)[0])(params, state, make_inputs(sig))
  assert layer.__dict__ == before
  with pytest.raises(AttributeError, match="immutable"):
    layer.n_in = 5
  assert hash(layer) == hash(layer)


def _golden_lines():
  lines = []
  for name in sorted(CATALOGUE):
    factory, sig = CATALOGUE[name]
    params, state = factory().init(jax.random.key(0), sig)
    lines.append(f"{name}:")
    for kind, tree in (("params", params), ("state", state)):
      for path, leaf in cx.leaves_with_paths(tree):
        lines.append(f"  {kind} {path} {tuple(leaf.shape)} {leaf.dtype}")
  return lines


def test_golden_parameter_structure():
  """Parameter paths and shapes of every layer; regenerate with COMBINAX_UPDATE_GOLDEN=1 after a deliberate change."""
  lines = _golden_lines()
  if os.environ.get("COMBINAX_UPDATE_GOLDEN"):
    GOLDEN.write_text("\n".join(lines) + "\n")
  assert GOLDEN.read_text().splitlines() == lines


def test_catalogue_covers_every_public_layer():
  from combinax import layers as cl
  exported = {name for name in dir(cl) if name[0].isupper() and name not in
              {"Layer", "LayerError", "Combinator", "Conv", "Swish"}}
  covered = {name.split("_")[0] for name in CATALOGUE} | {"Conv"}   # (Conv's entries are Conv1D, Conv2D, Conv3D)
  assert exported <= covered, exported - covered
