"""`combinax-federated`: a federated run from gin configs (rerunning resumes from the newest checkpoint).

    combinax-federated --config_file=configs/fedavg_digits.gin --output_dir=runs/fedavg_digits \\
        [--config='FederatedRun.rounds = 50']
"""

from __future__ import annotations

from pathlib import Path

from combinax.cli.frame import Command, ConfigError, configuration_error, parse_config

HELP = """combinax-federated: federated training (FedAvg, FedSGD, FedAvgM/FedAdam) of the model a gin config describes
over simulated clients; rerunning resumes from the newest checkpoint, exactly.

  combinax-federated --config_file=configs/fedavg_digits.gin --output_dir=runs/fedavg_digits

Writes checkpoints of the server state (step_XXXXXXXX = round), config.gin, operative_config.gin, metrics.jsonl
and TensorBoard files to --output_dir, which the run holds locked, as combinax-train does (a changed configuration
stops a rerun, naming what differs, unless --allow_config_change). Errors print one line (exit code 2 for a bad flag
or configuration, 1 for a run that cannot go on). The same recipe runs as separate processes over Flower with
`python -m combinax.federated.flower` (pip install 'combinax[federated]').
"""

PROGRAM = "combinax-federated"


def federated(args):
  if args.output_dir is None:
    raise ConfigError(f"{PROGRAM}: --output_dir is required")
  import combinax.federated  # noqa: F401  (registers FederatedRun, FedAvgOptions, split_clients, image_examples)
  from combinax.federated.fedavg import FederatedError
  from combinax.federated.run import FederatedRun
  from combinax.federated.splits import SplitError
  parse_config(args.config_file, args.config)
  try:
    run = FederatedRun(output_dir=str(Path(args.output_dir)))
    run.run(allow_config_change=args.allow_config_change)
  except (FederatedError, SplitError) as e:   # (gin adds a line naming the configurable; ours names it already)
    raise ConfigError(f"{PROGRAM}: {str(e).splitlines()[0]}") from None
  except (ValueError, TypeError) as e:
    raise configuration_error(PROGRAM, e) or e from None


COMMAND = Command(PROGRAM, HELP, federated, shared=("config_file", "config", "output_dir", "allow_config_change"))


def main(argv: list[str] | None = None):
  """Entry point of `combinax-federated`."""
  COMMAND.main(argv)


if __name__ == "__main__":
  main()
