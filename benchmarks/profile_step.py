"""Where the time of combinax's training step goes, op by op: a `jax.profiler` trace of the step of
`compare.py`'s work (`peers/work.py`), joined to XLA's optimized HLO, summed by kind of op.

    python benchmarks/profile_step.py --work transformer --steps 5 [--top 40]

Prints the step's median time, then each HLO instruction the trace saw (fusions, dots, loops' bodies), with its
share of the traced time, what it computes (the `op_name` of its source) and, for dots, its GFLOP/s. Run it with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` as `combinax-train` runs.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--work", choices=("transformer", "lstm"), default="transformer")
parser.add_argument("--steps", type=int, default=5, help="traced steps (after 3 untraced)")
parser.add_argument("--top", type=int, default=40, help="instructions to list")
args = parser.parse_args()

DUMP = tempfile.mkdtemp(prefix="combinax-profile-")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_enable_xprof_traceme=true "
                           f"--xla_dump_to={DUMP}/hlo --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$").strip()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

import jax  # noqa: E402
import optax  # noqa: E402

from combinax import layers as cl  # noqa: E402
from combinax.train.step import TrainStep  # noqa: E402

import combinax_worker  # noqa: E402  (its model_for; importing it parses no arguments of ours)
import work  # noqa: E402


def hlo_instructions(path: str) -> dict:
  """name -> (opcode line, op_name metadata, dot FLOPs or 0) for every instruction of an optimized HLO module."""
  text = open(path).read()
  shapes = {}
  found = {}
  for line in text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]", line)
    if not m:
      continue
    name, _, dims = m.groups()
    shapes[name] = [int(d) for d in dims.split(",") if d]
    op = re.search(r'op_name="([^"]*)"', line)
    flops = 0
    if re.search(r"\bdot\(", line) or "custom-call" in line and "matmul" in line:
      operands = re.search(r"dot\(([^)]*)\)", line)
      contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
      if operands and contracting:
        lhs = operands.group(1).split(",")[0].strip().lstrip("%").split(" ")[-1].lstrip("%")
        lhs_shape = shapes.get(lhs)
        if lhs_shape:
          k = 1
          for d in contracting.group(1).split(","):
            k *= lhs_shape[int(d)]
          out = 1
          for d in shapes[name]:
            out *= d
          flops = 2 * out * k
    kind = re.search(r"= [\w\[\],{}:\d ]*?\s(\w[\w-]*)\(", line)
    found[name] = (kind.group(1) if kind else "?", op.group(1) if op else "", flops)
  return found


def main():
  config = work.WORKS[args.work]
  model = combinax_worker.model_for(args.work, config)
  step_fn = TrainStep(model, cl.CategoryCrossEntropy(),
                      optax.adamw(config["lr"], weight_decay=config["weight_decay"]))
  batches = [(b[:, 1:], b[:, 1:]) for b in (jax.device_put(b) for b in work.batches(args.work))]
  state = step_fn.init(jax.random.key(0), batches[0])
  for i in range(3):
    state, metrics = step_fn(state, batches[i % len(batches)])
    float(metrics["loss"])
  times = []
  jax.profiler.start_trace(f"{DUMP}/trace", create_perfetto_trace=True)
  for i in range(args.steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batches[i % len(batches)])
    float(metrics["loss"])
    times.append(time.perf_counter() - start)
  jax.profiler.stop_trace()
  print(f"{args.work}: step median {statistics.median(times) * 1e3:.0f} ms over {args.steps} traced steps")

  modules = sorted(glob.glob(f"{DUMP}/hlo/*jit__step.*after_optimizations.txt") or
                   glob.glob(f"{DUMP}/hlo/*after_optimizations.txt"), key=os.path.getsize)
  instructions = hlo_instructions(modules[-1])
  trace_file = glob.glob(f"{DUMP}/trace/**/*.trace.json.gz", recursive=True)[0]
  events = json.load(gzip.open(trace_file))
  events = events["traceEvents"] if isinstance(events, dict) else events
  spent = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in instructions:
      spent[e["name"]] += e["dur"] / args.steps
      count[e["name"]] += 1 / args.steps
  total = sum(spent.values())
  print(f"traced HLO time {total / 1e3:.0f} ms a step in {sum(count.values()):.0f} instruction runs "
        f"(nested loop bodies count inside their loop too)\n")
  by_kind = collections.Counter()
  for name, us in spent.items():
    by_kind[instructions[name][0]] += us
  print("by opcode: " + ", ".join(f"{k} {v / 1e3:.0f} ms" for k, v in by_kind.most_common(8)))
  print(f"\n{'ms':>7} {'runs':>5} {'GFLOP/s':>7}  instruction  (source op)")
  for name, us in spent.most_common(args.top):
    kind, op, flops = instructions[name]
    rate = f"{flops * count[name] / us / 1e3:.0f}" if flops else ""
    print(f"{us / 1e3:7.1f} {count[name]:5.0f} {rate:>7}  {name} [{kind}]  {op[-90:]}")


if __name__ == "__main__":
  main()
