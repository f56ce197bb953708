"""The line protocol between `benchmarks/compare.py` and a framework's worker process.

A worker builds its model for one work (`--work transformer|lstm`), runs `--warmup` steps (the first compiles,
where the framework compiles), measures its framework's f32 matmul speed, and prints one JSON line
`{"ready": true, "compile_s": the first step's seconds, "params": n, "framework": "name version",
"matmul_gflops": g}`; then it answers commands read from stdin, one a line:
  `run N`  -> runs N training steps, each timed to its end (the loss is on the host), prints
             `{"times": [seconds per step], "loss": last loss}`;
  `quit`   -> prints `{"peak_rss_mb": the process's peak resident memory}` and exits.
Only this file and numpy are shared, so a worker runs in any virtual environment (Trax needs its own).
"""

import argparse
import json
import os
import resource
import sys
import time

MATMUL_SIZE = 2048


def parse_args(description: str):
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--work", choices=("transformer", "lstm"), required=True)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the framework's default)")
  return parser.parse_args()


def limit_xla_threads(threads: int):
  """For the JAX-based workers, before JAX is imported: XLA has no thread-count option, its CPU client sizes its
  pools by the CPUs the process may run on, so the process is limited to the first `threads` of them."""
  if threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    if threads == 1:
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()


def jax_matmul():
  """`matmul()` for `serve`, with jax.numpy under jit (imported here: the Trax environment has no need of it)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(1), (MATMUL_SIZE, MATMUL_SIZE))
  dot = jax.jit(jnp.dot)
  return lambda: dot(a, a).block_until_ready()


def _say(message: dict):
  sys.stdout.write(json.dumps(message) + "\n")
  sys.stdout.flush()


def matmul_gflops(matmul, n: int = MATMUL_SIZE, repeats: int = 5) -> float:
  """The best GFLOP/s of `matmul()`, which multiplies two (n, n) float32 matrices and waits for the result."""
  matmul()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def serve(step, warmup: int, n_params: int, framework: str = "?", matmul=None):
  """Runs the protocol. `step(i) -> float` does training step i (batch i mod N_BATCHES) and returns its loss as a
  Python float, which forces the step to finish; `framework` is "name version"; `matmul()` multiplies two
  (MATMUL_SIZE, MATMUL_SIZE) float32 matrices with the framework and waits for the result."""
  start = time.perf_counter()
  step(0)
  first = time.perf_counter() - start
  for i in range(1, warmup):
    step(i)
  gflops = matmul_gflops(matmul) if matmul is not None else None
  _say({"ready": True, "compile_s": first, "params": int(n_params), "framework": framework,
        "matmul_gflops": gflops})
  i = warmup
  for line in sys.stdin:
    command = line.split()
    if not command:
      continue
    if command[0] == "quit":
      break
    if command[0] != "run":
      _say({"error": f"unknown command {line!r}"})
      continue
    times, loss = [], float("nan")
    for _ in range(int(command[1])):
      t0 = time.perf_counter()
      loss = step(i)
      times.append(time.perf_counter() - t0)
      i += 1
    _say({"times": times, "loss": loss})
  _say({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
