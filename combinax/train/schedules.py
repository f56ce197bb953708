"""Learning-rate schedules: plain `step -> learning rate` functions (jnp-traceable, so optax can call them).

Each factory is gin-configurable (`Trainer.schedule = @cosine()`); `multifactor` reads Trax's factor strings.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _f32(step):
  return jnp.asarray(step, jnp.float32)


def _warmup(step, warmup_steps: int):
  """Linear ramp from 1/warmup_steps at step 0 ... to 1 at warmup_steps - 1, then 1 (the first step is not 0)."""
  if not warmup_steps:
    return jnp.float32(1.0)
  return jnp.minimum(1.0, (_f32(step) + 1.0) / warmup_steps)


def constant(value: float = 1e-3) -> Schedule:
  """The same rate at every step.

  >>> float(constant(0.5)(100))
  0.5
  """
  return lambda step: jnp.full((), value, jnp.float32) + 0.0 * _f32(step)


def linear_warmup(peak: float = 1e-3, warmup_steps: int = 100) -> Schedule:
  """Rises linearly to `peak` over `warmup_steps` steps, then stays there.

  >>> [round(float(linear_warmup(1.0, 4)(s)), 2) for s in (0, 1, 3, 10)]
  [0.25, 0.5, 1.0, 1.0]
  """
  return lambda step: peak * _warmup(step, warmup_steps)


def rsqrt_decay(peak: float = 1e-3, warmup_steps: int = 100) -> Schedule:
  """Linear warmup to `peak`, then `peak * sqrt(warmup_steps / step)` (the Transformer paper's schedule)."""
  def schedule(step):
    step = _f32(step)
    return peak * _warmup(step, warmup_steps) * jnp.sqrt(warmup_steps / jnp.maximum(step, max(warmup_steps, 1)))
  return schedule


def step_decay(boundaries: Sequence[int] = (1000, 2000), values: Sequence[float] = (1e-3, 1e-4, 1e-5)) -> Schedule:
  """Piecewise constant: `values[i]` from `boundaries[i-1]` (inclusive) to `boundaries[i]`.

  >>> [float(step_decay((10, 20), (1.0, 0.5, 0.25))(s)) for s in (0, 9, 10, 25)]
  [1.0, 1.0, 0.5, 0.25]
  """
  if len(values) != len(boundaries) + 1:
    raise ValueError(f"step_decay: {len(boundaries)} boundaries need {len(boundaries) + 1} values, got {values}")
  if list(boundaries) != sorted(boundaries):
    raise ValueError(f"step_decay: boundaries must increase, got {boundaries}")
  table = jnp.asarray(values, jnp.float32)
  edges = jnp.asarray(boundaries, jnp.int32)
  return lambda step: table[jnp.sum(jnp.asarray(step, jnp.int32) >= edges)]


def exponential_decay(initial: float = 1e-3, decay_rate: float = 0.5, decay_steps: int = 1000,
                      staircase: bool = False, warmup_steps: int = 0) -> Schedule:
  """`initial * decay_rate ** (step / decay_steps)` (whole periods only with `staircase`), after a linear warmup.

  >>> float(exponential_decay(1.0, 0.5, 10)(20)), float(exponential_decay(1.0, 0.5, 10, staircase=True)(15))
  (0.25, 0.5)
  """
  def schedule(step):
    periods = _f32(step) / decay_steps
    if staircase:
      periods = jnp.floor(periods)
    return initial * _warmup(step, warmup_steps) * decay_rate ** periods
  return schedule


def cosine(peak: float = 1e-3, total_steps: int = 10000, warmup_steps: int = 0, final: float = 0.0) -> Schedule:
  """Linear warmup to `peak`, then a half cosine from `peak` down to `final` at `total_steps`.

  >>> [round(float(cosine(1.0, 100)(s)), 3) for s in (0, 50, 100, 200)]
  [1.0, 0.5, 0.0, 0.0]
  """
  def schedule(step):
    progress = jnp.clip((_f32(step) - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    decayed = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(_f32(step) < warmup_steps, peak * _warmup(step, warmup_steps), decayed)
  return schedule


def multifactor(factors: str = "constant * linear_warmup * rsqrt_decay", constant: float = 0.1,
                warmup_steps: int = 400, decay_factor: float = 0.5, steps_per_decay: int = 20000,
                steps_per_cycle: int = 100000, minimum: float = 0.0) -> Schedule:
  """Trax's product-of-factors schedule, e.g. `"constant * linear_warmup * rsqrt_decay"`.

  Factors: `constant`; `linear_warmup` (min(1, (step + 1) / warmup_steps)); `rsqrt_decay`
  (1 / sqrt(max(step, warmup_steps))); `rsqrt_normalized_decay` (the same times sqrt(warmup_steps));
  `decay_every` (decay_factor ** (step // steps_per_decay)); `cosine_decay` (a half cosine over each
  `steps_per_cycle`). The product is clipped below at `minimum`.

  >>> round(float(multifactor("constant * rsqrt_decay", constant=2.0, warmup_steps=4)(16)), 3)
  0.5
  """
  names = [name.strip() for name in factors.split("*")]
  known = {
      "constant": lambda step: jnp.float32(constant),
      "linear_warmup": lambda step: _warmup(step, warmup_steps),
      "rsqrt_decay": lambda step: jnp.reciprocal(jnp.sqrt(jnp.maximum(_f32(step), warmup_steps))),
      "rsqrt_normalized_decay": lambda step: jnp.sqrt(warmup_steps / jnp.maximum(_f32(step), warmup_steps)),
      "decay_every": lambda step: decay_factor ** jnp.floor(_f32(step) / steps_per_decay),
      "cosine_decay": lambda step: 0.5 * (1.0 + jnp.cos(jnp.pi * (_f32(step) % steps_per_cycle) / steps_per_cycle)),
  }
  unknown = [name for name in names if name not in known]
  if unknown:
    raise ValueError(f"multifactor: unknown factor(s) {unknown} in {factors!r}; known: {sorted(known)}")

  def schedule(step):
    value = jnp.float32(1.0)
    for name in names:
      value = value * known[name](step)
    return jnp.maximum(value, minimum)
  return schedule
