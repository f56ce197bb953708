"""Fault injection: `combinax-train` SIGKILLed at 10 random moments (seeded) of a tiny run: while it starts, restores,
trains, logs, saves asynchronously, deletes old checkpoints or writes its configs. Each killed run is rerun until it
finishes; every finished run must end with the params and `metrics.jsonl` of an uninterrupted run and leave nothing
behind but its files, and after every kill the log must still be a prefix of the uninterrupted one's."""

import signal
import subprocess
import time

import numpy as np

from combinax.store import checkpoints
from tiny_run import command, final_params, make_workspace, records, tiny_config, train

KILLS = 10   # 20 took 377 s of a CI worker; ten moments still cover start-up, training, saves and deletes
# 40 steps, a log line every 3 and a checkpoint every 5 (2 kept): kills land between a log and the next checkpoint,
# in saves, and in the deletes of old checkpoints.
CONFIG = tiny_config(steps=40, log_every=3, checkpoint_every=5) + "Trainer.keep_checkpoints = 2\n"
RUN_FILES = {".lock", "config.gin", "operative_config.gin", "metrics.jsonl", "loss_curve.png", "tensorboard"}


def kill_at_a_random_moment(child: subprocess.Popen, rng: np.random.Generator, startup: float,
                            folder) -> str | None:
  """SIGKILLs `child` at a moment drawn from `rng`: one time in five while it starts (imports, compiles, restores),
  otherwise shortly after its run directory's log holds 1 to 4 more records than when it started (mid-training).
  Returns where it was killed, or None when it finished first.

  Counted in log records, not in output lines and seconds, so that where the kills land depends less on the
  machine's speed: counted in output lines, the same seeded moments fell at only 2 numbers of records on a 2-core
  AMD EPYC running the whole suite (2026-12-08), at 6 on the same machine alone."""
  if rng.uniform() < 0.2:
    seconds = rng.uniform(0.3, 1.0) * startup
    try:
      child.wait(timeout=seconds)
      return None
    except subprocess.TimeoutExpired:
      moment = f"{seconds:.2f} s after the start"
  else:
    target, delay = len(records(folder)) + int(rng.integers(1, 5)), rng.uniform(0.0, 0.3)
    while len(records(folder)) < target:   # (a resumed run first cuts the log back to its checkpoint)
      if child.poll() is not None:
        return None
      time.sleep(0.01)
    time.sleep(delay)
    moment = f"{delay:.2f} s after log record {target}"
  child.send_signal(signal.SIGKILL)
  child.wait()
  return moment


def test_kills_at_ten_random_moments_never_change_what_the_run_ends_with(tmp_path):
  workspace = make_workspace(tmp_path, CONFIG)
  started = time.perf_counter()
  straight = train("straight", workspace=workspace)
  assert straight.returncode == 0, straight.stderr
  startup = time.perf_counter() - started
  expected_params, expected_records = final_params(tmp_path / "straight"), records(tmp_path / "straight")
  assert [r["step"] for r in expected_records if "train/loss" in r] == [*range(3, 40, 3), 40]

  rng = np.random.default_rng(20261201)
  kills, moments, chain = 0, [], 0
  while kills < KILLS:
    folder = tmp_path / f"run{chain}"
    while True:   # rerun after each kill until a run finishes (the last one is never killed)
      child = command("train", "--config_file=tiny.gin", f"--output_dir={folder}", workspace=workspace)
      moment = kill_at_a_random_moment(child, rng, startup, folder) if kills < KILLS else None
      if moment is None:
        child.wait()
        _, err = child.communicate()
        assert child.returncode == 0, f"chain {chain}: the run did not finish: {err}"
        break
      child.communicate()
      kills += 1
      logged = records(folder)
      moments.append((moment, len(logged)))
      assert logged == expected_records[:len(logged)], f"kill {kills} ({moment}): the log is not a prefix"
      assert not list(folder.glob("*.damaged*")), f"kill {kills} ({moment}): a checkpoint was damaged"
      for checkpoint in checkpoints.list_checkpoints(folder):
        checkpoints.read_manifest(checkpoint)   # every listed checkpoint's manifest is whole (its digest holds)
    got = final_params(folder)
    for path in expected_params:
      np.testing.assert_array_equal(got[path], expected_params[path], err_msg=f"chain {chain}: {path}")
    assert records(folder) == expected_records, f"chain {chain}: metrics.jsonl differs"
    assert (folder / "config.gin").read_text() == (tmp_path / "straight" / "config.gin").read_text()
    leftovers = {p.name for p in folder.iterdir()} - RUN_FILES
    assert all(checkpoints._NAME.match(name) for name in leftovers), f"chain {chain}: left behind {leftovers}"
    chain += 1
  # The kills fell at many points of the run, not all in one phase (the number of log records at each kill).
  print(f"{chain} finished runs; kills (moment, log records then):", moments)
  assert len({logged for _, logged in moments}) >= 4, moments
