"""Learning-rate schedules at chosen steps, and the L2 penalty and decay masks on known params."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from combinax.train import regularization, schedules


def values(schedule, steps):
  return [float(schedule(s)) for s in steps]


def test_constant_and_linear_warmup():
  assert values(schedules.constant(0.3), [0, 7, 10_000]) == pytest.approx([0.3] * 3)
  assert values(schedules.linear_warmup(2.0, 4), [0, 1, 2, 3, 100]) == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])


def test_rsqrt_decay():
  s = schedules.rsqrt_decay(1.0, warmup_steps=100)
  assert values(s, [0, 49, 99, 100, 400, 10_000]) == pytest.approx([0.01, 0.5, 1.0, 1.0, 0.5, 0.1])


def test_step_decay_is_piecewise_constant():
  s = schedules.step_decay((100, 300), (1e-2, 1e-3, 1e-4))
  assert values(s, [0, 99, 100, 299, 300, 10**6]) == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4])
  with pytest.raises(ValueError, match="3 values"):
    schedules.step_decay((1, 2), (1.0, 2.0))


def test_exponential_decay():
  s = schedules.exponential_decay(1.0, 0.1, 100)
  assert values(s, [0, 50, 100, 200]) == pytest.approx([1.0, 0.1 ** 0.5, 0.1, 0.01])
  stairs = schedules.exponential_decay(1.0, 0.1, 100, staircase=True, warmup_steps=10)
  assert values(stairs, [0, 9, 99, 100, 250]) == pytest.approx([0.1, 1.0, 1.0, 0.1, 0.01])


def test_cosine_with_warmup():
  s = schedules.cosine(peak=2.0, total_steps=110, warmup_steps=10, final=0.2)
  expected = [0.2, 2.0, 0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 0.25)), 1.1, 0.2, 0.2]
  assert values(s, [0, 10, 35, 60, 110, 500]) == pytest.approx(expected, rel=1e-5)


def test_multifactor_matches_trax_formulas():
  s = schedules.multifactor("constant * linear_warmup * rsqrt_decay", constant=0.5, warmup_steps=100)
  assert values(s, [0, 99, 400]) == pytest.approx([0.5 * 0.01 / 10, 0.5 / 10, 0.5 / 20])
  decay = schedules.multifactor("constant * decay_every", constant=1.0, decay_factor=0.5, steps_per_decay=10)
  assert values(decay, [0, 9, 10, 35]) == pytest.approx([1.0, 1.0, 0.5, 0.125])
  cyc = schedules.multifactor("cosine_decay", steps_per_cycle=100, minimum=0.1)
  assert values(cyc, [0, 50, 99, 100]) == pytest.approx([1.0, 0.5, 0.1, 1.0], abs=1e-6)
  with pytest.raises(ValueError, match="unknown factor"):
    schedules.multifactor("constant * warmup")


def test_schedules_work_inside_optax_and_jit():
  schedule = schedules.cosine(1.0, 10)
  optimizer = optax.sgd(schedule)
  params = {"w": jnp.ones(())}
  state = optimizer.init(params)
  step = jax.jit(lambda p, s: optimizer.update({"w": jnp.ones(())}, s, p))
  updates, state = step(params, state)
  assert float(updates["w"]) == pytest.approx(-1.0)


PARAMS = {"Dense_0": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "bias": jnp.array([5.0, 5.0])},
          "LayerNorm_0": {"scale": jnp.array([2.0, 2.0]), "bias": jnp.array([1.0, 1.0])},
          "embed": {"embedding": jnp.array([[1.0, 1.0]])}}


def test_l2_penalty_on_known_params():
  assert float(regularization.l2_penalty(PARAMS, weight=0.1)) == pytest.approx(0.05 * (30 + 2))
  assert float(regularization.l2_penalty(PARAMS, weight=1.0, include="Dense_0/*", exclude=())) == pytest.approx(
      0.5 * (30 + 50))
  grad = jax.grad(lambda p: regularization.l2_penalty(p, weight=0.1))(PARAMS)
  np.testing.assert_allclose(grad["Dense_0"]["kernel"], 0.1 * PARAMS["Dense_0"]["kernel"])
  np.testing.assert_array_equal(grad["Dense_0"]["bias"], 0.0)


def test_decay_mask_for_decoupled_weight_decay():
  mask = regularization.decay_mask(PARAMS)
  assert mask == {"Dense_0": {"bias": False, "kernel": True}, "LayerNorm_0": {"bias": False, "scale": False},
                  "embed": {"embedding": True}}
  optimizer = optax.adamw(0.0, weight_decay=0.5, mask=mask)   # lr 0: only check the mask is accepted
  optimizer.update(jax.tree_util.tree_map(jnp.zeros_like, PARAMS), optimizer.init(PARAMS), PARAMS)
