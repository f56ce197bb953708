"""Synthetic corpora: the same file however often the writing is stopped and rerun, refused when the settings
differ, and made by `combinax-decode --samples` from a trained LM, then read back by `lm_pipeline(path=...)`."""

import json
import os
import subprocess
import sys

import pytest

from combinax.data.recipes import lm_pipeline
from combinax.data.tokenizers import CharTokenizer
from combinax.distill.synthetic import SyntheticError, provenance_path, write_samples
from combinax.store.rundir import RunDirectoryError
from tiny_run import make_workspace, run, tiny_config


def fake_generate(prompts, batch):
  """A deterministic 'model': its text depends on the batch's index and the prompt, as a seeded sampler's does."""
  return [f" sample {batch}-{i} after {p!r}" for i, p in enumerate(prompts)]


def test_a_stopped_and_rerun_writing_gives_the_same_file(tmp_path):
  whole = tmp_path / "whole.jsonl"
  write_samples(whole, fake_generate, ["a", "b", "c"], samples=10, batch_size=4, provenance={"model": "m"})
  lines = whole.read_text().splitlines()
  assert len(lines) == 10 and json.loads(lines[5]) == {"text": "c sample 1-1 after 'c'", "sample":
                                                        " sample 1-1 after 'c'", "prompt": "c", "index": 5}
  cut = tmp_path / "cut.jsonl"
  write_samples(cut, fake_generate, ["a", "b", "c"], samples=10, batch_size=4, provenance={"model": "m"})
  cut.write_text(cut.read_text()[:-30])   # killed in the middle of the last batch's last line
  made = write_samples(cut, fake_generate, ["a", "b", "c"], samples=10, batch_size=4, provenance={"model": "m"})
  assert made == 2 and cut.read_text() == whole.read_text()
  assert write_samples(cut, fake_generate, ["a", "b", "c"], samples=10, batch_size=4, provenance={"model": "m"}) == 0
  assert json.loads(provenance_path(cut).read_text())["prompts"] == ["a", "b", "c"]
  with pytest.raises(SyntheticError, match=r"was made with other settings \(model differ"):
    write_samples(cut, fake_generate, ["a", "b", "c"], samples=10, batch_size=4, provenance={"model": "other"})


SLOW_WRITER = """
import sys, time
from combinax.distill.synthetic import write_samples
def generate(prompts, batch):
  print("writing", flush=True)
  time.sleep(0.5)
  return [f" sample {batch}-{i} after {p!r}" for i, p in enumerate(prompts)]
write_samples(sys.argv[1], generate, ["a", "b", "c"], samples=10, batch_size=4, provenance={"model": "m"})
"""


def test_a_second_writer_of_the_same_corpus_is_refused_while_the_first_writes(tmp_path):
  corpus = tmp_path / "corpus.jsonl"
  first = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(corpus)], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    assert first.stdout.readline() == "writing\n"
    with pytest.raises(RunDirectoryError, match=rf"is in use by another run \(pid {first.pid} "):
      write_samples(corpus, fake_generate, ["a", "b", "c"], samples=10, batch_size=4, provenance={"model": "m"})
    assert first.wait(timeout=60) == 0
  finally:
    first.kill()
    first.stdout.close()
  whole = tmp_path / "whole.jsonl"
  write_samples(whole, fake_generate, ["a", "b", "c"], samples=10, batch_size=4, provenance={"model": "m"})
  assert corpus.read_text() == whole.read_text()   # each sample once, in order


def test_a_rerun_over_a_file_holding_samples_twice_keeps_the_verified_prefix_and_makes_the_rest(tmp_path):
  whole = tmp_path / "whole.jsonl"
  write_samples(whole, fake_generate, ["a", "b"], samples=32, batch_size=16, provenance={"model": "m"})
  lines = whole.read_text().splitlines(keepends=True)
  # What two unlocked writers appending at once left: each batch twice, interleaved.
  doubled = tmp_path / "doubled.jsonl"
  doubled.write_text("".join(lines[:16] * 2 + lines[16:] * 2))
  provenance_path(doubled).write_text(provenance_path(whole).read_text())
  assert write_samples(doubled, fake_generate, ["a", "b"], samples=32, batch_size=16, provenance={"model": "m"}) == 16
  assert doubled.read_text() == whole.read_text()


def test_combinax_decode_writes_a_corpus_that_lm_pipeline_reads(tmp_path):
  workspace = make_workspace(tmp_path, tiny_config(steps=5))
  assert run("train", "--config_file=tiny.gin", "--output_dir=lm", workspace=workspace).returncode == 0
  done = run("decode", "--output_dir=lm", "--prompt=And", "--prompt=In the", "--samples=6", "--batch_size=4",
             "--output=synthetic.jsonl", "--max_length=8", "--seed=3", workspace=workspace)
  assert done.returncode == 0, done.stderr
  assert "6 samples written to synthetic.jsonl" in done.stderr
  lines = [json.loads(line) for line in (tmp_path / "synthetic.jsonl").read_text().splitlines()]
  assert [line["prompt"] for line in lines] == ["And", "In the"] * 3
  assert all(line["text"] == line["prompt"] + line["sample"] for line in lines)
  provenance = json.loads(provenance_path(tmp_path / "synthetic.jsonl").read_text())
  assert provenance["seed"] == 3 and provenance["temperature"] == 0.8 and provenance["model"].endswith("lm")
  characters = "".join(sorted({c for line in lines for c in line["text"]}))
  batch = next(lm_pipeline(path=str(tmp_path / "synthetic.jsonl"), tokenizer=CharTokenizer(characters), length=8,
                           batch_size=2)())
  assert batch[0].shape == (2, 8)
