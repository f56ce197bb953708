"""Every test sees 8 CPU devices and strict rank promotion, as the layer contract promises."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_numpy_rank_promotion", "raise")


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
  """Drops JAX's compiled programs after each test module. Each keeps memory mappings of its code alive, and over
  the whole suite in one process they passed the kernel's limit of 65,530 mappings (`vm.max_map_count`): XLA's
  compiler then died of a segfault in the last few percent of the run (measured: ~100 new mappings a second)."""
  yield
  jax.clear_caches()
  gc.collect()
