"""Asynchronous checkpoints: how much a save in flight slows training, against the synchronous save it replaces.

A ~91M-parameter TransformerLM (d_model 768, 12 layers, d_ff 3072, vocab 8192) trains with adamw, so its train state
(params + two moments) is ~1.1 GB. One interleaved run, `--rounds` rounds of, in turn:
  none      `--steps` steps, no save: the plain step time;
  async     a save through `CheckpointManager` (Orbax, in the background), then steps until it is committed: how long
            `save()` held the loop, and the step time while the write ran (the target: <= 10% slower);
  orbax     the same save, synchronous (`asynchronous=False`): the loop waits for all of it;
  npz-0.1   combinax 0.1's save, as it was (every leaf fetched to the host, np.savez, sha256, fsync, rename): the
            baseline this issue replaces;
then a restore of the newest checkpoint into the train state's shardings. Throughputs are the state's bytes over
the wall time, beside `dd` writing (fdatasync) and reading the same number of bytes on the same disk.

    python benchmarks/async_checkpoint.py [--rounds 3 --steps 6 --directory /tmp/ckpt_bench]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from combinax import layers as cl
from combinax.models import TransformerLM
from combinax.paths import leaves_with_paths
from combinax import sharding
from combinax.store import checkpoints
from combinax.train.step import TrainStep


def npz_save_0_1(directory: Path, step: int, tree) -> Path:
  """combinax 0.1's `checkpoints.save`: gathers every leaf to the host, one npz, its sha256, fsync, atomic rename."""
  final = directory / f"step_{step:08d}"
  arrays, entries = {}, []
  for index, (path, leaf) in enumerate(leaves_with_paths(tree)):
    key = jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    value = np.asarray(jax.random.key_data(leaf) if key else jax.device_get(leaf))
    arrays[f"leaf_{index:06d}"] = value
    entries.append({"path": path, "shape": list(value.shape), "dtype": value.dtype.name})
  tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=directory))
  with open(tmp / "arrays.npz", "wb") as f:
    np.savez(f, **arrays)
    f.flush()
    os.fsync(f.fileno())
  digest = hashlib.sha256()
  with open(tmp / "arrays.npz", "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  (tmp / "manifest.json").write_text(json.dumps({"format": "combinax-checkpoint-v1", "step": step,
                                                 "leaves": entries, "sha256": digest.hexdigest()}))
  os.rename(tmp, final)
  return final


