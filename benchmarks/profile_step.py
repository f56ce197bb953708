"""Where the time of combinax's training step goes, op by op: a `jax.profiler` trace of the step of
`compare.py`'s work (`peers/work.py`), joined to XLA's optimized HLO, summed by kind of op.

    python benchmarks/profile_step.py --work transformer --steps 5 [--top 40]

Prints the step's median time, then each HLO instruction the trace saw (fusions, dots, loops' bodies), with its
share of the traced time, what it computes (the `op_name` of its source) and, for matmuls, their GFLOP/s. Run it
with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` as `combinax-train` runs.

Read it with two cautions: XLA:CPU runs independent ops side by side, so durations may overlap (the traced total can
exceed the step); and a plain `dot` (one YNNPACK does not take) runs on Eigen's thread pool, where the trace sees
only its dispatch, so its time is not its cost and its rate says "async".
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
from combinax.train import objective  # noqa: E402
from combinax.train.step import TrainStep  # noqa: E402

import combinax_worker  # noqa: E402  (its model_for; importing it parses no arguments of ours)
import work  # noqa: E402


def _dot_flops(line: str, name: str, shapes: dict) -> int:
  """2 * output size * contracted size of a `dot` instruction line, or 0 when the line is no dot."""
  operands = re.search(r"\bdot\(%?([\w.\-]+)", line)
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
  if not operands or not contracting or operands.group(1) not in shapes:
    return 0
  contracted = 1
  for d in contracting.group(1).split(","):
    contracted *= shapes[operands.group(1)][int(d)]
  out = 1
  for d in shapes[name]:
    out *= d
  return 2 * out * contracted


def hlo_instructions(path: str) -> dict:
  """name -> (opcode, op_name metadata, dot FLOPs or 0) for every instruction of an optimized HLO module; a fusion
  counts the FLOPs of the dots in the computation it calls (instruction names are unique in a module)."""
  shapes, lines, computation_flops, computation = {}, {}, collections.Counter(), None
  for line in open(path).read().splitlines():
    head = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
    if head:
      computation = head.group(1)
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]", line)
    if not m:
      continue
    name, dims = m.group(1), m.group(3)
    shapes[name] = [int(d) for d in dims.split(",") if d]
    lines[name] = line
    computation_flops[computation] += _dot_flops(line, name, shapes)
  found = {}
  for name, line in lines.items():
    op = re.search(r'op_name="([^"]*)"', line)
    kind = re.search(r"= [\w\[\],{}:\d ]*?\s(\w[\w-]*)\(", line)
    called = re.search(r"calls=%([\w.\-]+)", line)
    flops = computation_flops[called.group(1)] if kind and kind.group(1) == "fusion" and called else \
        _dot_flops(line, name, shapes)
    found[name] = (kind.group(1) if kind else "?", op.group(1) if op else "", flops)
  return found


def main():
  config = work.WORKS[args.work]
  model = combinax_worker.model_for(args.work, config)
  step_fn = TrainStep(model, objective.fused_head(model, cl.CategoryCrossEntropy()),
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
    rate = "" if not flops else "async" if kind == "dot" else f"{flops * count[name] / us / 1e3:.0f}"
    print(f"{us / 1e3:7.1f} {count[name]:5.0f} {rate:>7}  {name} [{kind}]  {op[-90:]}")


if __name__ == "__main__":
  main()
