"""An LM's quantized weights are made once and kept in the pretrained cache: later loads restore exactly what
quantizing made (every leaf's dtype and shape, every bit) without building the float32 weights, and a cache of
another kind, version or source, a damaged one, or one a failed write left, is never used as it is: it is rebuilt
(with a warning saying why), or refused where nothing can rebuild it."""

import json
import shutil
import warnings

import jax
import numpy as np
import pytest

from combinax import quant
from combinax.paths import leaves_with_paths
from combinax.pretrained import quantized, registry
from combinax.pretrained.families import PretrainedError
from combinax.store import checkpoints, integrity

import tiny_llama

pytest.importorskip("gguf")


@pytest.fixture
def name(tmp_path, monkeypatch):
  return tiny_llama.register(monkeypatch, tmp_path)


def fresh(name, kind):
  """What quantizing gives, made here without any quantized cache."""
  if kind == "gguf":
    return registry.load(name, packed=True)[1]
  return quant.for_decoding(registry.model(name), registry.load(name)[1], kind)


def assert_identical(restored, made):
  """The same tree (paths, and each QuantizedArray's kind, axis and dtype), every leaf with the same dtype, shape
  and bits."""
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(made)
  for (path, a), (_, b) in zip(leaves_with_paths(restored), leaves_with_paths(made)):
    a, b = np.asarray(a), np.asarray(b)
    assert (a.dtype, a.shape) == (b.dtype, b.shape), path
    assert a.tobytes() == b.tobytes(), path


def no_float32_weights(monkeypatch):
  """Makes building (or importing) the float32 weights, or quantizing, fail the test."""
  from combinax.pretrained import llama
  for module, function in ((registry, "load"), (registry, "import_to_cache"), (quant, "for_decoding"),
                           (llama, "import_files")):
    monkeypatch.setattr(module, function, lambda *a, **k: pytest.fail("the float32 weights were built"))


def reseal(folder, **changes):
  """Rewrites the cache's manifest metadata with `changes` and seals it again: a cache written by another version
  of combinax (or for another kind or source), not a damaged one."""
  path = checkpoints.latest(folder) / "manifest" / "manifest.json"
  manifest = json.loads(path.read_text())
  manifest["metadata"].update(changes)
  path.write_text(json.dumps(integrity.sealed({k: v for k, v in manifest.items() if k != "sha256"})))


