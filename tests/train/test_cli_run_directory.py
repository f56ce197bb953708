"""The run directory through `combinax-train` and `combinax-decode`, as a user meets it (real processes, a tiny LM):
two runs on one directory, a refused rerun that leaves the run usable, damaged checkpoints skipped on resume, and
errors that print one line and an exit code instead of a traceback."""

import json
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from combinax.store import checkpoints
from tiny_run import command, final_params, make_workspace, records, run, tiny_config, train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  return make_workspace(tmp_path_factory.mktemp("cli_runs"), tiny_config())


@pytest.fixture(scope="module")
def straight(workspace):
  """An uninterrupted run of tiny.gin: what every resumed run must end equal to."""
  done = train("straight", workspace=workspace)
  assert done.returncode == 0, done.stderr
  return workspace[0] / "straight"


def test_a_second_run_on_the_same_directory_is_refused_naming_the_first(workspace):
  first = command("train", "--config_file=tiny.gin", "--output_dir=busy", "--config=Trainer.steps = 100000",
                  workspace=workspace)
  try:
    assert first.stdout.readline().startswith("step")   # training: it holds the lock
    second = train("busy", workspace=workspace)
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert (f"combinax-train: RunDirectoryError: output directory {workspace[0] / 'busy'} is in use by another run "
            f"(pid {first.pid} on host {socket.gethostname()}, since ") in second.stderr
    assert first.poll() is None   # the first run goes on, untouched
  finally:
    first.send_signal(signal.SIGKILL)
    first.communicate()


def test_a_refused_rerun_changes_nothing_and_combinax_decode_still_works(straight, workspace):
  config = (straight / "config.gin").read_text()
  bigger = train("straight", "--config=TransformerLM.d_model = 32", workspace=workspace)
  assert bigger.returncode == 1 and "Traceback" not in bigger.stderr
  assert "TransformerLM.d_model: 16 -> 32" in bigger.stderr
  # A change of the same shapes is refused too, naming what differs.
  heads = train("straight", "--config=TransformerLM.n_heads = 4", workspace=workspace)
  assert heads.returncode == 1 and "TransformerLM.n_heads: 2 -> 4" in heads.stderr
  assert "the model: - TransformerLM(d_model=16, d_ff=32, n_heads=2, max_len=16)" in heads.stderr
  assert (straight / "config.gin").read_text() == config
  decoded = run("decode", "--output_dir=straight", "--prompt=And God", "--max_length=5", "--seed=1",
                workspace=workspace)
  assert decoded.returncode == 0, decoded.stderr
  assert decoded.stdout.startswith("And God")


def test_a_deliberate_change_is_allowed_with_a_flag(straight, workspace, tmp_path):
  shutil.copytree(straight, tmp_path / "more")
  # (Raising Trainer.steps alone needs no flag: a new learning rate with it does.)
  longer = train(tmp_path / "more", "--config=Trainer.steps = 20", "--config=cosine.peak = 0.001",
                 "--allow_config_change", workspace=workspace)
  assert longer.returncode == 0, longer.stderr
  assert "with a changed configuration (allowed): Trainer.steps: 15 -> 20; cosine.peak: 0.003 -> 0.001" in \
      longer.stdout
  assert checkpoints.latest(tmp_path / "more").name == "step_00000020"
  assert "Trainer.steps = 20" in (tmp_path / "more" / "config.gin").read_text()


def data_files(checkpoint: Path) -> list[Path]:
  # (Every one: after Orbax merges the per-process OCDBT stores, the arrays are read from state/d/, and the files
  # under state/ocdbt.process_0/d/ may not be read at all.)
  return [p for p in (checkpoint / "state").rglob("d/*") if p.is_file()]


def truncate_the_array_files(checkpoint: Path):
  for file in data_files(checkpoint):
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])


def flip_a_byte_of_each_array_file(checkpoint: Path):
  for file in data_files(checkpoint):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def remove_the_manifest(checkpoint: Path):
  (checkpoint / "manifest" / "manifest.json").unlink()


def edit_the_data_position(checkpoint: Path):
  # (A global order's position is saved once, in the manifest; a per-host pipeline's in each host's record.)
  manifest = checkpoint / "manifest" / "manifest.json"
  record = json.loads(manifest.read_text())
  record["metadata"]["data"] = record["metadata"]["data"].replace("1", "2", 1)   # another position, same form
  manifest.write_text(json.dumps(record))


def edit_the_metrics_in_the_manifest(checkpoint: Path):
  manifest = checkpoint / "manifest" / "manifest.json"
  record = json.loads(manifest.read_text())
  record["metadata"]["best_history"] = [0.0]
  manifest.write_text(json.dumps(record))


