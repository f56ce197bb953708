"""combinax vs PyTorch, Flax and Trax on the same training work, measured side by side in one run.

    pip install -e ".[bench]"                       # PyTorch 2.13 (CPU) and Flax next to combinax
    bash benchmarks/setup_trax.sh .venv-trax        # Trax 1.4.1 needs a virtual environment of its own
    python benchmarks/compare.py                    # both works, every peer found; prints the table
    python benchmarks/compare.py --all --write benchmarks/RESULTS.md   # + compile, decoding, data, Trainer

Each framework runs in a worker process of its own (`peers/*_worker.py`, the work itself in `peers/work.py`). All
workers are started and warmed up first (one at a time); then the driver runs `--steps` steps on each in turn,
A B C A B C ..., for `--rounds` rounds (the order rotating every round), so a slow spell of the machine hits every
framework alike. The table gives tokens/s (from the median step), the step time's median and spread (10th-90th
percentile), the first step (which compiles, for the frameworks that compile), peak RSS of the worker, the model
FLOPs utilisation against the best f32 matmul rate any framework reached on this machine in this run, and the
ratio of combinax's tokens/s to each peer's.

`--against DIR` adds another combinax checkout (e.g. `git worktree add /tmp/before HEAD~3`) as one more framework,
`combinax@before`: its own worker and its own code, interleaved with the rest, so a change is measured against the
code it replaces in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
import work  # noqa: E402

FRAMEWORKS = ("combinax", "torch", "flax", "trax")


class Worker:
  """One framework's worker process, spoken to over its stdin/stdout (see peers/protocol.py)."""

  def __init__(self, name: str, python: str, work_name: str, warmup: int, threads: int, huge_pages: bool,
               checkout: Path = HERE.parent):
    self.name = name
    script = checkout / "benchmarks" / "peers" / f"{name.split('@')[0]}_worker.py"
    command = [python, str(script), "--work", work_name, "--warmup", str(warmup)]
    if threads:
      command += ["--threads", str(threads)]
    env = worker_environment(huge_pages)
    if checkout != HERE.parent:   # another combinax: its code first on the path
      env["PYTHONPATH"] = ":".join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.ready = self._read()
    self.times: list[float] = []
    self.loss = float("nan")

  def _read(self) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.name} worker exited (code {self.process.wait()}); its stderr is above")
    message = json.loads(line)
    if "error" in message:
      raise RuntimeError(f"{self.name} worker: {message['error']}")
    return message

  def run(self, steps: int):
    self.process.stdin.write(f"run {steps}\n")
    self.process.stdin.flush()
    answer = self._read()
    self.times += answer["times"]
    self.loss = answer["loss"]

  def quit(self) -> float:
    self.process.stdin.write("quit\n")
    self.process.stdin.flush()
    rss = self._read()["peak_rss_mb"]
    self.process.wait()
    return rss


def find_python(name: str, args) -> str | None:
  """The interpreter that runs a framework's worker, or None when the framework is not installed."""
  if name == "trax":
    python = args.trax_python
    return python if python and Path(python).exists() else None
  module = {"combinax": "combinax", "torch": "torch", "flax": "flax.nnx"}[name]
  found = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0
  return sys.executable if found else None


def percentile(values: list[float], q: float) -> float:
  ordered = sorted(values)
  position = (len(ordered) - 1) * q
  low = int(position)
  high = min(low + 1, len(ordered) - 1)
  return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure(work_name: str, pythons: dict[str, str], args) -> list[dict]:
  """Runs every framework's worker on one work, interleaved; returns one row of results per framework."""
  workers = []
  try:
    for name, python in pythons.items():
      print(f"  starting {name} ...", file=sys.stderr, flush=True)
      checkout = Path(args.against).resolve() if "@" in name else HERE.parent
      workers.append(Worker(name, python, work_name, args.warmup, args.threads, args.huge_pages, checkout))
    for r in range(args.rounds):
      order = workers[r % len(workers):] + workers[:r % len(workers)]
      for worker in order:
        time.sleep(0.5)  # let the last framework's spinning threads go to sleep
        worker.run(args.steps)
      print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
          f"{w.name} {statistics.median(w.times[-args.steps:]) * 1e3:.0f} ms" for w in workers),
          file=sys.stderr, flush=True)
  finally:
    rss = {}
    for worker in workers:
      try:
        rss[worker.name] = worker.quit()
      except (OSError, RuntimeError, ValueError):
        worker.process.kill()
  config = work.WORKS[work_name]
  tokens = config["batch"] * config["seq"]
  peak = max(w.ready["matmul_gflops"] or 0.0 for w in workers)
  rows = []
  for worker in workers:
    median = statistics.median(worker.times)
    rows.append({
        "framework": worker.ready["framework"] + (f" [{worker.name}]" if "@" in worker.name else ""),
        "name": worker.name, "tokens_s": tokens / median,
        "median_ms": median * 1e3, "p10_ms": percentile(worker.times, 0.1) * 1e3,
        "p90_ms": percentile(worker.times, 0.9) * 1e3, "first_step_s": worker.ready["compile_s"],
        "rss_mb": rss.get(worker.name, float("nan")), "params": worker.ready["params"],
        "matmul_gflops": worker.ready["matmul_gflops"], "loss": worker.loss, "steps": len(worker.times),
        "mfu": work.train_flops_per_token(work_name) * tokens / median / (peak * 1e9) if peak else float("nan"),
    })
  ours = next((row["tokens_s"] for row in rows if row["name"] == "combinax"), None)
  for row in rows:
    row["ratio"] = ours / row["tokens_s"] if ours else float("nan")
  return rows


