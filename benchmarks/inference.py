"""Greedy decoding of SmolLM2-135M at batch 1: combinax (float32, int8, the GGUF's packed 4-bit blocks) against
PyTorch `transformers` (float32) and llama.cpp (`llama-cpp-python`, the same GGUF file), side by side in one run.

    pip install -e ".[bench]"                           # PyTorch, transformers, llama-cpp-python (builds llama.cpp)
    python benchmarks/inference.py [--new 128] [--rounds 5] [--peers-python PATH] [--draft RUN_DIR]

Every engine runs in a worker process of its own (`peers/generate_*.py`, the protocol in `peers/generation.py`),
reads the same GGUF file (combinax's float32 and int8 from its cached import of it), and gets the same prompt as
token ids: a 22-token chat prompt, then `--new` tokens, greedy, the end-of-sequence token ignored so that all make
the same number, on `--threads` threads. All workers load and warm up first (the compiling engines compile then),
one at a time; then each round asks every worker in turn (the order rotating) for one generation of `--new` tokens
and one of 1 token (time to first token: the prompt's prefill and one step), so that a slow spell of the machine
hits every engine alike. Reported: tokens/s of the best and the median round, time to first token (best), load
time (from process start, imports included), the weights' bytes, the worker's peak RSS, and for how many tokens
the text equals llama.cpp's (greedy decoding, so the engines agree until two tokens' logits nearly tie).

Issue 18's targets: combinax int8 >= 1.5x its float32 and >= PyTorch; combinax's best >= 0.7x llama.cpp.

    python benchmarks/inference.py --startup [--repeats 5] [--peers-python PATH]

`--startup` measures instead what a user waits for from the shell (issue 32): the wall time of a whole
`combinax-decode --pretrained=smollm2-135m-instruct --quantize=int8 --prompt="What is the capital of France?"` (and
--quantize=gguf) process, imports, loading, compiling and the answer, with every cache warm: each command is run once
first (it fills the quantized-weights cache and the compilation cache), then --repeats times, the commands taking
turns (the order rotating); reported: the median and best wall time of the repeated runs, and the answer. llama.cpp's
equivalent (a `llama-cpp-python` process loading the same GGUF file and answering the same chat prompt, greedy, up
to the same 256 tokens) runs beside them where --peers-python has it. Issue 32's target: <= 3 s for combinax's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
NAME = "smollm2-135m-instruct"


def engines(peers_python: str, draft: str | None = None, draft_k: int = 4) -> dict[str, list[str]]:
  """Engine name -> its worker's command (without the common flags)."""
  ours = [sys.executable, str(HERE / "peers" / "generate_combinax.py")]
  speculative = {} if draft is None else {
      f"combinax {weights} + draft": ours + ["--weights", weights, "--draft", draft, "--draft_k", str(draft_k)]
      for weights in ("float32", "int8")}
  return {**speculative,
      "combinax float32": ours + ["--weights", "float32"],
      "combinax int8": ours + ["--weights", "int8"],
      "combinax gguf (q4_1)": ours + ["--weights", "gguf"],
      # The same two without combinax.quant.kernels: XLA's dot on each weight dequantized just before it.
      "combinax int8, XLA's dot": ["env", "COMBINAX_KERNELS=0"] + ours + ["--weights", "int8"],
      "combinax gguf (q4_1), XLA's dot": ["env", "COMBINAX_KERNELS=0"] + ours + ["--weights", "gguf"],
      "transformers float32": [peers_python, str(HERE / "peers" / "generate_torch.py")],
      "llama.cpp gguf (q4_1)": [peers_python, str(HERE / "peers" / "generate_llamacpp.py")],
  }


class Worker:
  def __init__(self, name: str, command: list[str]):
    self.name = name
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.ready = self._read()
    self.rounds: list[dict] = []
    self.peak_rss_mb = float("nan")

  def _read(self) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.name}: the worker ended (exit code {self.process.wait()}); see its stderr above")
    return json.loads(line)

  def run(self):
    self.process.stdin.write("run\n")
    self.process.stdin.flush()
    self.rounds.append(self._read())

  def quit(self):
    self.process.stdin.write("quit\n")
    self.process.stdin.flush()
    self.peak_rss_mb = self._read()["peak_rss_mb"]
    self.process.wait()


QUESTION = "What is the capital of France?"
# llama.cpp's side of --startup, run by --peers-python: a process that loads the GGUF file and answers the question
# in the model's own chat template (the GGUF's), greedy, at most 256 new tokens as combinax-decode --pretrained makes.
LLAMA_CPP_ANSWER = """
import sys
import llama_cpp
gguf, question, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = llama_cpp.Llama(gguf, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
answer = model.create_chat_completion([{"role": "user", "content": question}], max_tokens=256, temperature=0.0,
                                      top_k=1)
print(answer["choices"][0]["message"]["content"].strip())
"""