@pytest.mark.parametrize("damage", [truncate_the_array_files, flip_a_byte_of_each_array_file,
                                    remove_the_manifest, edit_the_data_position, edit_the_metrics_in_the_manifest],
                         ids=lambda f: f.__name__)
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_ends_equal_to_an_uninterrupted_one(
    damage, straight, workspace, tmp_path):
  shutil.copytree(straight, tmp_path / "run")
  newest = checkpoints.latest(tmp_path / "run")
  damage(newest)
  resumed = train(tmp_path / "run", workspace=workspace)
  assert resumed.returncode == 0, resumed.stderr
  assert "checkpoint step_00000015 cannot be used, set aside as step_00000015.damaged" in resumed.stdout
  assert "resumed from step 10" in resumed.stdout
  assert (tmp_path / "run" / "step_00000015.damaged").is_dir()
  expected, got = final_params(straight), final_params(tmp_path / "run")
  assert expected.keys() == got.keys()
  for path in expected:
    np.testing.assert_array_equal(got[path], expected[path], err_msg=path)
  assert records(tmp_path / "run") == records(straight)


# Each error: the arguments, the exit code, and what its one line says.
ERRORS = {
    "a string where an int belongs": (["--config=TransformerLM.d_model = \"32\""], 2,
                                      "TransformerLM.d_model: expected int, got '32' (str)"),
    "a string batch size": (["--config=train/lm_pipeline.batch_size = \"8\""], 2,
                            "train/lm_pipeline.batch_size: expected int, got '8' (str)"),
    "an unknown parameter": (["--config=Trainer.stepz = 3"], 2, "stepz"),
    "an unknown corpus": (["--config=train/lm_pipeline.corpus = 'nope'"], 1, "DataError: unknown corpus 'nope'"),
    "an unknown split": (["--config=train/lm_pipeline.split = 'nope'"], 1,
                         "UnknownCorpusError: unknown split 'nope' of corpus 'kjv'"),
    "a loss that is not finite": (["--config=cosine.peak = 1e30"], 1,
                                  "TrainingError: step 2: the loss or the gradients are not finite"),
    "flags of several hosts without --multihost": (["--num_processes=2"], 2,
                                                   "--num_processes only means something with --multihost"),
}


@pytest.mark.parametrize("case", ERRORS, ids=lambda case: case.replace(" ", "_"))
def test_a_mistake_prints_one_line_and_an_exit_code_not_a_traceback(case, workspace, tmp_path):
  args, code, message = ERRORS[case]
  done = train(tmp_path / "run", *args, workspace=workspace)
  assert done.returncode == code and message in done.stderr, done.stderr
  assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
  assert not list(checkpoints.list_checkpoints(tmp_path / "run")) if (tmp_path / "run").exists() else True


def test_a_missing_binding_and_an_unusable_output_directory_are_one_line_each(workspace, tmp_path):
  (tmp_path / "bare.gin").write_text("Trainer.steps = 3\n")
  bare = run("train", f"--config_file={tmp_path / 'bare.gin'}", f"--output_dir={tmp_path / 'run'}",
             workspace=workspace)
  assert bare.returncode == 2 and "Required bindings for `Trainer` not provided in config: ['model', 'task']" \
      in bare.stderr and "Traceback" not in bare.stderr
  (tmp_path / "file").write_text("")
  blocked = train(tmp_path / "file", workspace=workspace)
  assert blocked.returncode == 1 and "a file of that name is there, not a directory" in blocked.stderr
  assert "Traceback" not in blocked.stderr


def test_traceback_shows_the_traceback(workspace, tmp_path):
  done = train(tmp_path / "run", "--config=train/lm_pipeline.corpus = 'nope'", "--traceback", workspace=workspace)
  assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr


DECODE_ERRORS = {
    "--temperature=-1": "temperature: expected a finite number >= 0 (0 is greedy), got -1.0",
    "--max_length=0": "max_length: expected a positive number of tokens, got 0",
    "--max_length=-5": "max_length: expected a positive number of tokens, got -5",
    "--top_k=100": "top_k: expected at most the vocabulary's 65 tokens, got 100",
    "--top_p=1.5": "top_p: expected None or a probability in (0, 1], got 1.5",
    "--max_length=20": "the prompt (4 tokens) + --max_length=20 needs 24 positions, but the model was trained with "
                       "max_len=16",
}


@pytest.mark.parametrize("flag", DECODE_ERRORS)
def test_decoding_refuses_nonsense_settings_naming_them(flag, straight, workspace):
  done = run("decode", "--output_dir=straight", "--prompt=And", flag, workspace=workspace)
  assert done.returncode == 2 and DECODE_ERRORS[flag] in done.stderr, done.stderr
  assert "Traceback" not in done.stderr


def test_decoding_fills_the_trained_positions_by_default_and_goes_past_them_only_when_asked(straight, workspace):
  default = run("decode", "--output_dir=straight", "--prompt=And", "--temperature=0", workspace=workspace)
  assert default.returncode == 0, default.stderr
  longer = run("decode", "--output_dir=straight", "--prompt=And", "--temperature=0", "--max_length=20",
               "--allow_longer", workspace=workspace)
  assert longer.returncode == 0, longer.stderr
  # (the EOS before the prompt and the 3 prompt characters, then 12 tokens fill max_len=16; greedy, so the longer
  # decode starts with the same ones, unless an EOS ended the default one)
  assert longer.stdout.startswith(default.stdout.rstrip("\n"))
