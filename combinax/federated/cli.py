"""`combinax-federated`: a federated run from gin configs (rerunning resumes from the newest checkpoint).

    combinax-federated --config_file=configs/fedavg_digits.gin --output_dir=runs/fedavg_digits \\
        [--config='FederatedRun.rounds = 50']

It takes `combinax-train`'s flags and conventions (`--config_file`, `--config`, `--output_dir`,
`--allow_config_change`, `--traceback`; one-line errors, exit code 2 for a bad configuration, 1 for a run that
cannot go on) and runs the configured `FederatedRun`.
"""

from __future__ import annotations

from pathlib import Path

from combinax.train import cli as train_cli
from combinax.train.cli import FLAGS, ConfigError

HELP = """combinax-federated: federated training (FedAvg, FedSGD, FedAvgM/FedAdam) of the model a gin config describes
over simulated clients; rerunning resumes from the newest checkpoint, exactly.

  combinax-federated --config_file=configs/fedavg_digits.gin --output_dir=runs/fedavg_digits

Writes checkpoints of the server state (step_XXXXXXXX = round), config.gin, operative_config.gin, metrics.jsonl
and TensorBoard files to --output_dir. The same recipe runs as separate processes over Flower with
`python -m combinax.federated.flower` (pip install 'combinax[federated]').
"""


def federated_main(argv):
  del argv
  if FLAGS.output_dir is None:
    raise ConfigError("combinax-federated: --output_dir is required")
  import combinax.federated  # noqa: F401  (registers FederatedRun, FedAvgOptions, split_clients, image_examples)
  from combinax.federated.fedavg import FederatedError
  from combinax.federated.run import FederatedRun
  from combinax.federated.splits import SplitError
  train_cli.parse_config(FLAGS.config_file, FLAGS.config)
  try:
    run = FederatedRun(output_dir=str(Path(FLAGS.output_dir)))
    run.run(allow_config_change=FLAGS.allow_config_change)
  except (FederatedError, SplitError) as e:   # (gin adds a line naming the configurable; ours names it already)
    raise ConfigError(f"combinax-federated: {str(e).splitlines()[0]}") from None
  except (ValueError, TypeError) as e:
    if "gin" in str(e).lower() or "required" in str(e).lower():
      raise ConfigError(f"combinax-federated: bad gin configuration: {e} (bind each in a config file or with "
                        "--config='NAME.parameter = value')") from None
    raise


def main():
  """Entry point of `combinax-federated`."""
  if not train_cli._shown_help(HELP):
    train_cli._run(federated_main, "combinax-federated")


if __name__ == "__main__":
  main()
