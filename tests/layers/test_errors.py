"""Bad input raises a LayerError that names the layer's path, where it was built, and expected vs actual."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl

KEY = jax.random.key(0)
HERE = __file__


def error_of(fn) -> cx.LayerError:
  with pytest.raises(cx.LayerError) as info:
    fn()
  return info.value


def test_wrong_last_dimension_names_path_site_and_shapes():
  model = cl.Serial(cl.Dense(8), cl.Relu(), cl.Residual(cl.LayerNorm(), cl.Dense(8)))
  params, state = model.init(KEY, cx.ShapeDtype((2, 4)))
  bad = {**params, "LayerNorm_0": {"scale": jnp.ones(5), "bias": jnp.zeros(5)}}
  err = error_of(lambda: model.apply(bad, state, jnp.ones((2, 4))))
  assert err.path == "Serial/Residual[2]/LayerNorm[0]"
  text = str(err)
  assert "expected: (..., 5)" in text and "actual:   (2, 8) float32" in text
  assert f"{HERE}:" in text  # the construction site is this file


def test_wrong_input_width_for_dense():
  model = cl.Serial(cl.Dense(3), cl.Dense(2))
  params, state = model.init(KEY, cx.ShapeDtype((1, 4)))
  err = error_of(lambda: model.apply(params, state, jnp.ones((1, 6))))
  assert err.path == "Serial/Dense[0]"
  assert "expected: (..., 4)" in str(err) and "(1, 6) float32" in str(err)


def test_wrong_rank():
  err = error_of(lambda: cl.Conv(4, (3, 3)).init(KEY, cx.ShapeDtype((5, 5, 3))))
  assert err.path == "Conv" and "rank >= 4" in str(err) and "(5, 5, 3) float32" in str(err)
  err = error_of(lambda: cl.Serial(cl.Flatten(), cl.Dense(2)).init(KEY, cx.ShapeDtype((4,))))
  assert err.path == "Serial/Flatten[0]" and "rank >= 2" in str(err) and "(4,) float32" in str(err)


def test_wrong_number_of_stack_items():
  err = error_of(lambda: cl.Add().apply({}, {}, jnp.ones(3)))
  assert err.path == "Add" and "a tuple of 2 arrays" in str(err) and "(3,) float32" in str(err)
  err = error_of(lambda: cl.Dense(2).init(KEY, (cx.ShapeDtype((1, 2)), cx.ShapeDtype((1, 2)))))
  assert "expected: one array" in str(err) and "((1, 2) float32, (1, 2) float32)" in str(err)
  err = error_of(lambda: cl.Serial(cl.Dense(2), cl.Add()).apply({}, {}, jnp.ones((1, 2))))
  assert err.path == "Serial" and "a tuple of 2 arrays" in str(err)


def test_non_array_input():
  model = cl.Serial(cl.Dense(2))
  params, state = model.init(KEY, cx.ShapeDtype((1, 3)))
  err = error_of(lambda: model.apply(params, state, [[1.0, 2.0, 3.0]]))
  assert err.path == "Serial" and "a list of 1 items" in str(err)
  err = error_of(lambda: cl.Multiply().apply({}, {}, (jnp.ones(2), "two")))
  assert "stack items must be arrays" in str(err) and "((2,) float32, a str)" in str(err)
  err = error_of(lambda: cl.Dense(2).init(KEY, "a shape"))
  assert "input signature must be arrays or ShapeDtypes" in str(err)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rate_outside_unit_interval(rate):
  err = error_of(lambda: cl.Dropout(rate))
  assert err.path == "Dropout" and "0 <= rate < 1" in str(err) and f"actual:   {rate}" in str(err)
  assert f"{HERE}:" in str(err)


def test_dropout_training_without_rng():
  model = cl.Serial(cl.Dense(2), cl.Dropout(0.1))
  params, state = model.init(KEY, cx.ShapeDtype((1, 3)))
  model.apply(params, state, jnp.ones((1, 3)), train=False)  # fine: not training
  err = error_of(lambda: model.apply(params, state, jnp.ones((1, 3)), train=True))
  assert err.path == "Serial/Dropout[1]" and "needs an rng" in str(err)


def test_categorical_loss_shapes_and_dtypes():
  err = error_of(lambda: cl.WeightedCategoryCrossEntropy().apply(
      {}, {}, (jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4)))))
  assert "(2, 3, 5) float32, (2, 4) int32, (2, 4) float32" in str(err)
  err = error_of(lambda: cl.CategoryCrossEntropy().apply({}, {}, (jnp.zeros((2, 5)), jnp.zeros((2,)))))
  assert "integer targets" in str(err)
  err = error_of(lambda: cl.CategoryCrossEntropy(label_smoothing=1.0))
  assert "label_smoothing" in str(err)


def test_embedding_needs_integer_ids():
  err = error_of(lambda: cl.Embedding(10, 4).init(KEY, cx.ShapeDtype((2, 3))))
  assert "integer" in str(err) and "(2, 3) float32" in str(err)


def test_errors_raised_by_jax_inside_a_layer_name_the_layer():
  model = cl.Serial(cl.Dense(2), cl.Fn("Broken", lambda x: x @ jnp.ones((5, 5))))
  err = error_of(lambda: model.init(KEY, cx.ShapeDtype((1, 3))))
  assert err.path == "Serial/Broken[1]" and "TypeError" in str(err) and "(1, 2) float32" in str(err)
  assert isinstance(err.__cause__, TypeError)


def test_select_and_scan_arguments_are_checked():
  assert "0 <= index < 2" in str(error_of(lambda: cl.Select([2], n_in=2)))
  assert "n_carry" in str(error_of(lambda: cl.Scan(cl.Add(), n_carry=2)))
  assert "same arity" in str(error_of(lambda: cl.Cond(cl.Fn("C", lambda x: x), cl.Dense(2), cl.Add())))


def test_init_without_rng():
  err = error_of(lambda: cl.Dense(2).init(None, cx.ShapeDtype((1, 2))))
  assert "needs an rng" in str(err)


def test_errors_do_not_leave_frames_behind():
  with pytest.raises(cx.LayerError):
    cl.Serial(cl.Dense(2)).apply({}, {}, jnp.ones((1, 3)))
  err = error_of(lambda: cl.Add().apply({}, {}, jnp.ones(3)))
  assert err.path == "Add"  # a stale frame from the failed call above would have prefixed "Serial/Dense"
  assert np.all(cl.Relu().apply({}, {}, -jnp.ones(2))[0] == 0)
