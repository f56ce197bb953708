"""Checkpoints: round trip (incl. PRNG keys and shardings), atomic writes, keep-last-N and best, damage detection."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from combinax.train import checkpoints as ckpt


def tree(seed=0):
  k = jax.random.key(seed)
  return {"params": {"w": jax.random.normal(k, (4, 3)), "b": jnp.arange(3, dtype=jnp.int32)},
          "rng": jax.random.fold_in(k, 1), "step": jnp.array(seed, jnp.int32)}


def test_round_trip_with_keys_and_metadata(tmp_path):
  saved = tree(3)
  path = ckpt.save(tmp_path, 3, saved, {"data": {"index": 17}, "metrics": {"loss": 1.5}})
  assert path.name == "step_00000003"
  restored, metadata = ckpt.restore(path, tree(0))
  assert metadata == {"data": {"index": 17}, "metrics": {"loss": 1.5}}
  np.testing.assert_array_equal(restored["params"]["w"], saved["params"]["w"])
  np.testing.assert_array_equal(jax.random.key_data(restored["rng"]), jax.random.key_data(saved["rng"]))
  assert restored["params"]["b"].dtype == jnp.int32


def test_restore_places_arrays_with_the_template_sharding(tmp_path):
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded = jax.device_put(jnp.arange(16.0).reshape(8, 2), NamedSharding(mesh, P("data")))
  ckpt.save(tmp_path, 1, {"x": sharded})
  template = {"x": jax.device_put(jnp.zeros((8, 2)), NamedSharding(mesh, P("data")))}
  restored, _ = ckpt.restore(ckpt.latest(tmp_path), template)
  assert restored["x"].sharding == template["x"].sharding
  np.testing.assert_array_equal(restored["x"], np.arange(16.0).reshape(8, 2))


def test_mismatched_template_is_a_clear_error(tmp_path):
  path = ckpt.save(tmp_path, 1, tree())
  with pytest.raises(ckpt.CheckpointError, match="missing.*params/extra"):
    ckpt.restore(path, {**tree(), "params": {**tree()["params"], "extra": jnp.zeros(2)}})
  wrong = tree()
  wrong["params"]["w"] = jnp.zeros((4, 4))
  with pytest.raises(ckpt.CheckpointError, match=r"params/w is float32\[4, 3\] in the checkpoint"):
    ckpt.restore(path, wrong)


def test_truncated_or_corrupted_checkpoints_are_detected(tmp_path):
  path = ckpt.save(tmp_path, 1, tree())
  archive = path / "arrays.npz"
  data = archive.read_bytes()
  archive.write_bytes(data[: len(data) // 2])
  with pytest.raises(ckpt.CheckpointError, match="truncated or corrupted"):
    ckpt.restore(path, tree())
  path = ckpt.save(tmp_path, 2, tree())
  flipped = bytearray((path / "arrays.npz").read_bytes())
  flipped[len(flipped) // 2] ^= 0xFF
  (path / "arrays.npz").write_bytes(bytes(flipped))
  with pytest.raises(ckpt.CheckpointError, match="corrupted"):
    ckpt.restore(path, tree())
  (path / "manifest.json").write_text("{not json")
  with pytest.raises(ckpt.CheckpointError, match="manifest is damaged"):
    ckpt.restore(path, tree())


def test_a_failed_save_leaves_earlier_checkpoints_intact(tmp_path, monkeypatch):
  ckpt.save(tmp_path, 1, tree(1))
  def explode(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(ckpt.os, "rename", explode)
  with pytest.raises(OSError, match="disk full"):
    ckpt.save(tmp_path, 2, tree(2))
  monkeypatch.undo()
  assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind
  restored, _ = ckpt.restore(ckpt.latest(tmp_path), tree())
  np.testing.assert_array_equal(restored["params"]["w"], tree(1)["params"]["w"])


def test_manager_keeps_last_n_and_the_best(tmp_path):
  manager = ckpt.CheckpointManager(tmp_path, keep=2, best_metric="loss")
  for step, loss in [(1, 5.0), (2, 1.0), (3, 3.0), (4, 4.0), (5, 6.0)]:
    manager.save(step, tree(step), {"metrics": {"loss": loss}})
  assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004", "step_00000005"]
  assert manager.best().name == "step_00000002" and manager.latest().name == "step_00000005"
  assert json.loads((manager.best() / "manifest.json").read_text())["step"] == 2