def flip_bytes(folder, params):
  """Flips a bit in the middle of the largest array of `params` where the cache in `folder` stores it (as a bad disk
  would). Found by its bytes: Orbax's data files also hold headers and gaps that no array's checksum covers, and a
  blind flip there (every 1,000th byte of the biggest file) went unseen in one run of six."""
  raw = max((np.asarray(leaf) for _, leaf in leaves_with_paths(params)), key=lambda a: a.nbytes).tobytes()
  for data in (checkpoints.latest(folder) / "state").rglob("ocdbt.process_*/d/*"):
    damaged = bytearray(data.read_bytes())
    at = damaged.find(raw)
    if at >= 0:
      damaged[at + len(raw) // 2] ^= 0x10
      data.write_bytes(bytes(damaged))
      return
  raise AssertionError(f"no data file of {folder} holds the array's {len(raw)} bytes as they are")


@pytest.mark.parametrize("kind", ["int8", "q4", "q4_1", "gguf"])
def test_a_second_load_restores_exactly_what_quantizing_made_without_the_float32_weights(name, kind, monkeypatch):
  made = fresh(name, kind)
  model, first, tokenizer = quantized.load_quantized(name, kind)
  assert_identical(first, made)
  assert checkpoints.latest(quantized.cache_folder(name, kind)) is not None
  no_float32_weights(monkeypatch)
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # a whole cache is used without a word
    again, restored, tokenizer_again = quantized.load_quantized(name, kind)
  assert_identical(restored, made)
  is_quantized = lambda leaf: isinstance(leaf, quant.QuantizedArray)
  values = {np.asarray(leaf.values).dtype.name for leaf in jax.tree_util.tree_leaves(restored, is_leaf=is_quantized)
            if is_quantized(leaf)}
  assert values == ({"int8"} if kind == "int8" else {"int8", "uint8"})   # (4 bits: two a byte; tables int8)
  assert str(again) == str(model) and list(tokenizer_again.encode("ab a")) == list(tokenizer.encode("ab a"))
  logits, _ = model.apply(restored, {}, np.asarray([[1, 3, 4]], np.int32))
  expected, _ = model.apply(made, {}, np.asarray([[1, 3, 4]], np.int32))
  np.testing.assert_array_equal(logits, expected)


@pytest.mark.parametrize("changes, problem", [
    ({"kind": "q4"}, "its kind is 'q4', where 'int8' is needed"),
    ({"combinax": "0.0.1"}, "its combinax is '0.0.1', where "),
    ({"format": "combinax-quantized-v0"}, "its format is 'combinax-quantized-v0', where 'combinax-quantized-v1'"),
    ({"source": "the float32 weights of checkpoint sha256 0000"}, "its source is 'the float32 weights of checkpoint "
                                                                  "sha256 0000', where "),
    ({"layout": {"embed/embedding": "q4 -1 float32"}}, "its layout of the quantized weights is not one of int8"),
])
def test_a_cache_of_another_kind_version_format_or_source_is_rebuilt_with_a_warning(name, changes, problem):
  made = fresh(name, "int8")
  quantized.load_quantized(name, "int8")
  folder = quantized.cache_folder(name, "int8")
  reseal(folder, **changes)
  with pytest.warns(UserWarning, match=f"cannot be used, {problem}.*they are made again"):
    _, params, _ = quantized.load_quantized(name, "int8")
  assert_identical(params, made)
  assert_identical(checkpoints.restore(checkpoints.latest(folder), params, prefix="params")[0], made)
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # rebuilt whole: used as it is from now on
    quantized.load_quantized(name, "int8")


def test_another_kinds_cache_in_its_place_is_rebuilt(name):
  quantized.load_quantized(name, "q4")
  shutil.copytree(quantized.cache_folder(name, "q4"), quantized.cache_folder(name, "int8"))
  with pytest.warns(UserWarning, match="its kind is 'q4', where 'int8' is needed"):
    _, params, _ = quantized.load_quantized(name, "int8")
  assert_identical(params, fresh(name, "int8"))


def test_a_cache_whose_weights_are_not_the_float32_checkpoints_is_rebuilt(name):
  quantized.load_quantized(name, "int8")
  folder = quantized.cache_folder(name, "int8")
  found = checkpoints.latest(folder)
  metadata = checkpoints.read_manifest(found)["metadata"]
  arrays = checkpoints.read_arrays(found)
  del arrays["params/final_norm/scale"]
  shutil.rmtree(folder)
  from combinax.paths import unflatten
  checkpoints.save(folder, 0, unflatten(arrays), metadata)   # whole, but a weight short
  with pytest.warns(UserWarning, match=r"not the float32 checkpoint's: 1 differ \(final_norm/scale: missing here, "
                                       r"\(\(32,\), 'float32'\) there\)"):
    _, params, _ = quantized.load_quantized(name, "int8")
  assert_identical(params, fresh(name, "int8"))


def test_a_damaged_cache_is_rebuilt_with_a_warning(name):
  made = fresh(name, "q4_1")
  quantized.load_quantized(name, "q4_1")
  flip_bytes(quantized.cache_folder(name, "q4_1"), made)
  with pytest.warns(UserWarning, match=r"cannot be used, .*checksum mismatch.*they are made again"):
    _, params, _ = quantized.load_quantized(name, "q4_1")
  assert_identical(params, made)
  manifest = checkpoints.latest(quantized.cache_folder(name, "q4_1")) / "manifest" / "manifest.json"
  manifest.write_text(manifest.read_text()[:-20])
  with pytest.warns(UserWarning, match=r"cannot be used, .*the manifest is damaged.*they are made again"):
    _, params, _ = quantized.load_quantized(name, "q4_1")
  assert_identical(params, made)


def test_a_damaged_cache_with_nothing_to_rebuild_it_from_is_refused_saying_how_to_fix_it(name, monkeypatch):
  _, made, _ = quantized.load_quantized(name, "int8")
  flip_bytes(quantized.cache_folder(name, "int8"), made)
  flip_bytes(registry.cache_path(name), registry.load(name)[1])   # the float32 weights it was made from
  monkeypatch.setattr(registry, "source_files", lambda name: None)   # and the package they came from
  with pytest.warns(UserWarning, match=r"the int8 weights cached in .* cannot be used, .*checksum mismatch"), \
       pytest.raises(PretrainedError, match=r"(?s)tiny-llama cannot be used, it is damaged.*checksum mismatch.*not "
                                            r"installed.*python -m combinax.pretrained download tiny-llama"):
    quantized.load_quantized(name, "int8")


def test_a_failed_write_leaves_no_cache_and_the_next_load_makes_it_again(name, monkeypatch):
  made = fresh(name, "int8")
  saved = checkpoints.save

  def save_then_fail(directory, *args, **kwargs):
    saved(directory, *args, **kwargs)   # the whole checkpoint written, in the temporary folder ...
    raise OSError(28, "No space left on device")   # ... and then the disk fills before it is renamed into place

  monkeypatch.setattr(quantized.checkpoints, "save", save_then_fail)
  with pytest.warns(UserWarning, match=r"could not be cached in .*quantized-int8 \(OSError: .*No space left on device"
                                       r"\); they were made in memory"):
    _, params, _ = quantized.load_quantized(name, "int8")
  assert_identical(params, made)
  assert sorted(p.name for p in registry.cache_path(name).iterdir()) == [".quantized-int8.lock", "step_00000000",
                                                                         "tokenizer.json"]
  monkeypatch.setattr(quantized.checkpoints, "save", saved)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, params, _ = quantized.load_quantized(name, "int8")
  assert_identical(params, made)
  assert checkpoints.latest(quantized.cache_folder(name, "int8")) is not None


def test_what_a_killed_write_left_is_never_read_and_is_cleared_by_the_next_write(name, monkeypatch):
  quantized.load_quantized(name, "int8")
  folder = quantized.cache_folder(name, "int8")
  leftover = folder.with_name(".quantized-int8.tmp-999999")
  folder.rename(leftover)   # a whole checkpoint, but never renamed into place: not a cache
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # no cache: made and written as the first time, not "rebuilt"
    _, params, _ = quantized.load_quantized(name, "int8")
  assert not leftover.exists() and checkpoints.latest(folder) is not None
  assert_identical(params, fresh(name, "int8"))


def test_another_process_writing_the_cache_is_left_to_it(name):
  import subprocess
  import sys
  registry.model(name)   # (the float32 cache, in which the lock is taken)
  lock = registry.cache_path(name) / ".quantized-int8.lock"
  holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, sys; f = open({str(lock)!r}, 'a+'); "
                             "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.warns(UserWarning, match="could not be cached .*in use by another run"):
      _, params, _ = quantized.load_quantized(name, "int8")
  finally:
    holder.communicate("")
  assert checkpoints.latest(quantized.cache_folder(name, "int8")) is None
  assert_identical(params, fresh(name, "int8"))


def test_an_unknown_kind_is_refused_naming_the_kinds(name):
  with pytest.raises(PretrainedError, match="load_quantized: kind must be one of int8, q4, q4_1, gguf, got 'int4'"):
    quantized.load_quantized(name, "int4")
