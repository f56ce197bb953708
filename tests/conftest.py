"""Every test sees 8 CPU devices and strict rank promotion, as the layer contract promises."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_numpy_rank_promotion", "raise")


import gc  # noqa: E402

import pytest  # noqa: E402


# Clearing after every module cost ~1.5 min of recompiling over the suite; a module adds at most ~14,000 mappings
# (measured), so clearing once past 40,000 keeps well under the limit and recompiles rarely.
_MAPPINGS_BEFORE_CLEARING = 40_000


def _memory_mappings():
  try:
    with open("/proc/self/maps", "rb") as maps:
      return sum(1 for _ in maps)
  except OSError:  # not Linux: no such limit to watch
    return 0


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
  """Drops JAX's compiled programs after a test module once the process holds many memory mappings. Each compiled
  program keeps mappings of its code alive, and over the whole suite in one process they passed the kernel's limit of
  65,530 (`vm.max_map_count`): XLA's compiler then died of a segfault in the last few percent of the run (measured:
  ~100 new mappings a second)."""
  yield
  if _memory_mappings() > _MAPPINGS_BEFORE_CLEARING:
    jax.clear_caches()
    gc.collect()
