"""The Trainer: exact resume, checkpoints, evaluation, early stopping, fine-tuning init, and non-finite stops."""

import json
import shutil

import jax
import numpy as np
import optax
import pytest

from combinax import data
from combinax import layers as cl
from combinax.models import MLP, TransformerLM
from combinax.store import checkpoints
from combinax.store.rundir import RunDirectoryError
from combinax.train import schedules
from combinax.train.trainer import EvalTask, Trainer, TrainingError, TrainTask


def lm_data(seed=0):
  rng = np.random.default_rng(seed)
  # Counting sequences (start, start + 1, ... mod 14): learnable, so the loss can fall.
  examples = [((rng.integers(0, 14) + np.arange(rng.integers(3, 12))) % 14 + 2,) for _ in range(200)]
  examples = [(e[0].astype(np.int32),) for e in examples]
  return data.Serial(data.FromList(examples, shuffle=True, seed=seed, repeat=True), data.Shuffle(32, seed=seed),
                     data.PackLM(8, eos_id=1), data.Batch(8))


def lm_trainer(output_dir, steps, **kwargs):
  model = lambda mode: TransformerLM(16, d_model=16, d_ff=32, n_layers=2, n_heads=2, dropout=0.1, max_len=8,
                                     mode=mode)
  task = TrainTask(data=lm_data(), optimizer=optax.adamw, weight_decay=0.01, schedule=schedules.constant(1e-2))
  return Trainer(model, task, output_dir=str(output_dir), steps=steps, checkpoint_every=5, log_every=5,
                 progress=False, **kwargs)


def classifier_trainer(output_dir, steps, checkpoint_every=5):
  """Dropout (the rng), adamw with a schedule (the optimizer state) and a shuffled, repeating source (the data
  position): everything an exact resume must restore."""
  rng = np.random.default_rng(0)
  examples = [(x, np.int32(x.sum() > 0)) for x in rng.normal(size=(64, 6)).astype(np.float32)]
  pipeline = data.Serial(data.FromList(examples, shuffle=True, seed=3, repeat=True), data.Shuffle(16, seed=4),
                         data.Batch(8))
  model = cl.Serial(cl.Dense(16), cl.Relu(), cl.Dropout(0.3), cl.Dense(2))
  task = TrainTask(data=pipeline, loss_layer=cl.CategoryCrossEntropy(), optimizer=optax.adamw, weight_decay=0.01,
                   schedule=schedules.rsqrt_decay(1e-2, warmup_steps=4))
  return Trainer(model, task, output_dir=str(output_dir), steps=steps, checkpoint_every=checkpoint_every, log_every=5,
                 progress=False)


