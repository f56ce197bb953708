"""The teacher's top-k logits stored once and read back reproduce the online distillation loss; writing them resumes
after a kill; students cut from every other layer of their teacher."""

import json

import jax
import numpy as np
import optax
import pytest

from combinax import layers as cl
from combinax.data.base import DataError
from combinax.distill import StudentError, TopKBatches, student_checkpoint, take_layers, teacher_topk
from combinax.models import TransformerLM
from combinax.store import checkpoints
from combinax.train.step import TrainStep

VOCAB = 16


def lm(n_layers=2, d_model=32, mode="train"):
  return TransformerLM(VOCAB, d_model=d_model, d_ff=64, n_layers=n_layers, n_heads=2, dropout=0.0, max_len=8,
                       mode=mode)


def lm_data(seed=0):
  """`(tokens, targets, weights)` batches of counting sequences, the same every time (a deterministic pipeline)."""
  def stream():
    rng = np.random.default_rng(seed)
    while True:
      start = rng.integers(0, VOCAB, (8, 1))
      tokens = ((start + np.arange(8)) % VOCAB).astype(np.int32)
      yield tokens, tokens, np.ones((8, 8), np.float32)
  return stream


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  folder = tmp_path_factory.mktemp("teacher")
  params, _ = lm(n_layers=4).init(jax.random.key(3), jax.ShapeDtypeStruct((8, 8), np.int32))
  checkpoints.save(folder, 0, {"params": params, "state": {}}, {})
  return lm(n_layers=4), params, folder


def test_stored_top_k_logits_reproduce_the_online_loss(teacher, tmp_path):
  model, params, folder = teacher
  teacher_topk(tmp_path / "topk", teacher=model, teacher_checkpoint=str(folder), data=lm_data(), k=VOCAB, batches=3)
  stored = list(TopKBatches(str(tmp_path / "topk"))())
  assert len(stored) == 3
  student, _ = lm().init(jax.random.key(0), jax.ShapeDtypeStruct((8, 8), np.int32))
  online, offline = cl.DistillationLoss(2.0, 0.5), cl.DistillationLoss(2.0, 0.5, top_k=True)
  for (tokens, values, ids, targets, weights), (same_tokens, _, _) in zip(stored, _batches(lm_data(), 3)):
    np.testing.assert_array_equal(tokens, same_tokens)
    logits = lm().apply(student, {}, tokens)[0]
    expected = online.apply({}, {}, (logits, model.apply(params, {}, tokens)[0], targets, weights))[0]
    got = offline.apply({}, {}, (logits, values, ids, targets, weights))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def _batches(pipeline, n):
  stream = pipeline()
  return [next(stream) for _ in range(n)]


def test_writing_resumes_after_the_batches_already_written_and_refuses_another_teacher(teacher, tmp_path):
  model, _, folder = teacher
  out = tmp_path / "topk"
  teacher_topk(out, teacher=model, teacher_checkpoint=str(folder), data=lm_data(), k=4, batches=4)
  whole = [np.load(out / f"topk-{i:05d}.npz")["values"] for i in range(4)]
  (out / "topk-00002.npz").unlink()
  (out / "topk-00003.npz").unlink()   # as if killed after two batches
  before = (out / "topk-00000.npz").stat().st_mtime_ns
  teacher_topk(out, teacher=model, teacher_checkpoint=str(folder), data=lm_data(), k=4, batches=4)
  assert (out / "topk-00000.npz").stat().st_mtime_ns == before   # not written again
  for i in range(4):
    np.testing.assert_array_equal(np.load(out / f"topk-{i:05d}.npz")["values"], whole[i])
  with pytest.raises(DataError, match="holds top-4 log-probabilities of another teacher"):
    teacher_topk(out, teacher=lm(n_layers=4, d_model=16), teacher_checkpoint=str(folder), data=lm_data(), k=4,
                 batches=1)
  with pytest.raises(DataError, match="no teacher top-k logits here"):
    list(TopKBatches(str(tmp_path))())
  meta = json.loads((out / "topk.json").read_text())
  del meta["values"]   # a folder of the first version, which stored raw logits
  (out / "topk.json").write_text(json.dumps(meta))
  with pytest.raises(DataError, match="holds the teacher's top-k logits, DistillationLoss.top_k=True. takes its "
                                      "log-probabilities; write them again"):
    list(TopKBatches(str(out))())


def test_a_student_trains_on_stored_top_k_logits(teacher, tmp_path):
  model, _, folder = teacher
  teacher_topk(tmp_path / "topk", teacher=model, teacher_checkpoint=str(folder), data=lm_data(), k=4, batches=6)
  step = TrainStep(lm(n_layers=1), cl.DistillationLoss(2.0, 0.5, top_k=True), optax.adam(1e-2))
  stream = TopKBatches(str(tmp_path / "topk"), repeat=True)()
  state = step.init(jax.random.key(0), next(TopKBatches(str(tmp_path / "topk"))()))
  losses = []
  for _ in range(24):
    state, metrics = step(state, next(stream))
    losses.append(float(jax.block_until_ready(metrics["loss"])))
  assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])


def test_a_student_starts_from_every_other_layer_of_its_teacher(teacher, tmp_path, monkeypatch):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path / "cache"))
  model, params, folder = teacher
  cut = take_layers(params, [0, 2])
  np.testing.assert_array_equal(cut["blocks"]["attention"]["q"]["kernel"],
                                np.asarray(params["blocks"]["attention"]["q"]["kernel"])[[0, 2]])
  np.testing.assert_array_equal(cut["embed"]["embedding"], params["embed"]["embedding"])
  student = lm(n_layers=2)
  student.apply(cut, {}, np.zeros((1, 8), np.int32))   # the shapes of the 2-layer model
  path = student_checkpoint(str(folder), [0, 2])
  assert student_checkpoint(str(folder), [0, 2]) == path   # written once, then reused
  for (p, a), (_, b) in zip(sorted(checkpoints.read_arrays(path, prefix="params").items()),
                            sorted(checkpoints.read_arrays(checkpoints.latest(folder), prefix="params").items())):
    np.testing.assert_array_equal(a, b[[0, 2]] if p.startswith("blocks/") else b, err_msg=p)
  with pytest.raises(StudentError, match=r"blocks/.* has 4 layers, asked for layers \[0, 4\]"):
    take_layers(params, [0, 4])
