"""`combinax-train` on configs/grow_lm_kjv.gin: small run -> operator steps -> large run, each phase resumable, the
small params untouched by the operator steps, and the materialised large params a plain checkpoint."""

import contextlib
import io
import shutil
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from combinax import growth
from combinax.cli import decode as decode_command
from combinax.cli import train as train_command
from combinax.cli.frame import parse_config
from combinax.models import TransformerLM
from combinax.paths import paths, unflatten
from combinax.store import checkpoints
from combinax.store.logging import read_metrics
from combinax.train.trainer import train_job

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "grow_lm_kjv.gin"
TINY = [f"{scope}/{binding}" for scope in ("small", "large") for binding in (
    "Trainer.steps = 4", "Trainer.log_every = 1", "Trainer.checkpoint_every = 2", "EvalTask.eval_every = 2",
    "TransformerLM.d_ff = 32", "TransformerLM.dropout = 0.0")] + [
    "small/TransformerLM.d_model = 16", "small/TransformerLM.n_heads = 2", "small/TransformerLM.n_layers = 1",
    "large/TransformerLM.d_model = 32", "large/TransformerLM.n_heads = 4", "large/TransformerLM.n_layers = 2",
    "train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8", "eval/lm_pipeline.length = 16",
    "eval/lm_pipeline.batch_size = 8", "VOCAB = 256", "EvalTask.n_batches = 1", "GrowthRun.steps = 3",
    "GrowthRun.log_every = 1"]


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path / "cache"))
  gin.clear_config()
  yield
  gin.clear_config()


def train(output, *extra, allow_config_change=False):
  gin.clear_config()
  train_command.COMMAND.run([f"--config_file={RECIPE}", f"--output_dir={output}",
                             *[f"--config={b}" for b in TINY + list(extra)]]
                            + (["--allow_config_change"] if allow_config_change else []))


