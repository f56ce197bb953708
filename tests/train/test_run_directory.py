"""The run directory as a unit: one run at a time (a lock that names its holder), the configuration each checkpoint
was trained with kept in it and compared on resume, config.gin written only once a run starts, and the leftovers of
killed writes cleared. (`tests/train/test_cli_run_directory.py` shows the same through `combinax-train`.)"""

import json
import os
import signal
import socket
import subprocess
import sys

import gin
import numpy as np
import optax
import pytest

from combinax import data
from combinax import layers as cl
from combinax.store import checkpoints, rundir
from combinax.train import schedules
from combinax.train.trainer import Trainer, TrainTask


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def classifier_trainer(output_dir, steps, activation=cl.Relu):
  rng = np.random.default_rng(0)
  examples = [(x, np.int32(x.sum() > 0)) for x in rng.normal(size=(64, 6)).astype(np.float32)]
  pipeline = data.Serial(data.FromList(examples, shuffle=True, seed=3, repeat=True), data.Batch(8))
  model = cl.Serial(cl.Dense(16), activation(), cl.Dense(2))
  task = TrainTask(data=pipeline, loss_layer=cl.CategoryCrossEntropy(), optimizer=optax.adam,
                   schedule=schedules.constant(1e-2))
  return Trainer(model, task, output_dir=str(output_dir), steps=steps, checkpoint_every=5, log_every=5,
                 progress=False)


HOLDER = """
import sys, time
from combinax.store import rundir
with rundir.locked(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def test_a_run_on_a_directory_another_process_holds_is_refused_naming_it_and_writes_nothing(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(rundir.RunDirectoryError, match=rf"{tmp_path.name} is in use by another run \(pid "
                                                        rf"{holder.pid} on host {socket.gethostname()}, since "):
      classifier_trainer(tmp_path, 5).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
  finally:
    holder.send_signal(signal.SIGKILL)   # a killed holder's lock goes with it: the kernel releases flock
    holder.wait()
    holder.stdout.close()
  classifier_trainer(tmp_path, 5).run()
  assert checkpoints.latest(tmp_path).name == "step_00000005"


def test_the_lock_is_taken_again_by_the_process_that_holds_it(tmp_path):
  with rundir.locked(tmp_path):
    classifier_trainer(tmp_path, 5).run()   # e.g. a GrowthRun's phases inside its own locked directory
    with rundir.locked(tmp_path):
      pass
  assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_an_output_directory_that_cannot_be_made_is_one_clear_error(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(rundir.RunDirectoryError, match=r"file: a file of that name is there, not a directory"):
    classifier_trainer(tmp_path / "file", 5).run()
  with pytest.raises(rundir.RunDirectoryError, match=r"cannot be created or written: .*Not a directory"):
    classifier_trainer(tmp_path / "file" / "run", 5).run()


def test_each_checkpoint_keeps_the_configuration_and_the_model_it_was_trained_with(tmp_path):
  gin.parse_config("cosine.peak = 0.001")   # any binding: the run's gin configuration, whatever it binds
  classifier_trainer(tmp_path, 5).run()
  run = checkpoints.read_manifest(checkpoints.latest(tmp_path))["metadata"]["run"]
  assert run["config"] == gin.config_str() == (tmp_path / "config.gin").read_text()
  assert run["operative_config"] == gin.operative_config_str()
  assert run["model"] == "Serial[\n  Dense\n  Relu\n  Dense\n]" and len(run["model_fingerprint"]) == 64


def test_a_resume_with_another_configuration_stops_naming_the_difference_and_changes_nothing(tmp_path):
  gin.parse_config("cosine.peak = 0.001")
  classifier_trainer(tmp_path, 5).run()
  files = lambda: {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != ".lock"}   # (its holder)
  before = files()
  gin.clear_config()
  gin.parse_config("cosine.peak = 0.002\ncosine.final = 0.0")
  with pytest.raises(rundir.RunDirectoryError, match=r"differs from the one step_00000005 was trained with: "
                     r"cosine.final: \(unset\) -> 0.0; cosine.peak: 0.001 -> 0.002\. Nothing was changed"):
    classifier_trainer(tmp_path, 10).run()
  assert files() == before
  assert "0.001" in (tmp_path / "config.gin").read_text()
  # Deliberately: the run goes on, and from now on its checkpoints and config.gin record the new configuration.
  classifier_trainer(tmp_path, 10).run(allow_config_change=True)
  assert checkpoints.latest(tmp_path).name == "step_00000010"
  assert checkpoints.read_manifest(checkpoints.latest(tmp_path))["metadata"]["run"]["config"] == gin.config_str()
  assert "0.002" in (tmp_path / "config.gin").read_text()


def test_a_model_with_the_same_shapes_but_another_structure_is_another_run(tmp_path):
  classifier_trainer(tmp_path, 5).run()
  with pytest.raises(rundir.RunDirectoryError, match=r"the model: - Relu; \+ Tanh\."):
    classifier_trainer(tmp_path, 10, activation=cl.Tanh).run()
  classifier_trainer(tmp_path, 10, activation=cl.Tanh).run(allow_config_change=True)


def test_a_checkpoint_that_records_no_configuration_resumes_with_a_note(tmp_path, capsys):
  trainer = classifier_trainer(tmp_path, 5)
  state = trainer.run()
  latest = checkpoints.latest(tmp_path)
  metadata = checkpoints.read_manifest(latest)["metadata"]
  del metadata["run"]   # as a checkpoint written before checkpoints kept their configuration
  checkpoints.save(tmp_path, 5, state, metadata, host_metadata=checkpoints.read_host_metadata(latest))
  classifier_trainer(tmp_path, 10).run()
  assert "step_00000005 records no configuration: resuming without comparing it" in capsys.readouterr().out


def test_a_metrics_line_a_kill_cut_short_is_dropped_on_resume(tmp_path):
  classifier_trainer(tmp_path, 10).run()
  metrics = tmp_path / "metrics.jsonl"
  whole = metrics.read_text()
  metrics.write_text(whole + '{"step": 15, "train/lo')   # killed in the middle of a write
  classifier_trainer(tmp_path, 10).run()
  assert metrics.read_text() == whole


def test_the_temporary_files_of_killed_writes_are_cleared_when_a_run_starts(tmp_path):
  classifier_trainer(tmp_path, 5).run()
  for name in (".config.gin.tmp-123", ".metrics.jsonl.tmp-45", ".operative_config.gin.tmp-6"):
    (tmp_path / name).write_text("half")
  classifier_trainer(tmp_path, 10).run()
  assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