def startup_commands(peers_python: str, gguf: Path, threads: int) -> dict[str, list[str]]:
  """Name -> the command line whose wall time --startup measures."""
  decode = shutil.which("combinax-decode", path=str(Path(sys.executable).parent)) or shutil.which("combinax-decode")
  if decode is None:
    raise SystemExit("combinax-decode is not installed: pip install -e .")
  commands = {f"combinax-decode --quantize={kind}": [decode, f"--pretrained={NAME}", f"--quantize={kind}",
                                                     f"--prompt={QUESTION}"] for kind in ("int8", "gguf")}
  has_llama_cpp = subprocess.run([peers_python, "-c", "import llama_cpp"], capture_output=True).returncode == 0
  if has_llama_cpp:
    commands["llama.cpp (llama-cpp-python) gguf"] = [peers_python, "-c", LLAMA_CPP_ANSWER, str(gguf), QUESTION,
                                                     str(threads)]
  else:
    print(f"llama.cpp: not run ({peers_python} has no llama_cpp; give --peers-python)", file=sys.stderr)
  return commands


def _timed_run(command: list[str]) -> tuple[float, str]:
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if done.returncode != 0:
    raise SystemExit(f"{command[0]} ... failed (exit code {done.returncode}):\n{done.stderr[-2000:]}")
  return seconds, done.stdout.strip()


def startup(args, gguf: Path):
  """--startup: the wall time of whole answering processes, every cache warm (see the module's docstring)."""
  commands = startup_commands(args.peers_python, gguf, args.threads)
  answers, times = {}, {name: [] for name in commands}
  for name, command in commands.items():   # the first run of each fills its caches: not counted
    print(f"warming {name} ...", file=sys.stderr, flush=True)
    answers[name] = _timed_run(command)[1]
  names = list(commands)
  for r in range(args.repeats):
    for i in range(len(names)):
      name = names[(i + r) % len(names)]
      times[name].append(_timed_run(commands[name])[0])
  print(f"{NAME}: start-up, one answer per process from the shell, every cache warm; {args.repeats} interleaved "
        f"runs each after one warm-up")
  print("| command | wall s median | best | answer |")
  print("|---|---|---|---|")
  for name in names:
    print(f"| {name} | {statistics.median(times[name]):.2f} | {min(times[name]):.2f} | "
          f"{' '.join(answers[name].split())[:60]} |")


def _equal_prefix(a, b) -> int:
  n = 0
  while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
  return n


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--context", type=int, default=512, help="positions every engine is built for (combinax's "
                      "max_len, llama.cpp's n_ctx); the issue's comparison wants 512 or more")
  parser.add_argument("--peers-python", default=sys.executable,
                      help="the Python whose environment has torch, transformers and llama-cpp-python")
  parser.add_argument("--only", nargs="*", help="engine names to run (default: all)")
  parser.add_argument("--draft", help="a combinax-train run of a small LM with SmolLM2's tokenizer (e.g. "
                      "experiments/distill_smollm2.py's distilled student): adds speculative decoding with it")
  parser.add_argument("--draft-k", type=int, default=4, help="tokens the draft proposes at a time")
  parser.add_argument("--startup", action="store_true", help="measure instead the wall time of whole "
                      "combinax-decode processes answering one question from the shell, every cache warm (and "
                      "llama.cpp's, where --peers-python has it)")
  parser.add_argument("--repeats", type=int, default=5, help="with --startup: timed runs of each command")
  args = parser.parse_args()
  from combinax import pretrained
  from combinax.pretrained import registry
  gguf = registry.source_files(NAME)
  if gguf is None:
    raise SystemExit(f"{NAME} is not installed: {registry.download_command(NAME)}")
  if args.startup:
    return startup(args, gguf)
  prompt = [int(t) for t in pretrained.tokenizer(NAME).encode(PROMPT)]
  common = ["--gguf", str(gguf), "--prompt", ",".join(map(str, prompt)), "--new", str(args.new), "--threads",
            str(args.threads), "--context", str(args.context)]
  workers = []
  for name, command in engines(args.peers_python, args.draft, args.draft_k).items():
    if args.only and name not in args.only:
      continue
    print(f"starting {name} ...", file=sys.stderr, flush=True)
    workers.append(Worker(name, command + common))
  for r in range(args.rounds):
    for i in range(len(workers)):
      workers[(i + r) % len(workers)].run()
  for worker in workers:
    worker.quit()
  reference = next((w.rounds[0]["tokens"] for w in workers if w.name.startswith("llama.cpp")), None)
  print(f"{NAME}, batch 1, prompt of {len(prompt)} tokens + {args.new} new (greedy), {args.threads} threads, "
        f"context {args.context}, {args.rounds} interleaved rounds")
  print("| engine | tokens/s best | median | first token ms | load s | weights MB | peak RSS MB | "
        "tokens equal to llama.cpp's |")
  print("|---|---|---|---|---|---|---|---|")
  for w in workers:
    rates = [args.new / r["total_s"] for r in w.rounds]
    first = min(r["first_s"] for r in w.rounds) * 1e3
    tokens = w.rounds[0]["tokens"]
    same = "-" if reference is None else f"{_equal_prefix(tokens, reference)}/{args.new}"
    print(f"| {w.name}: {w.ready['engine']} | {max(rates):.1f} | {statistics.median(rates):.1f} | {first:.0f} | "
          f"{w.ready['load_s']:.1f} | {w.ready['weights_mb']:.0f} | {w.peak_rss_mb:.0f} | {same} |")


if __name__ == "__main__":
  main()
