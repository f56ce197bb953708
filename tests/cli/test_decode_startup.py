"""A repeated `combinax-decode` starts from what the first one kept: a bundled LM's quantized weights in the
pretrained cache (the float32 weights are never built again) and the compiled programs in JAX's persistent
compilation cache under combinax's cache folder, which a second process reads instead of compiling. Shown with a
2-layer Llama registered as a bundled model (tests/tiny_llama.py) in each process, not SmolLM2's 135 M weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gguf")

TESTS = Path(__file__).resolve().parents[1]

# combinax-decode's entry point, with the tiny LM registered first; with COMBINAX_TEST_NO_FLOAT32=1, building or
# importing its float32 weights (or quantizing them) fails the process.
DECODE = f"""
import os, sys
from pathlib import Path
import pytest
sys.path.insert(0, {str(TESTS)!r})
import tiny_llama
from combinax import quant
from combinax.pretrained import registry
patch = pytest.MonkeyPatch()
tiny_llama.register(patch, Path(sys.argv[1]))
if os.environ.get("COMBINAX_TEST_NO_FLOAT32") == "1":
  def refused(*args, **kwargs):
    raise RuntimeError("the float32 weights were built")
  for module, function in ((registry, "load"), (registry, "import_to_cache"), (quant, "for_decoding")):
    patch.setattr(module, function, refused)
from combinax.cli import decode
decode.main(sys.argv[2:])
"""
ARGS = ["--pretrained=tiny-llama", "--quantize=int8", "--prompt=ab a", "--temperature=0", "--max_length=6",
        "--template={prompt}"]


def decode(folder: Path, *args, **environ) -> subprocess.CompletedProcess:
  """combinax-decode in a fresh process, with JAX's own compilation-cache settings (the test session's) removed,
  so that the command's are used, and JAX's debug log on stderr (which says what the cache read and wrote)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
  env.update(JAX_LOGGING_LEVEL="DEBUG", **environ)
  return subprocess.run([sys.executable, "-c", DECODE, str(folder), *args], env=env, capture_output=True, text=True,
                        timeout=300)


def test_a_second_process_reads_the_quantized_weights_and_the_compiled_programs_the_first_kept(tmp_path):
  compiled = tmp_path / "cache" / "jax-compilation"
  first = decode(tmp_path, *ARGS)
  assert first.returncode == 0, first.stderr[-3000:]
  assert (tmp_path / "cache" / "pretrained" / "tiny-llama" / "quantized-int8" / "step_00000000").is_dir()
  kept = {p.name for p in compiled.iterdir()}
  # The decoding program (prefill and the sampling loop in one) and the decoding state's zeros, among others.
  for program in ("jit__sample-", "jit__zero_state-"):
    assert any(name.startswith(program) and name.endswith("-cache") for name in kept), (program, sorted(kept))
  assert "Writing jit__sample to persistent compilation cache" in first.stderr

  second = decode(tmp_path, *ARGS, COMBINAX_TEST_NO_FLOAT32="1")
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout == first.stdout and second.stdout.strip()
  for program in ("jit__sample", "jit__zero_state"):
    assert f"Persistent compilation cache hit for '{program}'" in second.stderr, program
    assert f"Writing {program} to persistent compilation cache" not in second.stderr, program

  # --nocompilation_cache: compiled afresh, nothing read or kept.
  afresh = decode(tmp_path, *ARGS, "--nocompilation_cache", COMBINAX_TEST_NO_FLOAT32="1")
  assert afresh.returncode == 0, afresh.stderr[-3000:]
  assert afresh.stdout == first.stdout
  assert "Persistent compilation cache hit" not in afresh.stderr
  assert "to persistent compilation cache" not in afresh.stderr


def test_jaxs_own_compilation_cache_setting_is_kept(tmp_path):
  own = tmp_path / "own-cache"
  result = decode(tmp_path, *ARGS, JAX_COMPILATION_CACHE_DIR=str(own), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert not (tmp_path / "cache" / "jax-compilation").exists()
  assert any(p.name.startswith("jit__sample-") for p in own.iterdir())
