"""The commands' shared frame: each command lists and accepts only its own flags, a shared flag means the same in
every command that takes it, and a flag a command does not honour is refused by name, in one line, exit code 2."""

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from combinax.cli import decode, distill, federated, flower, pretrained, retrieval, train
from combinax.cli.frame import ConfigError

COMMANDS = {"combinax-train": train.COMMAND, "combinax-decode": decode.COMMAND,
            "combinax-federated": federated.COMMAND, "python -m combinax.pretrained": pretrained.COMMAND,
            "python -m combinax.distill": distill.COMMAND, "python -m combinax.federated.flower": flower.COMMAND,
            "python -m combinax.retrieval": retrieval.COMMAND}


def listed_flags(command) -> set[str]:
  return set(re.findall(r"^\s+--(?:\[no\])?(\w+)", command.help_text(), flags=re.M))


def test_each_command_lists_only_its_own_flags():
  common = {"traceback", "verbosity"}
  assert listed_flags(train.COMMAND) == common | {"config_file", "config", "output_dir", "allow_config_change",
                                                  "multihost", "coordinator_address", "num_processes", "process_id",
                                                  "coordinator_timeout"}
  assert listed_flags(federated.COMMAND) == common | {"config_file", "config", "output_dir", "allow_config_change"}
  decoding = listed_flags(decode.COMMAND)
  assert {"prompt", "temperature", "quantize", "draft", "interactive", "output_dir", "config"} <= decoding
  assert not decoding & {"config_file", "allow_config_change", "multihost"}
  assert not listed_flags(train.COMMAND) & {"prompt", "temperature", "quantize", "draft"}
  assert listed_flags(pretrained.COMMAND) == common


def test_a_shared_flag_has_one_meaning_in_every_command_that_takes_it():
  for flag in ("config_file", "config", "output_dir", "allow_config_change", "traceback", "verbosity"):
    meanings = {(f.help, repr(f.default)) for command in COMMANDS.values() if flag in listed_flags(command)
                for f in [command.flag_values()[flag]]}
    assert len(meanings) == 1, (flag, meanings)


@pytest.mark.parametrize("name, argv, message", [
    ("combinax-decode", ["--multihost", "--output_dir=x"], "Unknown command line flag 'multihost'"),
    ("combinax-federated", ["--multihost", "--output_dir=x"], "Unknown command line flag 'multihost'"),
    ("combinax-decode", ["--config_file=a.gin", "--output_dir=x"], "Unknown command line flag 'config_file'"),
    ("combinax-train", ["--prompt=hi", "--output_dir=x"], "Unknown command line flag 'prompt'"),
    ("combinax-train", ["runs/x"], "unexpected argument(s) runs/x"),
    ("python -m combinax.distill", ["topk", "--output_dir=x"], "--config_file and --output_dir are required"),
    ("python -m combinax.federated.flower", ["both", "--output_dir=x"], "expected server or client, got both"),
])
def test_a_flag_a_command_does_not_honour_is_refused_by_name(name, argv, message):
  with pytest.raises(ConfigError) as refused:
    COMMANDS[name].run(argv)
  assert str(refused.value.code).startswith(name)
  assert message in str(refused.value.code)


def test_a_refused_flag_is_one_line_and_exit_code_2_in_a_real_process(tmp_path):
  done = subprocess.run([sys.executable, "-m", "combinax.cli.federated", "--multihost", f"--output_dir={tmp_path}"],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      "combinax-federated: Unknown command line flag 'multihost' (--help lists this command's flags)"]
  assert not any(tmp_path.iterdir())   # refused before anything was written


def test_an_unreachable_coordinator_is_reported_in_one_line_within_seconds(tmp_path):
  with socket.socket() as s:   # a port that was free a moment ago: nothing listens there
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  started = time.monotonic()
  done = subprocess.run([sys.executable, "-m", "combinax.cli.train", "--multihost", "--num_processes=2",
                         "--process_id=1", f"--coordinator_address=localhost:{port}", "--coordinator_timeout=3",
                         f"--output_dir={tmp_path / 'run'}"],
                        env={**os.environ, "COMBINAX_HUGE_PAGES": "0", "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=120)
  assert time.monotonic() - started < 30   # (JAX alone waits its 300 s, then aborts from C++)
  assert done.returncode == 2, done.stderr
  assert "Fatal Python error" not in done.stderr and "Traceback" not in done.stderr
  [line] = done.stderr.strip().splitlines()
  assert line.startswith("combinax-train --multihost: process 1 found no coordinator at "
                         f"localhost:{port} within 3 s: check that process 0 runs"), line
  assert not (tmp_path / "run").exists()
