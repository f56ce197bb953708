"""A tiny language-model run through `combinax-train` / `combinax-decode` as real processes, for the tests that meet
the commands as a user does (tests/train/test_cli_run_directory.py, tests/reliability/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from combinax.store import checkpoints

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(steps: int = 15, log_every: int = 5, checkpoint_every: int = 5) -> str:
  """configs/transformer_lm_kjv.gin shrunk: a character vocabulary (65 ids), d_model 16, one layer."""
  return f"""include '{ROOT}/configs/transformer_lm_kjv.gin'
corpus_tokenizer.kind = 'char'
VOCAB = 65
TransformerLM.d_model = 16
TransformerLM.d_ff = 32
TransformerLM.n_layers = 1
TransformerLM.n_heads = 2
TransformerLM.max_len = 16
train/lm_pipeline.length = 16
train/lm_pipeline.batch_size = 8
eval/lm_pipeline.length = 16
eval/lm_pipeline.batch_size = 8
EvalTask.n_batches = 1
EvalTask.eval_every = {steps}
Trainer.steps = {steps}
Trainer.log_every = {log_every}
Trainer.checkpoint_every = {checkpoint_every}
"""


def make_workspace(folder: Path, config: str) -> tuple[Path, dict]:
  """`folder` with tiny.gin, and the environment the commands run in (its own cache, 2 CPU devices)."""
  (folder / "tiny.gin").write_text(config)
  environ = {**os.environ, "COMBINAX_CACHE": str(folder / "cache"), "COMBINAX_HUGE_PAGES": "0",
             "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  return folder, environ


def command(program: str, *args, workspace) -> subprocess.Popen:
  """Starts `combinax-<program>` (train or decode) in the workspace, its output piped."""
  folder, environ = workspace
  argv = [sys.executable, "-m", f"combinax.cli.{program}", *map(str, args)]
  return subprocess.Popen(argv, cwd=folder, env=environ, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(program: str, *args, workspace) -> subprocess.CompletedProcess:
  child = command(program, *args, workspace=workspace)
  out, err = child.communicate(timeout=300)
  return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def train(output, *args, workspace) -> subprocess.CompletedProcess:
  return run("train", "--config_file=tiny.gin", f"--output_dir={output}", *args, workspace=workspace)


def final_params(folder: Path) -> dict:
  return checkpoints.read_arrays(checkpoints.latest(folder), prefix="params")


def records(folder: Path) -> list[dict]:
  """metrics.jsonl without the timings (steps/s differ from run to run); a line a kill cut short is left out."""
  lines = (folder / "metrics.jsonl").read_text().split("\n")[:-1] if (folder / "metrics.jsonl").exists() else []
  return [{k: v for k, v in json.loads(line).items() if k != "steps_per_sec"} for line in lines]
