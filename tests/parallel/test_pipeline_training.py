"""GPipe in the Trainer: `pipeline_stages`/`microbatches` train like the plain model, keep each stage's blocks on its
devices, and leave checkpoints that the plain model (and its decoder) loads."""

from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import combinax as cx
from combinax import data, decoding
from combinax.models import TransformerLM
from combinax.parallel import Pipeline
from combinax import sharding
from combinax.store import checkpoints
from combinax.train import schedules
from combinax.cli import train as train_command
from combinax.cli.frame import ConfigError
from combinax.train.trainer import EvalTask, Trainer, TrainingError, TrainTask

LM = dict(d_model=16, d_ff=32, n_layers=4, n_heads=2, dropout=0.0, max_len=8)


def lm_data():
  rng = np.random.default_rng(0)
  examples = [(((rng.integers(0, 14) + np.arange(rng.integers(3, 12))) % 14 + 2).astype(np.int32),)
              for _ in range(200)]
  return data.Serial(data.FromList(examples, shuffle=True, seed=0, repeat=True), data.PackLM(8, eos_id=1),
                     data.Batch(8))


def trainer(output_dir, steps=4, **kwargs):
  task = TrainTask(data=lm_data(), optimizer=optax.sgd, schedule=schedules.constant(0.5), clip_norm=None)
  return Trainer(lambda mode, **pipeline: TransformerLM(16, **LM, mode=mode, **pipeline), task,
                 eval_task=EvalTask(data=lm_data(), eval_every=4, n_batches=1), output_dir=str(output_dir), steps=steps,
                 checkpoint_every=4, log_every=4, progress=False, **kwargs)


def test_the_pipelined_trainer_trains_like_the_plain_one_and_its_checkpoint_loads_into_the_plain_model(tmp_path):
  plain = trainer(tmp_path / "plain").run()
  piped_trainer = trainer(tmp_path / "piped", pipeline_stages=2, microbatches=2)
  assert dict(piped_trainer.mesh.shape) == {"stage": 2, "data": 4, "model": 1}
  piped = piped_trainer.run()
  assert piped.params["blocks"]["attention"]["q"]["kernel"].sharding.spec == P("stage")   # stage k's layers on its
  assert piped.opt_state is not None                                                      # devices; embed replicated
  assert piped.params["embed"]["embedding"].sharding.spec == P()
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), piped.params,
                         plain.params)
  # The pipelined run's checkpoint is the plain model's: it loads by path and decodes.
  model = TransformerLM(16, **LM)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), cx.ShapeDtype((1, 8), jnp.int32))[0])
  params, _ = checkpoints.restore(checkpoints.latest(tmp_path / "piped"), template, prefix="params")
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.device_get(piped.params))
  # And back: the plain run's checkpoint is the pipelined model's.
  piped_template = jax.eval_shape(lambda: TransformerLM(16, **LM, pipeline_stages=2, microbatches=2).init(
      jax.random.key(0), cx.ShapeDtype((8, 8), jnp.int32))[0])
  back, _ = checkpoints.restore(checkpoints.latest(tmp_path / "plain"), piped_template, prefix="params")
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.device_get(plain.params))
  decoder = TransformerLM(16, **LM, mode="predict")
  out = decoding.autoregressive_sample(decoder, params, jnp.array([[2, 3, 4]]), max_length=4, temperature=0.0)
  assert out.shape == (1, 4)


def test_pipelining_is_named_where_it_can_work_and_refused_with_the_reason_elsewhere(tmp_path):
  with pytest.raises(ValueError, match="needs the model as a function of mode"):
    Trainer(TransformerLM(16, **LM), TrainTask(data=lm_data()), output_dir=str(tmp_path), pipeline_stages=2)
  with pytest.raises(ValueError, match="pipeline_stages=3 x model_parallel=1 must divide the 8 devices"):
    sharding.make_mesh(pipeline_stages=3)
  with pytest.raises(cx.LayerError, match="a decoder .* runs its layers one token at a time"):
    TransformerLM(16, **LM, mode="predict", pipeline_stages=2, microbatches=2)
  with pytest.raises(ValueError, match="TransformerOptions.microbatches: expected a positive int, got 0"):
    TransformerLM(16, **LM, pipeline_stages=2, microbatches=0)
  with pytest.raises(cx.LayerError, match="the stages must split the layers evenly"):
    TransformerLM(16, **{**LM, "n_layers": 3}, pipeline_stages=2)
  assert isinstance(TransformerLM(16, **LM, pipeline_stages=2).sublayers[1].sublayers[-2], Pipeline)


def test_a_pipeline_setting_is_refused_in_one_line_naming_the_setting_the_expected_and_the_actual(tmp_path):
  # (gin adds a line naming the configurable Trainer to any error raised inside it; the commands leave it out)
  with pytest.raises(ValueError) as refused:
    trainer(tmp_path / "run", pipeline_stages=3, microbatches=2)
  assert str(refused.value).splitlines()[0] == ("Trainer.pipeline_stages: expected a divisor of the model's 4 layers, "
                                                "got 3")
  with pytest.raises(ValueError) as refused:
    trainer(tmp_path / "run", pipeline_stages=2, microbatches=0)
  assert str(refused.value).splitlines()[0] == "Trainer.microbatches: expected a positive int, got 0"
  assert not (tmp_path / "run").exists()


def test_micro_batches_that_do_not_divide_the_batch_are_refused_before_the_run_directory_is_made(tmp_path):
  piped = trainer(tmp_path / "run", pipeline_stages=2, microbatches=3)   # (batches of 8)
  with pytest.raises(TrainingError) as refused:
    piped.run()
  assert str(refused.value) == "Trainer.microbatches: expected a divisor of the task's batch size 8, got 3"
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("binding, message", [
    ("Trainer.pipeline_stages = 4", "Trainer.pipeline_stages: expected a divisor of the model's 2 layers, got 4"),
    ("Trainer.model_parallel = 3", "make_mesh: pipeline_stages=2 x model_parallel=3 must divide the 8 devices"),
])
def test_through_combinax_train_a_pipeline_setting_is_one_line_without_gins_reprs(tmp_path, binding, message):
  recipe = Path(__file__).resolve().parents[2] / "configs" / "transformer_lm_kjv.gin"
  gin.clear_config()
  try:
    with pytest.raises(ConfigError) as refused:
      train_command.COMMAND.run([f"--config_file={recipe}", f"--output_dir={tmp_path / 'run'}",
                                 "--config=Trainer.pipeline_stages = 2", f"--config={binding}"])
  finally:
    gin.clear_config()
  line = str(refused.value.code)
  assert line.startswith(f"combinax-train: bad gin configuration: {message}"), line
  assert "\n" not in line and "<function" not in line and "<class" not in line and "bind each" not in line
  assert not (tmp_path / "run").exists()


def test_a_pipelined_run_resumes_bit_for_bit(tmp_path):
  straight = trainer(tmp_path / "straight", pipeline_stages=4, microbatches=2).run()
  trainer(tmp_path / "resumed", steps=2, pipeline_stages=4, microbatches=2).run()   # checkpoints at its end
  resumed = trainer(tmp_path / "resumed", pipeline_stages=4, microbatches=2).run()
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(resumed.params),
                         jax.device_get(straight.params))