def table(work_name: str, rows: list[dict]) -> str:
  config = work.WORKS[work_name]
  peak = max(row["matmul_gflops"] or 0.0 for row in rows)
  described = ", ".join(f"{k} {v}" for k, v in config.items())
  lines = [f"**{work_name}** ({described}); {rows[0]['steps']} timed steps each; f32 matmul peak "
           f"{peak:.0f} GFLOP/s (best of the frameworks, {2048}^3)", "",
           "| framework | tokens/s | step ms (median) | p10-p90 ms | first step s | peak RSS MB | MFU | "
           "matmul GFLOP/s | params | combinax / it |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    lines.append(f"| {row['framework']} | {row['tokens_s']:,.0f} | {row['median_ms']:.0f} | "
                 f"{row['p10_ms']:.0f}-{row['p90_ms']:.0f} | {row['first_step_s']:.1f} | {row['rss_mb']:,.0f} | "
                 f"{row['mfu']:.2f} | {row['matmul_gflops'] or float('nan'):.0f} | {row['params']:,} | "
                 f"{row['ratio']:.2f}x |")
  return "\n".join(lines)


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}")


def worker_environment(huge_pages: bool) -> dict:
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if huge_pages:  # the same allocator setting for every framework (combinax-train sets it for itself)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
  return env


def other_benchmarks(huge_pages: bool) -> list[tuple[str, str]]:
  """(title, printed output) of the other benchmark scripts, each run in a fresh process."""
  runs = [("Compile time of the training step, 4/12/24 layers, scanned vs unrolled", ["compile_time.py"]),
          ("Trainer overhead: the `combinax-train` loop vs its bare step", ["trainer_overhead.py"]),
          ("Decoding: KV cache vs recomputing the prefix", ["decoding_speed.py"]),
          ("Data pipeline vs the train step", ["data_pipeline.py"])]
  results = []
  for title, script in runs:
    print(f"running {script[0]} ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, str(HERE / script[0]), *script[1:]], capture_output=True, text=True,
                          env=worker_environment(huge_pages))
    results.append((title, done.stdout.strip() if done.returncode == 0 else f"failed:\n{done.stderr[-2000:]}"))
  return results


BEGIN, END = "<!-- compare.py: begin -->", "<!-- compare.py: end -->"


def write_section(path: Path, text: str):
  """Puts `text` between the BEGIN/END markers of `path` (the rest of the file, written by hand, stays)."""
  old = path.read_text() if path.exists() else f"# Benchmark results\n\n{BEGIN}\n{END}\n"
  if BEGIN not in old or END not in old:
    old = old.rstrip() + f"\n\n{BEGIN}\n{END}\n"
  head, rest = old.split(BEGIN, 1)
  tail = rest.split(END, 1)[1]
  path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--works", nargs="+", default=list(work.WORKS), choices=list(work.WORKS))
  parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--steps", type=int, default=5, help="steps per framework per round")
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--threads", type=int, default=0, help="intra-op threads for every framework (0: default)")
  parser.add_argument("--huge-pages", action=argparse.BooleanOptionalAction, default=True,
                      help="run every worker with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, as combinax-train runs")
  parser.add_argument("--trax-python", default=str(HERE.parent / ".venv-trax" / "bin" / "python"),
                      help="the interpreter of Trax's virtual environment (benchmarks/setup_trax.sh)")
  parser.add_argument("--all", action="store_true", help="also run the compile, Trainer, decoding and data benchmarks")
  parser.add_argument("--write", default=None, help="write the results (markdown) to this file, e.g. RESULTS.md")
  parser.add_argument("--against", default=None, help="another combinax checkout to measure beside this one")
  args = parser.parse_args()

  pythons = {}
  for name in args.frameworks:
    pythons[name] = find_python(name, args)
    if pythons[name] is None:
      print(f"skipping {name}: not installed (see the top of this file)", file=sys.stderr)
      del pythons[name]
  if args.against:
    pythons[f"combinax@{Path(args.against).resolve().name}"] = sys.executable
  sections = [f"Measured {datetime.date.today()} on {machine()}; `python benchmarks/compare.py "
              f"--rounds {args.rounds} --steps {args.steps}{'' if args.huge_pages else ' --no-huge-pages'}"
              f"{' --against ' + args.against if args.against else ''}` "
              f"(every framework {'with' if args.huge_pages else 'without'} `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`)."]
  for work_name in args.works:
    print(f"{work_name}:", file=sys.stderr, flush=True)
    rows = measure(work_name, pythons, args)
    sections.append(table(work_name, rows))
    print("\n" + sections[-1] + "\n", flush=True)
  if args.all:
    for title, output in other_benchmarks(args.huge_pages):
      sections.append(f"**{title}**\n\n```\n{output}\n```")
      print(sections[-1] + "\n", flush=True)
  if args.write:
    write_section(Path(args.write), "\n\n".join(sections))
    print(f"wrote {args.write}", file=sys.stderr)


if __name__ == "__main__":
  main()
