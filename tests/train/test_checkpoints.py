"""Checkpoints on Orbax: round trip (incl. PRNG keys, shardings and per-process metadata), restore onto other meshes,
asynchronous saves, keep-last-N and best, and damage of every kind detected rather than loaded."""

import json
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from combinax.store import checkpoints as ckpt
from combinax.store import integrity


def tree(seed=0):
  k = jax.random.key(seed)
  return {"params": {"w": jax.random.normal(k, (4, 3)), "b": jnp.arange(3, dtype=jnp.int32)},
          "rng": jax.random.fold_in(k, 1), "step": jnp.array(seed, jnp.int32)}


def mesh(n=8):
  return Mesh(np.array(jax.devices()[:n]), ("data",))


def biggest_data_file(checkpoint):
  return max((checkpoint / "state").rglob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)


def test_round_trip_with_keys_and_metadata(tmp_path):
  saved = tree(3)
  path = ckpt.save(tmp_path, 3, saved, {"metrics": {"loss": 1.5}}, host_metadata={"data": "position 17"})
  assert path.name == "step_00000003"
  restored, metadata = ckpt.restore(path, tree(0))
  assert metadata == {"metrics": {"loss": 1.5}}
  assert ckpt.read_host_metadata(path) == {"data": "position 17"}
  np.testing.assert_array_equal(restored["params"]["w"], saved["params"]["w"])
  np.testing.assert_array_equal(jax.random.key_data(restored["rng"]), jax.random.key_data(saved["rng"]))
  assert restored["params"]["b"].dtype == jnp.int32


def test_a_relative_directory_saves_and_restores(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)   # (`--output_dir=runs/lm`; Orbax itself takes absolute paths only)
  path = ckpt.save("runs/lm", 3, tree(3))
  assert path == ckpt.latest("runs/lm") and not path.is_absolute()
  restored, _ = ckpt.restore(path, tree(0))
  np.testing.assert_array_equal(restored["params"]["w"], tree(3)["params"]["w"])


def test_the_stored_tree_reads_as_the_params_paths(tmp_path):
  path = ckpt.save(tmp_path, 1, tree())
  stored = json.loads((path / "state" / "_METADATA").read_text())["tree_metadata"]
  assert sorted(stored) == ["('params', 'b')", "('params', 'w')", "('rng',)", "('step',)"]
  assert [leaf["path"] for leaf in ckpt.read_manifest(path)["leaves"]] == ["params/b", "params/w", "rng", "step"]
  assert not list(path.rglob("*.pkl")) and not list(path.rglob("*pickle*"))


def test_restore_places_arrays_with_the_template_sharding(tmp_path):
  sharded = jax.device_put(jnp.arange(16.0).reshape(8, 2), NamedSharding(mesh(), P("data")))
  ckpt.save(tmp_path, 1, {"x": sharded})
  template = {"x": jax.device_put(jnp.zeros((8, 2)), NamedSharding(mesh(), P("data")))}
  restored, _ = ckpt.restore(ckpt.latest(tmp_path), template)
  assert restored["x"].sharding == template["x"].sharding
  np.testing.assert_array_equal(restored["x"], np.arange(16.0).reshape(8, 2))


def test_a_sharded_checkpoint_restores_replicated_on_fewer_devices_or_unsharded(tmp_path):
  values = jax.random.normal(jax.random.key(0), (64, 32))
  ckpt.save(tmp_path, 1, {"w": jax.device_put(values, NamedSharding(mesh(8), P("data")))})   # FSDP over 8
  two = NamedSharding(mesh(2), P())
  restored, _ = ckpt.restore(ckpt.latest(tmp_path), {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=two)})
  assert restored["w"].sharding == two
  np.testing.assert_array_equal(restored["w"], values)
  plain, _ = ckpt.restore(ckpt.latest(tmp_path), {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32)})
  assert not plain["w"].committed   # no sharding asked for: an ordinary array, as jnp.asarray makes
  np.testing.assert_array_equal(plain["w"], values)


