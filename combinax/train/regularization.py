"""Regularization by parameter path: an L2 penalty added to the loss, and masks for decoupled weight decay.

Both take glob patterns over `cx.paths(params)`; biases and normalization scales are excluded by default.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp

from combinax.paths import mask as path_mask

DEFAULT_EXCLUDE = ("*bias", "*scale")  # biases, and the scales of LayerNorm/RMSNorm/BatchNorm


def decay_mask(params, include: str | Iterable[str] = "*", exclude: str | Iterable[str] = DEFAULT_EXCLUDE):
  """A pytree of bools like `params`: True where the path matches `include` and not `exclude` (for optax masks).

  >>> decay_mask({"Dense_0": {"kernel": 1.0, "bias": 0.0}})
  {'Dense_0': {'bias': False, 'kernel': True}}
  """
  included = path_mask(params, include)
  excluded = path_mask(params, exclude)
  return jax.tree_util.tree_map(lambda i, e: bool(i and not e), included, excluded)


def l2_penalty(params, weight: float = 1e-4, include: str | Iterable[str] = "*",
               exclude: str | Iterable[str] = DEFAULT_EXCLUDE):
  """`weight / 2 * sum(w ** 2)` over the selected parameters: its gradient is `weight * w`.

  >>> float(l2_penalty({"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([10.0])}, weight=0.1))
  1.25
  """
  keep_mask = decay_mask(params, include, exclude)
  leaves = [jnp.sum(jnp.square(w.astype(jnp.float32)))
            for w, keep in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(keep_mask)) if keep]
  return 0.5 * weight * sum(leaves, jnp.float32(0.0))
