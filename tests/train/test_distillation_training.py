"""A teacher inside the training step: its params never change and no optimizer sees them, alpha = 0 at T = 1 is
plain training bit for bit, and the Trainer reads the teacher from a checkpoint (and refuses another vocabulary)."""

import jax
import numpy as np
import optax
import pytest

from combinax import layers as cl
from combinax.models import TransformerLM
from combinax.store import checkpoints
from combinax.train import objective, schedules
from combinax.train.step import TrainStep
from combinax.train.trainer import Trainer, TrainingError, TrainTask
from test_trainer import lm_data


def lm(vocab=16, d_model=16, mode="train"):
  return TransformerLM(vocab, d_model=d_model, d_ff=32, n_layers=1, n_heads=2, dropout=0.0, max_len=8, mode=mode)


def batches(n):
  stream = lm_data()()
  return [next(stream) for _ in range(n)]


@pytest.fixture(scope="module")
def teacher():
  model = lm(d_model=32)
  params, _ = model.init(jax.random.key(7), jax.ShapeDtypeStruct((8, 8), np.int32))
  return model, params


def run(step, data):
  state = step.init(jax.random.key(0), data[0])
  losses = []
  for batch in data:
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return jax.block_until_ready(state), losses


def test_the_teacher_never_changes_and_no_optimizer_state_is_kept_for_it(teacher):
  model, params = teacher
  before = jax.tree_util.tree_map(np.array, params)
  student = lm()
  taught = objective.teacher(model, params)(objective.plain(student, cl.DistillationLoss(2.0, 0.7)))
  step = TrainStep(student, taught, optax.adam(1e-2))
  state, losses = run(step, batches(12))
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(step.constants["teacher"])):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state)) == 2 * sum(
      x.size for x in jax.tree_util.tree_leaves(state.params)) + 1   # Adam's two moments of the student, a count
  assert losses[-1] < losses[0]


def test_alpha_zero_at_temperature_one_trains_exactly_as_without_a_teacher(teacher):
  model, params = teacher
  data = batches(5)
  student = lm()
  taught = objective.teacher(model, params)(objective.plain(student, cl.DistillationLoss(1.0, 0.0)))
  distilled, _ = run(TrainStep(student, taught, optax.adam(1e-2)), data)
  plain, _ = run(TrainStep(lm(), cl.WeightedCategoryCrossEntropy(), optax.adam(1e-2)), data)
  for a, b in zip(jax.tree_util.tree_leaves(distilled.params), jax.tree_util.tree_leaves(plain.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_trainer_reads_its_teacher_from_a_checkpoint_and_refuses_another_vocabulary(teacher, tmp_path):
  model, params = teacher
  checkpoints.save(tmp_path / "teacher", 0, {"params": params, "state": {}}, {})
  task = TrainTask(data=lm_data(), loss_layer=cl.DistillationLoss(2.0, 0.5), schedule=schedules.constant(1e-2),
                   teacher=lambda mode: lm(d_model=32, mode=mode), teacher_checkpoint=str(tmp_path / "teacher"))
  state = Trainer(lambda mode: lm(mode=mode), task, output_dir=str(tmp_path / "student"), steps=4,
                  checkpoint_every=4, log_every=2, progress=False).run()
  assert int(state.step) == 4
  other = TrainTask(data=lm_data(), loss_layer=cl.DistillationLoss(), teacher=lm(vocab=20, d_model=32),
                    teacher_checkpoint=str(tmp_path / "teacher"))
  with pytest.raises(TrainingError, match=r"the teacher's outputs .*20.* differ from the student's .*16.*: "
                                          "distillation needs the teacher's vocabulary"):
    Trainer(lambda mode: lm(mode=mode), other, output_dir=str(tmp_path / "other"), steps=2, progress=False).run()
  with pytest.raises(ValueError, match="distillation needs both teacher"):
    TrainTask(data=lm_data(), teacher=model)