def test_checksums_do_not_depend_on_the_sharding():
  values = jax.random.normal(jax.random.key(0), (64, 32))
  forms = [values, np.asarray(values), jax.device_put(values, NamedSharding(mesh(8), P("data"))),
           jax.device_put(values, NamedSharding(mesh(4), P(None, "data")))]
  assert len({tuple(c) for c in integrity.checksums(forms)}) == 1
  assert integrity.checksums([np.ones(1 << 21, np.float32)]) != integrity.checksums([np.full(1 << 21, 2.0,
                                                                                              np.float32)])
  flipped = np.asarray(values).copy().view(np.uint32)
  for bit in (0, 17, 31):   # any single flipped bit changes both sums
    changed = flipped.copy()
    changed[5, 7] ^= np.uint32(1 << bit)
    assert integrity.checksums([changed.view(np.float32)]) != integrity.checksums([values])


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "float16", "bfloat16", "int32", "uint32",
                                   "float32", "int64", "float64", "complex64"])
def test_a_host_arrays_checksum_is_the_definitions_whichever_engine_computes_it(dtype):
  # (XLA computes it for the dtypes JAX holds as they are, numpy for the rest; both must give the numbers of the
  # module's definition, written once, in numpy.)
  values = np.random.default_rng(0).normal(size=(3, 1000)) * 1000
  x = (values.astype(np.complex64) * 1j + values if dtype == "complex64" else values > 0 if dtype == "bool"
       else values.astype(jnp.bfloat16 if dtype == "bfloat16" else dtype))
  assert integrity.checksums([x]) == [[int(v) for v in integrity._checksum(x, np)]]


def test_mismatched_template_is_a_clear_error(tmp_path):
  path = ckpt.save(tmp_path, 1, tree())
  with pytest.raises(ckpt.CheckpointError, match="missing.*params/extra"):
    ckpt.restore(path, {**tree(), "params": {**tree()["params"], "extra": jnp.zeros(2)}})
  wrong = tree()
  wrong["params"]["w"] = jnp.zeros((4, 4))
  with pytest.raises(ckpt.CheckpointError, match=r"params/w is float32\[4, 3\] in the checkpoint"):
    ckpt.restore(path, wrong)


def test_a_flipped_bit_in_the_arrays_is_detected(tmp_path):
  path = ckpt.save(tmp_path, 1, {"w": jnp.arange(4096, dtype=jnp.float32)})
  data = biggest_data_file(path)
  flipped = bytearray(data.read_bytes())
  flipped[len(flipped) // 2] ^= 0x10
  data.write_bytes(bytes(flipped))
  with pytest.raises(ckpt.CheckpointError, match=r"differ from what was saved \(checksum mismatch\): w"):
    ckpt.restore(path, {"w": jnp.zeros(4096)})


def test_a_truncated_array_file_is_detected(tmp_path):
  path = ckpt.save(tmp_path, 1, {"w": jnp.arange(4096, dtype=jnp.float32)})
  data = biggest_data_file(path)
  data.write_bytes(data.read_bytes()[:100])
  with pytest.raises(ckpt.CheckpointError, match="arrays cannot be read"):
    ckpt.restore(path, {"w": jnp.zeros(4096)})


def test_edited_or_damaged_manifests_and_host_records_are_detected(tmp_path):
  path = ckpt.save(tmp_path, 1, tree(), {"metrics": {"loss": 1.0}}, host_metadata={"data": "[1, 2]"})
  manifest = path / "manifest" / "manifest.json"
  record = json.loads(manifest.read_text())
  record["metadata"]["metrics"]["loss"] = 0.5
  manifest.write_text(json.dumps(record))
  with pytest.raises(ckpt.CheckpointError, match="manifest was changed or damaged"):
    ckpt.restore(path, tree())
  manifest.write_text("{not json")
  with pytest.raises(ckpt.CheckpointError, match="manifest is damaged"):
    ckpt.read_manifest(path)
  host = path / "hosts" / "process_0-of-1.json"
  record = json.loads(host.read_text())
  record["metadata"]["data"] = "[1, 3]"   # another data position would silently read other data
  host.write_text(json.dumps(record))
  with pytest.raises(ckpt.CheckpointError, match="process_0-of-1.json: changed or damaged"):
    ckpt.read_host_metadata(path)


def test_a_failed_save_leaves_earlier_checkpoints_intact(tmp_path, monkeypatch):
  ckpt.save(tmp_path, 1, tree(1))
  original = ckpt._save_args

  def explode(*args, **kwargs):
    original(*args, **kwargs)   # the arrays are ready, then the write fails
    raise OSError("disk full")
  monkeypatch.setattr(ckpt, "_save_args", explode)
  with pytest.raises(OSError, match="disk full"):
    ckpt.save(tmp_path, 2, tree(2))
  monkeypatch.undo()
  assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]
  restored, _ = ckpt.restore(ckpt.latest(tmp_path), tree())
  np.testing.assert_array_equal(restored["params"]["w"], tree(1)["params"]["w"])


