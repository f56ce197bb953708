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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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
  parser.add_argument("--peers-python", default=sys.executable,
                      help="the Python whose environment has torch, transformers and llama-cpp-python")
  parser.add_argument("--only", nargs="*", help="engine names to run (default: all)")
  parser.add_argument("--draft", help="a combinax-train run of a small LM with SmolLM2's tokenizer (e.g. "
                      "experiments/distill_smollm2.py's distilled student): adds speculative decoding with it")
  parser.add_argument("--draft-k", type=int, default=4, help="tokens the draft proposes at a time")
  args = parser.parse_args()
  from combinax import pretrained
  from combinax.pretrained import registry
  gguf = registry.source_files(NAME)
  if gguf is None:
    raise SystemExit(f"{NAME} is not installed: {registry.download_command(NAME)}")
  prompt = [int(t) for t in pretrained.tokenizer(NAME).encode(PROMPT)]
  common = ["--gguf", str(gguf), "--prompt", ",".join(map(str, prompt)), "--new", str(args.new), "--threads",
            str(args.threads)]
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
        f"{args.rounds} interleaved rounds")
  print("| engine | tokens/s best | median | first token ms | load s | weights MB | peak RSS MB | "
        "tokens equal to llama.cpp's |")
  print("|---|---|---|---|---|---|---|---|")
  for w in workers:
    rates = [args.new / r["total_s"] for r in w.rounds]
    first = min(r["first_s"] for r in w.rounds) * 1e3
    tokens = w.rounds[0]["tokens"]
    same = "-" if reference is None else f"{_equal_prefix(tokens, reference)}/{args.new}"
    print(f"| {w.ready['engine']} | {max(rates):.1f} | {statistics.median(rates):.1f} | {first:.0f} | "
          f"{w.ready['load_s']:.1f} | {w.ready['weights_mb']:.0f} | {w.peak_rss_mb:.0f} | {same} |")


if __name__ == "__main__":
  main()
