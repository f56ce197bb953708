"""ShapeDtype, signature(), and path selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx


def test_eight_cpu_devices_and_strict_rank_promotion():
  assert jax.device_count() == 8
  with pytest.raises(ValueError, match="rank_promotion"):
    jnp.ones((2, 3)) + jnp.ones(3)


def test_shape_dtype_normalises_and_compares():
  assert cx.ShapeDtype([2, np.int64(3)], "int32") == cx.ShapeDtype((2, 3), jnp.int32)
  assert cx.ShapeDtype((2,)).dtype == np.float32
  assert hash(cx.ShapeDtype((2,))) == hash(cx.ShapeDtype((2,)))
  with pytest.raises(ValueError):
    cx.ShapeDtype((-1, 2))


def test_signature_of_arrays_and_tuples():
  assert cx.signature(np.zeros((2, 3), np.int32)) == cx.ShapeDtype((2, 3), jnp.int32)
  assert cx.signature((jnp.ones(2), jax.ShapeDtypeStruct((1,), jnp.bfloat16))) == (
      cx.ShapeDtype((2,)), cx.ShapeDtype((1,), jnp.bfloat16))
  with pytest.raises(TypeError):
    cx.signature("x")


def test_paths_select_mask_and_count():
  tree = {"encoder": {"block_0": {"attention": {"q": {"kernel": np.ones((2, 2))}}, "mlp": {"kernel": np.ones(3)}}},
          "head": [np.ones(4), {"bias": np.ones(1)}]}
  assert cx.paths(tree) == ["encoder/block_0/attention/q/kernel", "encoder/block_0/mlp/kernel", "head/0",
                            "head/1/bias"]
  assert list(cx.select(tree, "encoder/*/attention/*")) == ["encoder/block_0/attention/q/kernel"]
  assert list(cx.select(tree, ["head/*", "*/mlp/*"])) == ["encoder/block_0/mlp/kernel", "head/0", "head/1/bias"]
  mask = cx.mask(tree, "*kernel")
  assert mask["encoder"]["block_0"]["mlp"]["kernel"] is True and mask["head"][0] is False
  assert cx.count_params(tree) == 4 + 3 + 4 + 1