def test_leftovers_of_killed_saves_are_never_checkpoints_and_are_cleared(tmp_path):
  ckpt.save(tmp_path, 1, tree(1))
  (tmp_path / "step_00000002.orbax-checkpoint-tmp-1700000000").mkdir()      # Orbax's unfinished save
  (tmp_path / ".deleting-step_00000000").mkdir()                           # a delete cut short
  (tmp_path / "step_00000003").mkdir()                                     # no manifest: not committed
  assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]
  ckpt.CheckpointManager(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000003"]


def test_checkpoint_folders_are_as_readable_as_the_users_umask_allows_not_private(tmp_path):
  mask = os.umask(0o022)
  try:
    saved = ckpt.save(tmp_path, 1, tree(1))
  finally:
    os.umask(mask)
  folders = [saved, *[p for p in saved.rglob("*") if p.is_dir()]]
  assert {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o755"}


def test_asynchronous_saves_return_before_the_write_and_commit_on_wait(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  release = threading.Event()
  original = ocp.handlers.PyTreeCheckpointHandler.async_save

  class Held:   # a commit future that completes when the test lets it
    def result(self, timeout=None):
      release.wait(timeout)

  async def slow(self, *args, **kwargs):   # the write in the background waits until the test lets it go
    return list(await original(self, *args, **kwargs) or []) + [Held()]
  monkeypatch.setattr(ocp.handlers.PyTreeCheckpointHandler, "async_save", slow)
  manager = ckpt.CheckpointManager(tmp_path, keep=5)
  state = tree(1)
  path = manager.save(1, state)
  assert not path.exists() and ckpt.list_checkpoints(tmp_path) == []   # training goes on meanwhile
  state = jax.tree_util.tree_map(lambda x: x, tree(2))
  release.set()
  manager.wait()
  assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]
  restored, _ = ckpt.restore(path, tree())
  np.testing.assert_array_equal(restored["params"]["w"], tree(1)["params"]["w"])
  manager.close()


def test_saved_values_are_the_ones_at_save_time_even_when_the_buffers_are_donated(tmp_path):
  step = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x + 1, s), donate_argnums=0)
  state = {"w": jnp.zeros((256, 256)), "b": jnp.ones((256,))}
  manager = ckpt.CheckpointManager(tmp_path, keep=10)
  for i in range(1, 4):
    state = step(state)
    manager.save(i, state)
  state = step(state)   # donates the buffers of the last save while it is written
  manager.close()
  for i in range(1, 4):
    restored, _ = ckpt.restore(ckpt.list_checkpoints(tmp_path)[i - 1], {"w": jnp.zeros((256, 256)),
                                                                        "b": jnp.zeros(256)})
    np.testing.assert_array_equal(restored["w"], np.full((256, 256), i, np.float32))


def test_manager_keeps_last_n_and_the_best(tmp_path):
  manager = ckpt.CheckpointManager(tmp_path, keep=2, best_metric="loss")
  for step, loss in [(1, 5.0), (2, 1.0), (3, 3.0), (4, 4.0), (5, 6.0)]:
    manager.save(step, tree(step), {"metrics": {"loss": loss}})
  manager.wait()
  assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004", "step_00000005"]
  assert manager.best().name == "step_00000002" and manager.latest().name == "step_00000005"
  assert ckpt.read_manifest(manager.best())["step"] == 2
  (manager.best() / "manifest" / "manifest.json").write_text("{damaged")
  assert manager.best().name == "step_00000004"   # a damaged checkpoint is never the best, and saving goes on
  manager.save(6, tree(6), {"metrics": {"loss": 7.0}})
  manager.close()
  aside = manager.set_aside(ckpt.latest(tmp_path))
  assert aside.name == "step_00000006.damaged" and manager.latest().name == "step_00000005"
