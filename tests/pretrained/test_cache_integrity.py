"""A pretrained cache that lacks a weight, or whose arrays are damaged, is never loaded as if it were whole: `load`
rebuilds it from the installed package (and says so), or refuses it with the way to fix it. Only the params that the
pretrained model itself does not have (a new head) are initialised."""

import shutil
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax.paths import unflatten
from combinax.pretrained import registry
from combinax.pretrained.families import PretrainedError
from combinax.store import checkpoints

from conftest import files_of

pytest.importorskip("h5py")   # textgenrnn's weights are an .hdf5 file

NAME = "textgenrnn"


@pytest.fixture(scope="module")
def imported_cache(tmp_path_factory):
  """A whole textgenrnn cache, imported once from the package; each test works on a copy of it."""
  files_of(NAME)  # skips: pip install --no-deps textgenrnn==2.0.0
  root = tmp_path_factory.mktemp("whole_cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("COMBINAX_CACHE", str(root))
    registry.import_to_cache(NAME)
  return root


@pytest.fixture()
def cache(imported_cache, tmp_path, monkeypatch):
  """COMBINAX_CACHE pointed at a fresh copy of the whole cache; returns the model's cache folder."""
  shutil.copytree(imported_cache, tmp_path / "cache")
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path / "cache"))
  return registry.cache_path(NAME)


def whole_params(imported_cache) -> dict:
  return checkpoints.read_arrays(checkpoints.latest(imported_cache / "pretrained" / NAME), prefix="params")


def _get(tree, path: str):
  for part in path.split("/"):
    tree = tree[part]
  return tree


def drop_weights(folder, *paths):
  """Rewrites the cache in `folder` without `paths` (as a cache written by an older or broken import would be),
  keeping its manifest metadata and tokenizer."""
  found = checkpoints.latest(folder)
  arrays = checkpoints.read_arrays(found)
  metadata = checkpoints.read_manifest(found)["metadata"]
  partial = folder.with_name(folder.name + ".partial")
  checkpoints.save(partial, 0, unflatten({p: a for p, a in arrays.items() if p not in paths}), metadata)
  shutil.copy(folder / "tokenizer.json", partial / "tokenizer.json")
  shutil.rmtree(folder)
  partial.rename(folder)


def flip_a_byte(folder):
  """Flips one byte in the middle of the cache's biggest array file (as a bad disk or an interrupted copy would)."""
  data = max((checkpoints.latest(folder) / "state").rglob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)
  damaged = bytearray(data.read_bytes())
  damaged[len(damaged) // 2] ^= 0x10
  data.write_bytes(bytes(damaged))


def test_a_cache_missing_a_weight_is_rebuilt_from_the_package(cache, imported_cache):
  drop_weights(cache, "params/output/bias")
  with pytest.warns(UserWarning, match=r"params/output/bias.*rebuilt"):
    _, params, _ = cx.pretrained.load(NAME)
  expected = whole_params(imported_cache)["output/bias"]
  assert np.abs(expected).max() > 0   # the real bias, which zeros (the init) would not equal
  np.testing.assert_array_equal(params["output"]["bias"], expected)
  assert "params/output/bias" in [e["path"] for e in checkpoints.read_manifest(checkpoints.latest(cache))["leaves"]]


def test_a_cache_missing_a_weight_without_the_package_is_refused(cache, monkeypatch):
  drop_weights(cache, "params/output/bias", "params/output/kernel")
  monkeypatch.setattr(registry, "source_files", lambda name: None)
  with pytest.raises(PretrainedError, match=r"(?s)2 weight.*params/output/bias.*download textgenrnn") as refused:
    cx.pretrained.load(NAME)
  assert str(cache) in str(refused.value)
  with pytest.raises(PretrainedError, match="params/output/bias"):  # the fine-tuning init_checkpoint too
    cx.pretrained.checkpoint(NAME)


def test_a_damaged_cache_array_is_rebuilt_from_the_package(cache, imported_cache):
  flip_a_byte(cache)
  with pytest.warns(UserWarning, match=r"checksum mismatch.*rebuilt"):
    _, params, _ = cx.pretrained.load(NAME)
  for path, value in whole_params(imported_cache).items():
    np.testing.assert_array_equal(_get(params, path), value)


def test_a_damaged_cache_array_without_the_package_is_refused(cache, monkeypatch):
  flip_a_byte(cache)
  monkeypatch.setattr(registry, "source_files", lambda name: None)
  with pytest.raises(PretrainedError, match=r"(?s)checksum mismatch.*download textgenrnn"):
    cx.pretrained.load(NAME)


def test_a_whole_cache_loads_without_a_warning_or_a_rebuild(cache, monkeypatch):
  monkeypatch.setattr(registry, "import_to_cache", lambda name: pytest.fail("a whole cache was rebuilt"))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    model, params, _ = cx.pretrained.load(NAME)
  logits, _ = model.apply(params, {}, jnp.ones((1, 40), jnp.int32))
  assert logits.shape == (1, 465)


def test_a_new_head_is_the_only_thing_initialised(pretrained_cache):
  files_of("all-minilm-l6-v2")
  _, body, _ = cx.pretrained.load("all-minilm-l6-v2")
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # a head beyond the pretrained weights is not a damaged cache
    _, params, _ = cx.pretrained.load("all-minilm-l6-v2", n_classes=2)
  assert sorted(set(cx.paths(params)) - set(cx.paths(body))) == ["classifier/bias", "classifier/kernel"]
  for path, value in checkpoints.read_arrays(cx.pretrained.checkpoint("all-minilm-l6-v2"), prefix="params").items():
    np.testing.assert_array_equal(_get(params, path), value)


def test_the_cache_folder_is_as_readable_as_the_users_umask_allows_not_private(imported_cache):
  # (mkdtemp makes 0700 folders; the import renames one into place)
  folder = imported_cache / "pretrained" / NAME
  assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
  import os
  mask = os.umask(0)
  os.umask(mask)
  return mask
