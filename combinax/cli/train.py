"""`combinax-train`: trains the model a gin config describes (the `Trainer`, or the job a recipe names with
`train_job.job`, e.g. `GrowthRun`); rerunning resumes from the newest checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from combinax.cli.frame import (HELP_FLAGS, Command, ConfigError, configuration_error, parse_config,
                                start_multihost)

HELP = """combinax-train: trains the model a gin config describes; rerunning resumes from the newest checkpoint.

  combinax-train --config_file=configs/transformer_lm_kjv.gin --output_dir=runs/lm [--config='Trainer.steps = 100']

Writes checkpoints, config.gin, operative_config.gin, metrics.jsonl and TensorBoard files to --output_dir, which
the run holds locked: a second run on it is refused, naming the first. Each checkpoint keeps the configuration it
was trained with; rerunning with another configuration stops, naming what differs (--allow_config_change resumes
anyway, e.g. with another learning rate); raising only Trainer.steps extends the run.

Errors print one line (exit code 2 for a bad flag or configuration, 1 for a run that cannot go on); --traceback
shows the Python traceback too.

Several hosts: run the same command on each, adding --multihost --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I (or only --multihost where JAX detects the cluster). Each process reads its own shard of the data
(batch sizes stay global) and writes its own shards of each checkpoint; process 0 writes the logs. A process waits
up to --coordinator_timeout seconds (300) for the job to gather; one that cannot reach the coordinator says so.

Huge pages: on Linux, combinax-train restarts itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (and prints a
line saying so), unless GLIBC_TUNABLES already names it or the environment has COMBINAX_HUGE_PAGES=0. XLA:CPU
allocates its scratch buffer (hundreds of MB) afresh for every step; on 4 KiB pages the kernel faults in every page of
it every step, and on transparent huge pages a training step is ~10% faster (benchmarks/RESULTS.md).
"""

PROGRAM = "combinax-train"


def train(args):
  if args.output_dir is None:
    raise ConfigError(f"{PROGRAM}: --output_dir is required")
  start_multihost(PROGRAM, args)
  parse_config(args.config_file, args.config)
  from combinax.train.trainer import train_job
  # Nothing is written here: the job locks --output_dir, and writes config.gin once the run is known to start (a
  # refused rerun leaves the run directory as it was).
  try:
    job = train_job()(output_dir=str(Path(args.output_dir)))
  except (ValueError, TypeError, RuntimeError) as e:
    raise configuration_error(PROGRAM, e) or e from None
  job.run(allow_config_change=args.allow_config_change)


COMMAND = Command(PROGRAM, HELP, train, shared=("config_file", "config", "output_dir", "allow_config_change",
                                                "multihost"))


HUGE_PAGES = "glibc.malloc.hugetlb=1"


def huge_pages_environment(environ, thp_mode: str | None) -> dict | None:
  """The environment to restart with so that glibc's malloc puts large blocks on transparent huge pages, or None
  when there is nothing to do: not Linux, THP off (`thp_mode` "never" or unknown), already set, or opted out."""
  if sys.platform != "linux" or thp_mode not in ("always", "madvise") or environ.get("COMBINAX_HUGE_PAGES") == "0":
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES]))}


def thp_mode() -> str | None:
  """The kernel's transparent-huge-page mode ("always", "madvise", "never"), or None where it does not say."""
  try:
    text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
  except OSError:
    return None
  return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def main():
  """Entry point of `combinax-train`."""
  environment = huge_pages_environment(os.environ, thp_mode())
  if environment is not None and not HELP_FLAGS & set(sys.argv[1:]):
    print(f"{PROGRAM}: restarting with GLIBC_TUNABLES={environment['GLIBC_TUNABLES']} (transparent huge pages "
          "for XLA's per-step scratch buffers; COMBINAX_HUGE_PAGES=0 turns this off; --help says more)",
          file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "combinax.cli.train", *sys.argv[1:]], environment)
  COMMAND.main()


if __name__ == "__main__":
  main()
