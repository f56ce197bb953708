"""One run-directory session for every long-running job: the Trainer, a federated run and a growth run (whose phases
are Trainers) meet a directory another run holds, a changed configuration and a directory whose every checkpoint
is damaged in the same way: a `RunDirectoryError` saying what happened and what to do, and nothing else changed."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from combinax.cli import federated as federated_command
from combinax.cli import train as train_command
from combinax.store import checkpoints
from combinax.store.rundir import RunDirectoryError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GROWTH_TINY = [f"{scope}/{binding}" for scope in ("small", "large") for binding in (
    "Trainer.steps = 2", "Trainer.log_every = 1", "Trainer.checkpoint_every = 1", "EvalTask.eval_every = 2",
    "TransformerLM.d_ff = 16")] + [
    "small/TransformerLM.d_model = 16", "small/TransformerLM.n_heads = 2", "small/TransformerLM.n_layers = 1",
    "large/TransformerLM.d_model = 32", "large/TransformerLM.n_heads = 4", "large/TransformerLM.n_layers = 2",
    "train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8", "eval/lm_pipeline.length = 16",
    "eval/lm_pipeline.batch_size = 8", "VOCAB = 256", "EvalTask.n_batches = 1", "GrowthRun.steps = 1",
    "GrowthRun.log_every = 1", "corpus_tokenizer.kind = 'char'"]
# job: (command, recipe, tiny bindings, a binding that changes the configuration, the folder its last phase saves in)
JOBS = {
    "trainer": (train_command, "digits_cnn.gin", ["Trainer.steps = 2", "Trainer.checkpoint_every = 1",
                                                  "Trainer.log_every = 1", "EvalTask.n_batches = 1",
                                                  "train/image_pipeline.batch_size = 16",
                                                  "eval/image_pipeline.batch_size = 16"],
                "cosine.peak = 0.02", ""),
    "federated": (federated_command, "fedavg_digits.gin", ["FederatedRun.model = @MLP", "MLP.layer_widths = (8, 10)",
                                                           "split_clients.n_clients = 4",
                                                           "FedAvgOptions.clients_per_round = 2",
                                                           "FedAvgOptions.local_epochs = 1", "FederatedRun.rounds = 2",
                                                           "FederatedRun.eval_every = 2",
                                                           "FederatedRun.checkpoint_every = 1"],
                  "FederatedRun.client_learning_rate = 0.2", ""),
    "growth": (train_command, "grow_lm_kjv.gin", GROWTH_TINY, "large/cosine.peak = 0.01", "large"),
}
# job: its length raised (what "train longer" changes)
LONGER = {"trainer": "Trainer.steps = 3", "federated": "FederatedRun.rounds = 3", "growth": "large/Trainer.steps = 3"}

HOLDER = """
import sys, time
from combinax.store import rundir
with rundir.locked(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def run(job: str, output: Path, *extra: str):
  command, recipe, tiny, _, _ = JOBS[job]
  gin.clear_config()
  try:
    command.COMMAND.run([f"--config_file={CONFIGS / recipe}", f"--output_dir={output}",
                         *[f"--config={b}" for b in tiny + list(extra)]])
  finally:
    gin.clear_config()


def snapshot(folder: Path) -> dict:
  """Every file under `folder` but the lock (its holder's name is written in it) and its modification time."""
  return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
          if p.is_file() and p.name != ".lock"}


def flip_a_byte_of_each_array_file(folder: Path):
  for file in folder.rglob("state/d/*"):
    if file.is_file():
      data = bytearray(file.read_bytes())
      data[len(data) // 2] ^= 0xFF
      file.write_bytes(bytes(data))


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
  """COMBINAX_CACHE for this module's runs only (set for good, it sent a later module's pretrained imports here)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("COMBINAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield


@pytest.fixture(scope="module", params=list(JOBS))
def trained(request, tmp_path_factory):
  """(the job, its run directory after one whole run)."""
  output = tmp_path_factory.mktemp(request.param)
  run(request.param, output)
  return request.param, output


def test_a_directory_another_run_holds_is_refused_naming_the_holder(trained):
  job, output = trained
  before = snapshot(output)
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(RunDirectoryError, match=rf"{output.name} is in use by another run \(pid {holder.pid} on "
                                                rf"host {socket.gethostname()}, since .*\); wait for it to finish"):
      run(job, output)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
  assert snapshot(output) == before


def test_a_changed_configuration_is_refused_naming_the_difference_and_changes_nothing(trained):
  job, output = trained
  changed = JOBS[job][3]
  name, _, value = changed.partition(" = ")
  before = snapshot(output)
  with pytest.raises(RunDirectoryError, match=rf"this configuration differs from the one step_\d+ was trained with: "
                                              rf".*{name}: \S+ -> {value}.*\. Nothing was changed in the run "
                                              r"directory\. Rerun with the configuration it was trained with"):
    run(job, output, changed)
  assert snapshot(output) == before


def test_a_directory_whose_every_checkpoint_is_damaged_stops_naming_every_reason(trained, tmp_path):
  job, trained_output = trained
  output = tmp_path / "run"   # a copy: the module's run stays whole for the tests after this one
  shutil.copytree(trained_output, output)
  last_phase = output / JOBS[job][4]
  saved = [c.name for c in checkpoints.list_checkpoints(last_phase)]
  assert len(saved) >= 2
  flip_a_byte_of_each_array_file(output)
  with pytest.raises(RunDirectoryError, match=r"no checkpoint there loads whole, so the run stops rather than start "
                                              r"again from scratch over them") as stopped:
    run(job, output)
  for name in saved:
    assert f"{name}: " in str(stopped.value) and "damaged" in str(stopped.value)
    assert (last_phase / f"{name}.damaged").is_dir() and not (last_phase / name).exists()
  assert checkpoints.latest(last_phase) is None


def test_a_rerun_that_only_raises_the_length_extends_the_run_and_one_that_changes_more_is_refused(trained, tmp_path,
                                                                                               capsys):
  job, output = trained
  longer, changed, last_phase = LONGER[job], JOBS[job][3], JOBS[job][4]
  shutil.copytree(output, tmp_path / "run")
  before = snapshot(tmp_path / "run")
  name = changed.partition(" = ")[0]
  with pytest.raises(RunDirectoryError, match=rf"differs from the one step_\d+ was trained with: .*{name}: "):
    run(job, tmp_path / "run", longer, changed)
  assert snapshot(tmp_path / "run") == before
  run(job, tmp_path / "run", longer)
  assert checkpoints.read_manifest(checkpoints.latest(tmp_path / "run" / last_phase))["step"] == 3
  assert f"extending the run from step_00000002: {longer.replace(' =', ':').replace(' 3', ' 2 -> 3')}" in \
      capsys.readouterr().out
  shorter = longer.replace("3", "1")   # lowering it is a change like any other
  with pytest.raises(RunDirectoryError, match=rf"{shorter.partition(' = ')[0]}: 3 -> 1"):
    run(job, tmp_path / "run", shorter)