def leaves(checkpoint, prefix="params"):
  return checkpoints.read_arrays(checkpoint, prefix)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
  """(the folder of one whole run of the recipe, what it printed): trained once for the tests that only read it."""
  folder = tmp_path_factory.mktemp("grow")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("COMBINAX_CACHE", str(folder / "cache"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      train(folder)
  gin.clear_config()
  return folder, printed.getvalue()


def test_the_recipe_trains_small_then_the_operator_then_large(whole_run):
  tmp_path, lines = whole_run
  assert lines.index("phase 1/3") < lines.index("phase 2/3") < lines.index("phase 3/3")
  small = leaves(checkpoints.latest(tmp_path / "small"))
  operator_run = leaves(checkpoints.latest(tmp_path / "growth"))
  # The operator steps leave every small param bit-identical (only growth/* trains: see test_operator.py).
  assert {p for p in operator_run if not p.startswith("growth/")} == set(small)
  for path, value in small.items():
    np.testing.assert_array_equal(operator_run[path], value, err_msg=path)
  parse_config([str(RECIPE)], TINY)   # the run's configuration (the run itself was in the fixture)
  model = growth.Grown(configured("small"), configured("large"), growth.METHODS["ligo"])
  params, _ = model.init(jax.random.key(0), jax.ShapeDtypeStruct((8, 16), jnp.int32))
  assert {f"growth/{p}" for p in paths(params["growth"])} == {p for p in operator_run if p.startswith("growth/")}
  # The operator phase logs its own loss curve and evaluates the grown model.
  records = read_metrics(tmp_path / "growth")
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
  assert any("eval/loss" in r for r in records)
  # grown/ is a plain checkpoint of the large model; the large run started from it and is complete.
  grown = checkpoints.latest(tmp_path / "grown")
  assert checkpoints.read_manifest(grown)["metadata"]["operator_steps"] == 3
  assert checkpoints.latest(tmp_path / "large").name == "step_00000004"
  assert (tmp_path / "large" / "config.gin").exists()


def test_a_rerun_resumes_the_unfinished_phase_and_redoes_none(tmp_path, capsys):
  train(tmp_path, "large/Trainer.steps = 2")
  grown = checkpoints.latest(tmp_path / "grown")
  before = (grown / "manifest" / "manifest.json").stat().st_mtime_ns
  capsys.readouterr()
  train(tmp_path, "large/Trainer.steps = 4", allow_config_change=True)   # (more steps: a deliberate change)
  out = capsys.readouterr().out
  assert "phase 1/3" not in out and "phase 2/3" not in out and "resumed from step 2" in out
  assert (grown / "manifest" / "manifest.json").stat().st_mtime_ns == before
  assert checkpoints.latest(tmp_path / "large").name == "step_00000004"


def test_a_net2net_baseline_materialises_the_small_models_function(tmp_path):
  train(tmp_path, "GrowthRun.options = @net2net/GrowthOptions()", "GrowthRun.steps = 0", "large/Trainer.steps = 0")
  assert not (tmp_path / "growth").exists()
  small_model, large_model = configured("small"), configured("large")
  x = jax.random.randint(jax.random.key(0), (2, 16), 1, 256)
  small_params = jax.tree_util.tree_map(jnp.asarray, unflatten(leaves(checkpoints.latest(tmp_path / "small"))))
  large_params = jax.tree_util.tree_map(jnp.asarray, unflatten(leaves(checkpoints.latest(tmp_path / "grown"))))
  np.testing.assert_allclose(large_model.apply(large_params, {}, x)[0], small_model.apply(small_params, {}, x)[0],
                             atol=2e-5, rtol=1e-5)


def test_decode_samples_from_the_grown_and_trained_model(whole_run, capsys, monkeypatch):
  folder, _ = whole_run
  monkeypatch.setenv("COMBINAX_CACHE", str(folder / "cache"))   # the run's tokenizer
  gin.clear_config()
  decode_command.COMMAND.run([f"--output_dir={folder / 'large'}", "--prompt=And God", "--max_length=4"])
  assert capsys.readouterr().out.startswith("And God")


def configured(scope: str):
  """The recipe's TransformerLM of `scope`, as the run built it."""
  with gin.config_scope(scope):
    return TransformerLM()


def test_an_interrupted_operator_phase_resumes_from_its_checkpoint(tmp_path, capsys):
  train(tmp_path, "GrowthRun.steps = 2", "large/Trainer.steps = 0")
  shutil.rmtree(tmp_path / "grown")               # as if killed after operator step 2 of 3
  capsys.readouterr()
  train(tmp_path, "GrowthRun.steps = 3", "large/Trainer.steps = 0", allow_config_change=True)
  out = capsys.readouterr().out
  assert "phase 1/3" not in out and "resumed from step 2" in out
  assert checkpoints.latest(tmp_path / "growth").name == "step_00000003" and checkpoints.latest(tmp_path / "grown")


def configured_growth(tmp_path, *extra):
  gin.clear_config()
  parse_config([str(RECIPE)], TINY + list(extra))
  return train_job()(output_dir=str(tmp_path))


def test_the_operator_phase_keeps_the_large_runs_settings_but_what_defines_it(tmp_path):
  run = configured_growth(tmp_path, "large/Trainer.compute_dtype = 'bfloat16'", "large/TrainTask.accumulate_steps = 2",
                          "large/Trainer.sharding_rules = 'fsdp'", "large/TrainTask.frozen = ['*embedding*']")
  phase = run._growth_trainer(tmp_path / "small" / "step_00000004")
  assert phase.model is run.grown and phase.compute_dtype == jnp.bfloat16
  assert [pattern for pattern, _ in phase.rules] == [pattern for pattern, _ in run.large.rules] == ["*"]   # FSDP's
  assert phase.task.accumulate_steps == 2 and phase.task.data is run.large.task.data
  assert phase.task.trainable == growth.TRAINABLE and phase.task.frozen == () and phase.task.clip_norm is None
  assert (phase.steps, phase.init_checkpoint) == (3, str(tmp_path / "small" / "step_00000004"))


@pytest.mark.parametrize("setting, name", [
    ("large/TrainTask.fuse_loss = True", "large/TrainTask.fuse_loss = True"),
    ("large/TrainTask.quantization_aware = [('blocks/*kernel', 'int8')]", "large/TrainTask.quantization_aware"),
    ("large/Trainer.pipeline_stages = 2", "large/Trainer.pipeline_stages")])
def test_a_large_run_setting_the_operator_phase_cannot_honour_is_refused_by_name(tmp_path, setting, name):
  with pytest.raises(growth.GrowthError, match=rf"the operator phase cannot honour {name} .*GrowthRun.steps = 0"):
    configured_growth(tmp_path, setting)
  assert not (tmp_path / "small").exists()