def test_resume_is_bit_identical(tmp_path):
  straight = classifier_trainer(tmp_path / "straight", 20).run()
  classifier_trainer(tmp_path / "resumed", 10).run()
  resumed = classifier_trainer(tmp_path / "resumed", 20).run()
  assert int(resumed.step) == 20
  for a, b in zip(jax.tree_util.tree_leaves((straight.params, straight.opt_state)),
                  jax.tree_util.tree_leaves((resumed.params, resumed.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [5, 10, 15, 20]
  assert (tmp_path / "resumed" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (tmp_path / "resumed" / "operative_config.gin").exists()
  assert [p.name for p in checkpoints.list_checkpoints(tmp_path / "resumed")] == [
      "step_00000010", "step_00000015", "step_00000020"]


def test_a_resumed_run_logs_what_an_uninterrupted_run_logs(tmp_path):
  def records(output_dir):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"}
            for r in map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())]
  def trainer(output_dir, steps):
    t = classifier_trainer(output_dir, steps)
    t.log_every = 2
    return t
  trainer(tmp_path / "straight", 20).run()
  trainer(tmp_path / "killed", 12).run()   # logged up to step 12; its checkpoints: 5, 10, 12
  shutil.rmtree(checkpoints.latest(tmp_path / "killed"))   # as if killed after logging 12, before saving it
  trainer(tmp_path / "killed", 20).run()   # resumes from 10 and logs 12 again
  assert [r["step"] for r in records(tmp_path / "killed")] == list(range(2, 21, 2))
  assert records(tmp_path / "killed") == records(tmp_path / "straight")


def test_resuming_with_another_model_stops_and_leaves_the_checkpoints_alone(tmp_path):
  classifier_trainer(tmp_path, 5).run()
  other = classifier_trainer(tmp_path, 10)
  other.model = cl.Serial(cl.Dense(8), cl.Relu(), cl.Dense(2))   # 8 hidden units instead of 16
  with pytest.raises(RunDirectoryError, match=r"Dense_0/bias is float32\[16\] in the checkpoint but float32\[8\] in the "
                                              r"model\. .* holds a run of another model or optimizer"):
    other.run()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith("step_")] == ["step_00000005"]


def test_loss_falls_and_eval_keeps_the_best_checkpoint(tmp_path):
  eval_task = EvalTask(data=lm_data(seed=1), eval_every=10, n_batches=2)
  trainer = lm_trainer(tmp_path, 40, eval_task=eval_task, best_metric="eval/loss", keep_checkpoints=1)
  trainer.run()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  evals = [r["eval/loss"] for r in records if "eval/loss" in r]
  # 40 steps of a dropout-trained model: the fall is clear (about 2.7 -> 1.8-2.0 across seeds), its size noisy.
  assert losses[-1] < 0.8 * losses[0] and evals[-1] < evals[0] and len(evals) == 4
  assert "eval/accuracy" in records[-1]
  best = trainer.session.manager.best()
  assert checkpoints.read_manifest(best)["metadata"]["metrics"]["eval/loss"] == pytest.approx(min(evals))


def regression_data(bad_batch=None):
  rng = np.random.default_rng(0)
  batches = []
  for i in range(12):
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = x @ np.arange(4, dtype=np.float32)[:, None]
    if i == bad_batch:
      x[0, 0] = np.inf
    batches.append((x, y, np.ones_like(y)))
  return data.Serial(data.FromList(batches, repeat=True))


def regression_trainer(output_dir, steps, bad_batch=None, **kwargs):
  task = TrainTask(data=regression_data(bad_batch), loss_layer=cl.L2Loss(), optimizer=optax.sgd,
                   schedule=schedules.constant(0.05), clip_norm=None)
  return Trainer(MLP((8, 1), flatten=False), task, output_dir=str(output_dir), steps=steps, checkpoint_every=2,
                 log_every=1, progress=False, **kwargs)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  with pytest.raises(TrainingError, match=r"step 6: the loss or the gradients are not finite.*step_00000004"):
    regression_trainer(tmp_path, 10, bad_batch=5).run()
  assert checkpoints.latest(tmp_path).name == "step_00000004"
  good = regression_trainer(tmp_path / "clean", 4).run()
  restored, _ = checkpoints.restore(checkpoints.latest(tmp_path), good)
  np.testing.assert_array_equal(restored.params["Dense_0"]["kernel"], good.params["Dense_0"]["kernel"])


def test_fine_tuning_starts_from_another_runs_params(tmp_path):
  first = regression_trainer(tmp_path / "a", 4).run()
  task = TrainTask(data=regression_data(), loss_layer=cl.L2Loss(), optimizer=optax.adam, clip_norm=None,
                   schedule=schedules.constant(0.0), frozen=["Dense_0/*"])
  tuned = Trainer(MLP((8, 1), flatten=False), task, output_dir=str(tmp_path / "b"), steps=2, progress=False,
                  init_checkpoint=str(tmp_path / "a"), log_every=1).run()
  jax.tree_util.tree_map(np.testing.assert_array_equal, tuned.params, first.params)


def test_fine_tuning_starts_each_part_of_the_model_from_its_own_checkpoint(tmp_path, capsys):
  tower = regression_trainer(tmp_path / "tower", 2).run()          # MLP: Dense_0 (the tower), Dense_1 (its head)
  model = cl.Serial(cl.Serial(cl.Dense(8), name="image"), cl.Dense(1, name="head"))
  task = TrainTask(data=regression_data(), loss_layer=cl.L2Loss(), optimizer=optax.sgd, clip_norm=None,
                   schedule=schedules.constant(0.0))
  whole = Trainer(model, task, output_dir=str(tmp_path / "whole"), steps=1, progress=False, seed=7).run()
  started = Trainer(model, task, output_dir=str(tmp_path / "both"), steps=1, progress=False,
                    init_checkpoint={"": str(tmp_path / "whole"), "image": str(tmp_path / "tower")}).run()
  # image/ from the tower's run over the whole model's checkpoint; the rest from the whole model's
  np.testing.assert_array_equal(started.params["image"]["Dense_0"]["kernel"], tower.params["Dense_0"]["kernel"])
  np.testing.assert_array_equal(started.params["head"]["kernel"], whole.params["head"]["kernel"])
  assert not np.array_equal(whole.params["image"]["Dense_0"]["kernel"], tower.params["Dense_0"]["kernel"])
  assert "2 of its params are not in the model's image/ and are not used: Dense_1/bias, Dense_1/kernel" in \
      capsys.readouterr().out
  part_only = Trainer(model, task, output_dir=str(tmp_path / "part"), steps=1, progress=False,
                      init_checkpoint={"image": str(tmp_path / "tower")}).run()
  np.testing.assert_array_equal(part_only.params["image"]["Dense_0"]["bias"], tower.params["Dense_0"]["bias"])
  assert "2 params not in it keep their initialisation: head/bias, head/kernel" in capsys.readouterr().out
  with pytest.raises(TrainingError, match=r"init_checkpoint\['text'\]: the model has no params under text/"):
    Trainer(model, task, output_dir=str(tmp_path / "bad"), steps=1, progress=False,
            init_checkpoint={"text": str(tmp_path / "tower")}).run()


def test_early_stopping(tmp_path):
  eval_task = EvalTask(data=regression_data(), metrics={"loss": cl.L2Loss()}, eval_every=1, n_batches=1)
  task = TrainTask(data=regression_data(), loss_layer=cl.L2Loss(), optimizer=optax.sgd, clip_norm=None,
                   schedule=schedules.constant(0.0))   # nothing changes, so nothing improves
  state = Trainer(MLP((8, 1), flatten=False), task, eval_task=eval_task, output_dir=str(tmp_path), steps=50,
                  best_metric="eval/loss", early_stopping_patience=3, progress=False, log_every=10).run()
  assert int(state.step) == 4


def test_per_group_learning_rates_and_tensorboard_files(tmp_path):
  def trainer(output_dir, multipliers):
    task = TrainTask(data=regression_data(), loss_layer=cl.L2Loss(), optimizer=optax.sgd, clip_norm=None,
                     schedule=schedules.constant(0.05), lr_multipliers=multipliers)
    return Trainer(MLP((8, 1), flatten=False), task, output_dir=str(output_dir), steps=3, progress=False,
                   log_every=1)
  plain = trainer(tmp_path / "plain", None).run()
  slow = trainer(tmp_path / "slow", {"Dense_0/*": 0.5, "Dense_1/*": 0.0}).run()
  initial = Trainer(MLP((8, 1), flatten=False), TrainTask(data=regression_data(), loss_layer=cl.L2Loss()),
                    output_dir=str(tmp_path / "init"), steps=0, progress=False).run()
  np.testing.assert_array_equal(slow.params["Dense_1"]["kernel"], initial.params["Dense_1"]["kernel"])
  moved_plain = np.abs(np.asarray(plain.params["Dense_0"]["kernel"] - initial.params["Dense_0"]["kernel"])).sum()
  moved_slow = np.abs(np.asarray(slow.params["Dense_0"]["kernel"] - initial.params["Dense_0"]["kernel"])).sum()
  assert 0 < moved_slow < moved_plain
  assert list((tmp_path / "plain" / "tensorboard").glob("events.out.tfevents.*"))
