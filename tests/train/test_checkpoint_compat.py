"""Runs written by combinax 0.1 (npz checkpoints, tests/train/data/combinax_0_1_run) still load: they resume exactly,
start fine-tuning, and serve as pretrained caches; damage in them is still detected."""

import dataclasses
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from combinax.store import checkpoints
from test_trainer import classifier_trainer

OLD_RUN = Path(__file__).parent / "data" / "combinax_0_1_run"


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# Bit for bit against steps 1-6 that 0.1 computed with LLVM's optimisations on (tests/conftest.py turns them off).
@pytest.mark.isolated(devices=8, optimised=True)
def test_a_0_1_run_resumes_exactly_and_continues_in_the_new_format(tmp_path):
  shutil.copytree(OLD_RUN, tmp_path / "old")
  assert checkpoints.read_manifest(checkpoints.latest(tmp_path / "old"))["format"] == "combinax-checkpoint-v1"
  straight = classifier_trainer(tmp_path / "straight", 12).run()
  resumed = classifier_trainer(tmp_path / "old", 12, checkpoint_every=3).run()   # from 0.1's step 6: params, optimizer, rng and the data position
  for a, b in zip(leaves((straight.params, straight.opt_state)), leaves((resumed.params, resumed.opt_state))):
    np.testing.assert_array_equal(a, b)
  latest = checkpoints.latest(tmp_path / "old")
  assert latest.name == "step_00000012" and (tmp_path / "old" / "step_00000009").is_dir()   # every 3 steps
  assert checkpoints.read_manifest(latest)["format"] == checkpoints.FORMAT


def test_a_0_1_checkpoint_starts_fine_tuning_and_reads_as_a_cache(tmp_path):
  old = checkpoints.latest(OLD_RUN)
  fresh = classifier_trainer(tmp_path / "probe", 1)
  template = jax.eval_shape(lambda: fresh._build(fresh.task.data())[1]).params
  params, metadata = checkpoints.restore(old, template, prefix="params")   # how a pretrained cache is read
  assert metadata["metrics"] == {} and set(params) == {"Dense_0", "Dense_1"}
  trainer = classifier_trainer(tmp_path / "tuned", 1)
  trainer.init_checkpoint = str(OLD_RUN)
  trainer.task = dataclasses.replace(trainer.task, schedule=lambda step: 0.0)
  tuned = trainer.run()
  for a, b in zip(leaves(tuned.params), leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_damage_in_a_0_1_checkpoint_is_still_detected(tmp_path):
  shutil.copytree(OLD_RUN, tmp_path / "old")
  archive = tmp_path / "old" / "step_00000006" / "arrays.npz"
  flipped = bytearray(archive.read_bytes())
  flipped[len(flipped) // 2] ^= 0xFF
  archive.write_bytes(bytes(flipped))
  fresh = classifier_trainer(tmp_path / "probe", 1)
  template = fresh._build(fresh.task.data())[1]
  with pytest.raises(checkpoints.CheckpointError, match="truncated or corrupted"):
    checkpoints.restore(tmp_path / "old" / "step_00000006", template)
  resumed = classifier_trainer(tmp_path / "old", 6).run()   # falls back to step 3 and trains to 6 again
  assert int(resumed.step) == 6
  assert (tmp_path / "old" / "step_00000006.damaged").is_dir()
