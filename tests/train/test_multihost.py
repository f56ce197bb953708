"""Multi-host training for real: `combinax-train --multihost` in 2 processes x 4 CPU devices on localhost (gloo
collectives), against the same recipe in 1 process x 8 devices: every host reads the global order and keeps its rows
of each global batch (`combinax.data.hosts`), so both read the same batches.

(a) the loss curve and final params match the 1-process run; (b) both processes killed (SIGKILL) after a
checkpoint and restarted finish with the params of an uninterrupted run; (c) the 2-process checkpoint restores in 1
process, on 8 devices or on 2, and a 1-process run resumes from it at the same data position, finishing as the
1-process run did; (d) with FSDP rules each process wrote only its own shards."""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gin
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from combinax.paths import unflatten
from combinax.store import checkpoints
from combinax.cli import train as train_command
from combinax.store.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "transformer_lm_kjv.gin"
STEPS = 40
TINY = ["TransformerLM.d_model = 32", "TransformerLM.d_ff = 64", "TransformerLM.n_layers = 1",
        "TransformerLM.n_heads = 2", "VOCAB = 256", "corpus_tokenizer.kind = 'char'",
        "train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8", "eval/lm_pipeline.length = 16",
        "eval/lm_pipeline.batch_size = 8", f"Trainer.steps = {STEPS}", "Trainer.log_every = 1",
        "Trainer.checkpoint_every = 4", "Trainer.keep_checkpoints = 20", "EvalTask.eval_every = 10",
        "EvalTask.n_batches = 2", "cosine.warmup_steps = 5", f"cosine.total_steps = {STEPS}"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """The module's cache (the tokenizer trains once), COMBINAX_CACHE for this module's tests only: set for good,
  it sent a later module's pretrained imports to this folder."""
  folder = tmp_path_factory.mktemp("cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("COMBINAX_CACHE", str(folder))
    yield folder


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_job(output_dir, cache, *bindings, processes=2, allow_config_change=False):
  """`combinax-train --multihost` in `processes` processes of 4 CPU devices each; returns the Popen objects."""
  port = free_port()
  environ = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
             "COMBINAX_HUGE_PAGES": "0", "COMBINAX_CACHE": str(cache)}
  return [subprocess.Popen(
      [sys.executable, "-m", "combinax.cli.train", "--multihost",
       f"--coordinator_address=localhost:{port}", f"--num_processes={processes}", f"--process_id={i}",
       f"--config_file={RECIPE}", f"--output_dir={output_dir}", *[f"--config={b}" for b in TINY + list(bindings)],
       *(["--allow_config_change"] if allow_config_change else [])],
      cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(processes)]


def finish(job, timeout=300):
  outputs = []
  try:
    for process in job:
      outputs.append(process.communicate(timeout=timeout)[0])
  finally:
    for process in job:
      process.kill()
  for process, output in zip(job, outputs):
    assert process.returncode == 0, output[-4000:]
  return outputs


def train_here(output_dir, *bindings, allow_config_change=False):
  """combinax-train in this process (8 devices)."""
  gin.clear_config()
  try:
    train_command.COMMAND.run([f"--config_file={RECIPE}", f"--output_dir={output_dir}",
                               *[f"--config={b}" for b in TINY + list(bindings)]]
                              + (["--allow_config_change"] if allow_config_change else []))
  finally:
    gin.clear_config()


def losses(output_dir):
  return [(r["step"], r["train/loss"]) for r in read_metrics(output_dir) if "train/loss" in r]


def saved_position(output_dir, step):
  """The data position saved with `step`'s checkpoint (a global order's: once, in the shared metadata)."""
  checkpoint = next(c for c in checkpoints.list_checkpoints(output_dir)
                    if checkpoints.read_manifest(c)["step"] == step)
  return checkpoints.read_manifest(checkpoint)["metadata"]["data"]


def assert_params_match(params, reference):
  for path, value in reference.items():
    # The key bias gets no true gradient (softmax ignores a shift shared by all keys), only rounding noise, which
    # Adam scales up to full-size steps: equal within the learning rate's reach, not to float precision.
    tolerance = {"atol": 1e-2} if path.endswith("attention/k/bias") else {"rtol": 1e-4, "atol": 1e-6}
    np.testing.assert_allclose(params[path], value, err_msg=path, **tolerance)


def final_params(output_dir):
  return checkpoints.read_arrays(checkpoints.latest(output_dir), "params")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
  """The 1-process reference and an uninterrupted 2-process run, shared by the tests below."""
  root = tmp_path_factory.mktemp("runs")
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    train_here(root / "one")   # also trains and caches the tokenizer before the processes start
  finally:
    os.chdir(cwd)
  outputs = finish(start_job(root / "two", cache))
  return root, outputs


def test_two_processes_train_as_one_process_on_the_same_global_batches(runs):
  root, outputs = runs
  one, two = losses(root / "one"), losses(root / "two")
  assert [s for s, _ in two] == list(range(1, STEPS + 1))
  # Same data and math; the gradients' sum runs over gloo between processes and inside XLA within one, in another
  # order, so float rounding differs slightly.
  np.testing.assert_allclose([l for _, l in two], [l for _, l in one], rtol=1e-5)
  assert_params_match(final_params(root / "two"), final_params(root / "one"))
  # The data position is the global order's, the same on both hosts: saved once, equal to the 1-process run's.
  assert saved_position(root / "two", 20) == saved_position(root / "one", 20)
  evals = [r for r in read_metrics(root / "two") if "eval/loss" in r]
  assert [r["step"] for r in evals] == [10, 20, 30, 40]
  # Process 0 alone logs; both processes ran every step.
  assert "step      40  train" in outputs[0] and "step " not in outputs[1]
  assert (root / "two" / "config.gin").exists() and (root / "two" / "tensorboard").is_dir()
  assert sorted(p.name for p in (checkpoints.latest(root / "two") / "hosts").glob("*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


def test_both_processes_killed_after_a_checkpoint_resume_to_the_uninterrupted_params(runs, cache, tmp_path):
  root, _ = runs
  job = start_job(tmp_path, cache)
  deadline = time.time() + 300
  while checkpoints.latest(tmp_path) is None or checkpoints.read_manifest(checkpoints.latest(tmp_path))["step"] < 8:
    assert time.time() < deadline and all(p.poll() is None for p in job), "the job ended before it could be killed"
    time.sleep(0.02)
  for process in job:
    process.send_signal(signal.SIGKILL)
  for process in job:
    process.wait()
  killed_at = checkpoints.read_manifest(checkpoints.latest(tmp_path))["step"]
  assert killed_at < STEPS
  outputs = finish(start_job(tmp_path, cache))
  assert f"resumed from step {killed_at} " in outputs[0]
  assert not [p for p in tmp_path.iterdir() if "tmp" in p.name or p.name.startswith(".") and p.name != ".lock"]
  resumed, straight = final_params(tmp_path), final_params(root / "two")
  for path, value in straight.items():
    np.testing.assert_array_equal(resumed[path], value, err_msg=path)


def test_a_two_process_checkpoint_restores_in_one_process_on_any_mesh(runs):
  root, _ = runs
  latest = checkpoints.latest(root / "two")
  saved = checkpoints.read_arrays(latest, "params")
  template = unflatten({e["path"][len("params/"):]: (tuple(e["shape"]), np.dtype(e["dtype"]))
                        for e in checkpoints.read_manifest(latest)["leaves"] if e["path"].startswith("params/")})
  for devices in (8, 2):
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:devices]), ("data",)), P())
    like = jax.tree_util.tree_map(lambda sd: jax.ShapeDtypeStruct(*sd, sharding=sharding), template,
                                  is_leaf=lambda x: isinstance(x, tuple))
    params, _ = checkpoints.restore(latest, like, prefix="params")
    for path, value in saved.items():
      restored = params
      for part in path.split("/"):
        restored = restored[part]
      assert restored.sharding == sharding
      np.testing.assert_array_equal(restored, value)


