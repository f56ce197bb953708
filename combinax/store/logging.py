"""Run logging: a progress bar on a terminal (plain lines otherwise), `metrics.jsonl`, TensorBoard event files, and
a loss-curve PNG written without any plotting library."""

from __future__ import annotations

import json
import math
import struct
import sys
import time
import zlib
from pathlib import Path

from combinax.store.rundir import write_atomically


class RunLogger:
  """Writes each logged step to `metrics.jsonl` (one JSON object a line) and TensorBoard (`tensorboardX`), and shows
  progress: a `tqdm` bar with loss and steps/s when stdout is a terminal, a plain line per log otherwise."""

  def __init__(self, output_dir: str | Path, total_steps: int, start_step: int = 0, progress: bool | None = None):
    self.output_dir = Path(output_dir)
    self.output_dir.mkdir(parents=True, exist_ok=True)
    # A run resumed from step N logs steps N+1, ... again: what a killed run logged past its checkpoint goes, so the
    # logs equal an uninterrupted run's (metrics.jsonl rewritten atomically; TensorBoard hides them: purge_step).
    _keep_records_up_to(self.output_dir / "metrics.jsonl", start_step)
    self.jsonl = open(self.output_dir / "metrics.jsonl", "a")
    self.total_steps, self.last_step, self.last_time = total_steps, start_step, time.perf_counter()
    self.writer = None
    try:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=start_step + 1)
    except ImportError:  # TensorBoard files are optional; metrics.jsonl is always written
      pass
    self.bar = None
    if progress if progress is not None else sys.stdout.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True)

  def log(self, step: int, metrics: dict, prefix: str = "train"):
    """Records `metrics` (floats) at `step`; returns the steps/s since the previous training log."""
    now = time.perf_counter()
    record = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}}
    rate = None
    if prefix == "train" and step > self.last_step:
      rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
      record["steps_per_sec"] = rate
      self.last_step, self.last_time = step, now
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    if self.writer is not None:
      for key, value in record.items():
        if key != "step":
          self.writer.add_scalar(key, value, step)
      self.writer.flush()
    text = "  ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in record.items() if k != "step")
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix_str(f"{prefix}: {text}")
    else:
      print(f"step {step:>7}  {prefix}  {text}", flush=True)
    return rate

  def message(self, text: str):
    (self.bar.write if self.bar is not None else print)(text)

  def close(self):
    self.jsonl.close()
    if self.writer is not None:
      self.writer.close()
    if self.bar is not None:
      self.bar.close()


def _keep_records_up_to(path: Path, step: int):
  """Drops the records of `metrics.jsonl` logged after `step` (atomically: a temporary file renamed over it)."""
  if not path.exists():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
  if len(kept) == len(lines):
    return
  write_atomically(path, "".join(kept))


def _step_of(line: str) -> int | None:
  """The step of one `metrics.jsonl` record, or None for a line a kill cut short (it is dropped, never parsed)."""
  if not line.endswith("\n"):
    return None
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


class QuietLogger:
  """What processes other than 0 log on a multi-host run: nothing (process 0 writes for all)."""

  def log(self, step: int, metrics: dict, prefix: str = "train"):
    return None

  def message(self, text: str):
    pass

  def close(self):
    pass


def read_metrics(output_dir: str | Path) -> list[dict]:
  """The records of `metrics.jsonl`."""
  path = Path(output_dir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _png(pixels: list[bytearray], width: int, height: int) -> bytes:
  """An 8-bit RGB PNG from rows of RGB bytes."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
  raw = b"".join(b"\x00" + bytes(row) for row in pixels)
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def plot_loss_curve(output_dir: str | Path, key: str = "train/loss", width: int = 640, height: int = 360) -> Path | None:
  """Draws `key` from `metrics.jsonl` against the step (log-scaled when it spans a factor > 20) into
  `loss_curve.png`; returns its path, or None when there are fewer than two points."""
  points = [(r["step"], r[key]) for r in read_metrics(output_dir) if key in r and math.isfinite(r[key])]
  if len(points) < 2:
    return None
  steps, values = zip(*points)
  use_log = min(values) > 0 and max(values) / min(values) > 20
  ys = [math.log(v) for v in values] if use_log else list(values)
  margin = 20
  x0, x1, y0, y1 = min(steps), max(steps), min(ys), max(ys)
  pixels = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]

  def put(x, y, color):
    if 0 <= x < width and 0 <= y < height:
      pixels[y][3 * x:3 * x + 3] = bytes(color)

  for x in range(margin, width - margin):                     # axes
    put(x, height - margin, (0, 0, 0))
  for y in range(margin, height - margin):
    put(margin, y, (0, 0, 0))
  scale_x = lambda s: margin + round((s - x0) / max(x1 - x0, 1e-12) * (width - 2 * margin - 1))
  scale_y = lambda v: height - margin - round((v - y0) / max(y1 - y0, 1e-12) * (height - 2 * margin - 1))
  coords = [(scale_x(s), scale_y(v)) for s, v in zip(steps, ys)]
  for (xa, ya), (xb, yb) in zip(coords, coords[1:]):          # the curve, as line segments
    n = max(abs(xb - xa), abs(yb - ya), 1)
    for i in range(n + 1):
      put(round(xa + (xb - xa) * i / n), round(ya + (yb - ya) * i / n), (31, 119, 180))
  path = Path(output_dir) / "loss_curve.png"
  write_atomically(path, _png(pixels, width, height))   # (a full disk leaves the old one, or none: never 0 bytes)
  return path
