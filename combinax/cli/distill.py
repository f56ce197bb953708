"""`python -m combinax.distill topk --config_file=F [--config=BINDING ...] --output_dir=D`: the teacher's top-k
logits over its data (`combinax.distill.topk.teacher_topk`, configured by the gin files), written to D."""

from __future__ import annotations

from combinax.cli.frame import Command, ConfigError, parse_config

HELP = """usage: python -m combinax.distill topk --config_file=F [--config=BINDING ...] --output_dir=D
  topk: the teacher's top-k log-probabilities over its data (teacher_topk in the gin files), one file a batch in D;
        rerunning goes on after the batches written, and a second writer of D is refused while one runs"""

PROGRAM = "python -m combinax.distill"


def distill(args, rest: list[str]):
  if rest != ["topk"]:
    raise ConfigError(f"{PROGRAM}: expected the command topk, got {' '.join(rest) or 'none'}\n{HELP}")
  if not args.config_file or args.output_dir is None:
    raise ConfigError(f"{PROGRAM} topk: --config_file and --output_dir are required")
  parse_config(args.config_file, args.config)
  from combinax.distill.topk import teacher_topk
  folder = teacher_topk(args.output_dir)
  print(f"{PROGRAM}: top-k logits of {len(list(folder.glob('topk-*.npz')))} batches in {folder}")


COMMAND = Command(PROGRAM, HELP, distill, shared=("config_file", "config", "output_dir"), positional="topk")


def main(argv: list[str] | None = None):
  """Entry point of `python -m combinax.distill`."""
  COMMAND.main(argv)
