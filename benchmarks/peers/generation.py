"""The line protocol between `benchmarks/inference.py` and an inference engine's worker process.

A worker is started with the GGUF file, the prompt's token ids (the same ids for every engine, so no tokenizer
differs), the number of new tokens and the threads. It loads the model (timed: `load_s`, from the process's start, so
imports count), generates once to warm up (the compiling engines compile here: `warmup_s`), and prints one JSON line
`{"ready": true, "engine": "name version", "load_s": s, "warmup_s": s, "weights_mb": m}`; then it answers commands
read from stdin, one a line:
  `run`   -> greedy-decodes `--new` tokens after the prompt, then 1 token (time to first token: the prompt's prefill
             and one step), each timed to its end, and prints `{"total_s": s, "first_s": s, "tokens": [ids]}`;
  `quit`  -> prints `{"peak_rss_mb": the process's peak resident memory}` and exits.
Every engine is asked for exactly `--new` tokens and ignores the end-of-sequence token, so all do the same work.
Only this file and the standard library are shared: each worker runs in the environment that has its engine.
"""

import argparse
import json
import resource
import sys
import time

STARTED = time.perf_counter()


def parse_args(description: str, **extra):
  """The common flags; `extra` maps more flag names to (type, default, help)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--gguf", required=True, help="the GGUF file every engine reads")
  parser.add_argument("--prompt", required=True, help="the prompt's token ids, comma-separated")
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--context", type=int, default=512,
                      help="positions the model is built for (combinax's max_len, llama.cpp's n_ctx)")
  for name, (kind, default, text) in extra.items():
    parser.add_argument(f"--{name}", type=kind, default=default, help=text)
  args = parser.parse_args()
  args.prompt = [int(t) for t in args.prompt.split(",")]
  return args


def _say(message: dict):
  sys.stdout.write(json.dumps(message) + "\n")
  sys.stdout.flush()


def _timed(generate, n: int):
  start = time.perf_counter()
  tokens = [int(t) for t in generate(n)]
  seconds = time.perf_counter() - start
  if len(tokens) != n:
    raise RuntimeError(f"the engine made {len(tokens)} tokens where {n} were asked for")
  return seconds, tokens


def serve(generate, new: int, *, engine: str, weights_mb: float):
  """Runs the protocol. `generate(n)` greedy-decodes n tokens after the prompt and returns their ids (as a
  sequence of ints, every one of them finished)."""
  load = time.perf_counter() - STARTED
  start = time.perf_counter()
  generate(new)
  generate(1)
  _say({"ready": True, "engine": engine, "load_s": load, "warmup_s": time.perf_counter() - start,
        "weights_mb": weights_mb})
  for line in sys.stdin:
    command = line.strip()
    if command == "quit":
      break
    if command != "run":
      _say({"error": f"unknown command {line!r}"})
      continue
    total, tokens = _timed(generate, new)
    first, _ = _timed(generate, 1)
    _say({"total_s": total, "first_s": first, "tokens": tokens})
  _say({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