def disk_speed(directory: Path, size_mb: int) -> tuple[float, float]:
  """MB/s of dd writing `size_mb` (fdatasync) and reading it back (from the page cache, as a restore right after a
  save does)."""
  path = directory / "dd.bin"
  rates = []
  for command in (["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mb}", "conv=fdatasync"],
                  ["dd", f"if={path}", "of=/dev/null", "bs=1M"]):
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    rates.append(size_mb * 1.048576 / (time.perf_counter() - start))
  path.unlink()
  return rates[0], rates[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--directory", default=None)
  parser.add_argument("--d_model", type=int, default=768)
  parser.add_argument("--n_layers", type=int, default=12)
  args = parser.parse_args()
  directory = Path(args.directory or tempfile.mkdtemp(prefix="ckpt_bench_"))
  shutil.rmtree(directory, ignore_errors=True)
  directory.mkdir(parents=True)

  model = TransformerLM(8192, d_model=args.d_model, d_ff=4 * args.d_model, n_layers=args.n_layers,
                        n_heads=args.d_model // 64, max_len=64, dropout=0.0, mode="train")
  step_fn = TrainStep(model, cl.WeightedCategoryCrossEntropy(), optax.adamw(1e-4), mesh=sharding.make_mesh())
  tokens = np.random.default_rng(0).integers(0, 8192, (4, 64)).astype(np.int32)
  batch = (tokens, tokens, np.ones((4, 64), np.float32))
  state = step_fn.init(jax.random.key(0), batch)
  state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, state)))
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  print(f"model: {params / 1e6:.1f}M params; train state {state_bytes / 1e6:.0f} MB; devices: {jax.device_count()}")

  def step(s):
    s, metrics = step_fn(s, batch)
    jax.block_until_ready(metrics)
    return s

  for _ in range(2):   # compile and warm up
    state = step(state)
  async_manager = checkpoints.CheckpointManager(directory / "async", keep=1)
  sync_manager = checkpoints.CheckpointManager(directory / "orbax", keep=1, asynchronous=False)
  (directory / "npz").mkdir()
  for manager in (async_manager, sync_manager):   # warm up: the checksum function compiles, Orbax starts its threads
    manager.save(int(state.step), state)
    manager.wait()
  results = {k: [] for k in ("none", "async", "orbax", "npz-0.1", "restore")}
  for round_ in range(args.rounds):
    times = []
    for _ in range(args.steps):
      start = time.perf_counter()
      state = step(state)
      times.append(time.perf_counter() - start)
    results["none"].append({"step_s": statistics.median(times)})

    start = time.perf_counter()
    path = async_manager.save(int(state.step), state)
    blocked = time.perf_counter() - start
    during = []
    while not path.exists():   # Orbax renames the finished checkpoint into place last
      t = time.perf_counter()
      state = step(state)
      during.append(time.perf_counter() - t)
    async_manager.wait()
    committed = time.perf_counter() - start
    results["async"].append({"blocked_s": blocked, "committed_s": committed, "steps_during": len(during),
                             "step_s": statistics.median(during) if during else float("nan")})

    start = time.perf_counter()
    sync_manager.save(int(state.step), state)
    results["orbax"].append({"blocked_s": time.perf_counter() - start})

    start = time.perf_counter()
    old = npz_save_0_1(directory / "npz", int(state.step), state)
    results["npz-0.1"].append({"blocked_s": time.perf_counter() - start})
    shutil.rmtree(old)

    start = time.perf_counter()
    restored, _ = checkpoints.restore(async_manager.latest(), state)
    jax.block_until_ready(restored)
    results["restore"].append({"s": time.perf_counter() - start})
    del restored
    print(f"round {round_ + 1}: " + "  ".join(f"{k} {json.dumps({a: round(b, 3) for a, b in v[-1].items()})}"
                                              for k, v in results.items()), flush=True)
  async_manager.close()
  sync_manager.close()

  mb = state_bytes / 1e6
  med = lambda mode, key: statistics.median(r[key] for r in results[mode])
  plain = med("none", "step_s")
  print(f"\nmedians over {args.rounds} rounds (train state {mb:.0f} MB):")
  print(f"| save | training blocked per save | step time while the write runs | save MB/s |")
  print(f"|---|---|---|---|")
  print(f"| none | - | {plain * 1e3:.0f} ms | - |")
  print(f"| asynchronous (Orbax) | {med('async', 'blocked_s'):.2f} s | {med('async', 'step_s') * 1e3:.0f} ms "
        f"({(med('async', 'step_s') / plain - 1) * 100:+.1f}%, {med('async', 'steps_during'):.0f} steps) | "
        f"{mb / med('async', 'committed_s'):.0f} |")
  print(f"| synchronous (Orbax) | {med('orbax', 'blocked_s'):.2f} s | - | {mb / med('orbax', 'blocked_s'):.0f} |")
  print(f"| synchronous npz (combinax 0.1) | {med('npz-0.1', 'blocked_s'):.2f} s | - | "
        f"{mb / med('npz-0.1', 'blocked_s'):.0f} |")
  print(f"restore (checked, placed): {med('restore', 's'):.2f} s = {mb / med('restore', 's'):.0f} MB/s")
  write, read = disk_speed(directory, int(mb))
  print(f"disk (dd, {mb:.0f} MB): write {write:.0f} MB/s with fdatasync, read {read:.0f} MB/s (page cache)")
  shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  main()
