"""SIGKILL at random moments of back-to-back asynchronous saves: whatever is left, every checkpoint that is listed
loads whole and holds exactly what was saved, the unfinished saves are never listed, and the next run clears them."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from combinax.store import checkpoints

# A child that saves step after step (each save waits for the one before), a state of ~24 MB whose values say
# which step wrote them.
CHILD = """
import sys
import jax, jax.numpy as jnp
from combinax.store import checkpoints
directory = sys.argv[1]
manager = checkpoints.CheckpointManager(directory, keep=3)
latest = checkpoints.latest(directory)
step = checkpoints.read_manifest(latest)["step"] + 1 if latest else 1
while True:
  state = {"w": jnp.full((2048, 1024), step, jnp.float32), "b": jnp.arange(2048.0) * step,
           "rng": jax.random.key(step)}
  manager.save(step, state, {"step": step})
  print("saved", step, flush=True)
  step += 1
"""


def template():
  return {"b": jnp.zeros(2048), "rng": jax.random.key(0), "w": jnp.zeros((2048, 1024))}


def test_kills_during_asynchronous_saves_never_leave_a_checkpoint_that_loads_as_if_whole(tmp_path):
  rng = np.random.default_rng(0)
  environ = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  unfinished_seen = 0
  for kill in range(8):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=environ, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert child.stdout.readline().startswith("saved")   # the first save of this run has begun
    time.sleep(rng.uniform(0.0, 0.5))   # (the child blocks once the pipe is full: it is killed well before)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    unfinished_seen += any("orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())
    listed = checkpoints.list_checkpoints(tmp_path)
    assert listed, f"kill {kill}: no checkpoint at all"
    for checkpoint in listed:
      step = checkpoints.read_manifest(checkpoint)["step"]
      restored, metadata = checkpoints.restore(checkpoint, template())
      assert metadata == {"step": step}
      np.testing.assert_array_equal(restored["w"], np.full((2048, 1024), step, np.float32))
      np.testing.assert_array_equal(restored["b"], np.arange(2048.0, dtype=np.float32) * step)
      np.testing.assert_array_equal(jax.random.key_data(restored["rng"]), jax.random.key_data(jax.random.key(step)))
  # Most kills land in a save (they run back to back), and its temporary directory is what it left.
  assert unfinished_seen >= 1
  checkpoints.CheckpointManager(tmp_path)   # a new run starts: the leftovers go
  assert not [p for p in tmp_path.iterdir() if not checkpoints._NAME.match(p.name)]
