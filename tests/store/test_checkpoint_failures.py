"""Checkpoints when something goes wrong: a save that fails (a full disk) is one line naming it, leaves the
checkpoints before it loadable and no empty file behind; a manifest naming a leaf outside the tree is refused by
name."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from etils import epath

from combinax.store import checkpoints, integrity
from tiny_run import ROOT, make_workspace, tiny_config, train

TREE = {"params": {"w": np.arange(4, dtype=np.float32)}}

# Run as a script: combinax-train on a disk that fills at the save of step 10. From then on every file written
# through Python (ours, and Orbax's JSON files, in its background threads) is created and then fails as a full disk
# fails, with ENOSPC; TensorStore's array files are written by C++ and still fit.
FULL_DISK = """
import errno, os, pathlib, sys
from etils import epath
from combinax.store import checkpoints

full = []

def failing(write):
  def on_a_full_disk(self, data, *args, **kwargs):
    if not full:
      return write(self, data, *args, **kwargs)
    open(self, "wb").close()   # the file is made; its bytes do not fit
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  return on_a_full_disk

for path_class in (pathlib.Path, type(epath.Path("/"))):
  path_class.write_text, path_class.write_bytes = failing(path_class.write_text), failing(path_class.write_bytes)
save = checkpoints.CheckpointManager.save

def filling(self, step, *args, **kwargs):
  if step >= 10:
    self.wait()   # (step 5's save, still being written in the background, fits)
    full.append(step)
  return save(self, step, *args, **kwargs)

checkpoints.CheckpointManager.save = filling
from combinax.cli import train
train.COMMAND.main(sys.argv[1:])
"""


def test_a_disk_that_fills_during_a_save_stops_the_run_in_one_line_and_the_checkpoint_before_it_loads(tmp_path):
  workspace = make_workspace(tmp_path, tiny_config())
  (tmp_path / "full_disk.py").write_text(FULL_DISK)
  done = subprocess.run([sys.executable, "full_disk.py", "--config_file=tiny.gin", "--output_dir=run"], cwd=tmp_path,
                        env={**workspace[1], "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stderr
  # The run's one line ends it, with no traceback of Orbax's threads and no closed event loops around it. Once in a
  # few loaded full-suite runs, Python's shutdown adds its warning that an Orbax write coroutine was never awaited
  # (seen 2026-12-07: "sys:1: RuntimeWarning: coroutine 'async_serialize_from_host.<locals>.write_fragment' was
  # never awaited" and its tracemalloc hint): the interpreter's, after our line; left out here, not hidden from users.
  assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr
  lines = [line for line in done.stderr.strip().splitlines()
           if not ("RuntimeWarning: coroutine" in line and "was never awaited" in line)
           and "RuntimeWarning: Enable tracemalloc" not in line]
  assert lines[-1] == \
      "combinax-train: OSError: [Errno 28] No space left on device: 'run/operative_config.gin'", done.stderr
  run = tmp_path / "run"
  assert not (run / "loss_curve.png").exists()   # written whole or not at all: never 0 bytes
  assert (run / "operative_config.gin").stat().st_size > 0   # the one before stays whole
  newest = checkpoints.latest(run)
  assert newest.name == "step_00000005"
  assert checkpoints.read_arrays(newest, "params")
  # Once there is room again, the run resumes from it and finishes.
  resumed = train("run", workspace=workspace)
  assert resumed.returncode == 0, resumed.stderr
  assert checkpoints.latest(run).name == "step_00000015" and (run / "loss_curve.png").stat().st_size > 0


def test_a_background_save_that_fails_is_a_checkpoint_error_naming_it_and_the_one_before_still_loads(
    tmp_path, monkeypatch):
  manager = checkpoints.CheckpointManager(tmp_path, keep=3)
  manager.save(1, TREE)
  manager.wait()

  def full_disk(self, data, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(type(epath.Path("/")), "write_text", full_disk)   # Orbax's JSON files, in its threads
  manager.save(2, TREE)
  with pytest.raises(checkpoints.CheckpointError) as failed:
    manager.wait()
  assert str(failed.value) == (f"{tmp_path / 'step_00000002'}: the save failed (OSError: [Errno 28] No space left on "
                               "device); the checkpoints before it are as they were (the newest: step_00000001)")
  manager.close()
  monkeypatch.undo()
  assert checkpoints.latest(tmp_path).name == "step_00000001"
  np.testing.assert_array_equal(checkpoints.read_arrays(checkpoints.latest(tmp_path), "params")["w"],
                                TREE["params"]["w"])


@pytest.mark.parametrize("leaf", ["params/../../etc/w", "../w", "params//w", "/params/w", "", None])
def test_a_manifest_naming_a_leaf_outside_the_tree_is_refused_naming_the_checkpoint_and_the_path(tmp_path, leaf):
  checkpoint = checkpoints.save(tmp_path, 1, TREE)
  path = checkpoint / "manifest" / "manifest.json"
  manifest = json.loads(path.read_text())
  manifest["leaves"][0]["path"] = leaf
  path.write_text(json.dumps(integrity.sealed(manifest)))   # sealed again: it passes the digest
  with pytest.raises(checkpoints.CheckpointError) as refused:
    checkpoints.read_arrays(checkpoint)
  assert str(refused.value) == (f"{path}: the leaf path {leaf!r} is not a path in a tree (expected names joined by "
                                "'/', none of them empty, '.' or '..'); this manifest was not written by combinax")