def test_a_two_process_run_resumed_in_one_process_goes_on_at_the_same_data_position(runs, tmp_path, capsys):
  root, _ = runs
  shutil.copytree(root / "two", tmp_path / "continued")
  for checkpoint in checkpoints.list_checkpoints(tmp_path / "continued"):   # as if the job had stopped at step 20
    if checkpoints.read_manifest(checkpoint)["step"] > 20:
      shutil.rmtree(checkpoint)
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    train_here(tmp_path / "continued")   # the same recipe: no configuration change
  finally:
    os.chdir(cwd)
  output = capsys.readouterr().out
  assert "resumed from step 20 " in output and "starts again" not in output
  # Steps 21-40 in 1 process are the 1-process run's steps 21-40: the same batches, from the same position.
  continued = dict(losses(tmp_path / "continued"))
  np.testing.assert_allclose([continued[s] for s in range(21, STEPS + 1)],
                             [l for s, l in losses(root / "one") if s > 20], rtol=1e-5)
  assert saved_position(tmp_path / "continued", STEPS) == saved_position(root / "one", STEPS)
  assert_params_match(final_params(tmp_path / "continued"), final_params(root / "one"))


def test_with_fsdp_each_process_writes_only_its_own_shards(cache, tmp_path):
  # Wide enough that the arrays, not Orbax's indexes, make most of the bytes.
  finish(start_job(tmp_path, cache, "Trainer.sharding_rules = 'fsdp'", "Trainer.steps = 4",
                   "TransformerLM.d_model = 128", "TransformerLM.d_ff = 512"))
  latest = checkpoints.latest(tmp_path)
  manifest = checkpoints.read_manifest(latest)
  sharded = [e for e in manifest["leaves"] if np.prod(e["shape"]) >= 1024]   # what the FSDP rules split
  assert {e["path"] for e in sharded} >= {"params/embed/embedding", "params/blocks/ff/in/kernel"}
  # Orbax records each array's sharding (keyed by the base64 of its dotted path): split over the 8 devices of both
  # processes, so no process ever held one whole.
  specs = {base64.b64decode(k).decode().replace(".", "/"): json.loads(v)
           for k, v in json.loads((latest / "state" / "_sharding").read_text()).items()}
  for entry in sharded:
    assert specs[entry["path"]]["partition_spec"] != [] and "data" in json.dumps(specs[entry["path"]]), entry
  written = [sum(f.stat().st_size for f in (latest / "state" / f"ocdbt.process_{i}").rglob("*") if f.is_file())
             for i in range(2)]
  total = sum(int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize for e in manifest["leaves"])
  sharded_bytes = sum(int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize for e in sharded)
  assert sharded_bytes > 0.95 * total
  for size in written:   # each wrote about its half of the split arrays, far from the whole state
    assert 0.4 * total < size < 0.6 * total, (written, total)
  assert final_params(tmp_path)["embed/embedding"].shape == (256, 128)


def test_both_processes_set_a_damaged_newest_checkpoint_aside_and_resume_from_the_one_before(runs, cache, tmp_path):
  root, _ = runs
  shutil.copytree(root / "two", tmp_path / "run")
  latest = checkpoints.latest(tmp_path / "run")
  # The biggest data file holds array values (OCDBT keeps arrays this small inline in its index, in state/d/).
  data = max((latest / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
  flipped = bytearray(data.read_bytes())
  flipped[len(flipped) // 2] ^= 0x40
  data.write_bytes(bytes(flipped))
  outputs = finish(start_job(tmp_path / "run", cache, f"Trainer.steps = {STEPS + 4}", allow_config_change=True))
  assert f"checkpoint {latest.name} cannot be used, set aside as {latest.name}.damaged" in outputs[0]
  assert "the checkpoint is damaged" in outputs[0] and "resumed from step 36 " in outputs[0]
  assert (tmp_path / "run" / f"{latest.name}.damaged").is_dir()
  assert checkpoints.read_manifest(checkpoints.latest(tmp_path / "run"))["step"] == STEPS + 4
