"""`python -m combinax.distill topk --config_file=F [--config=BINDING ...] --output_dir=D`: the teacher's top-k
logits over its data (`combinax.distill.topk.teacher_topk`, configured by the gin files), written to D."""

import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m combinax.distill", description=__doc__)
  parser.add_argument("command", choices=["topk"])
  parser.add_argument("--config_file", action="append", default=[], required=True)
  parser.add_argument("--config", action="append", default=[])
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args(argv)
  from combinax.train.cli import ConfigError, parse_config
  try:
    parse_config(args.config_file, args.config)
  except ConfigError as e:
    print(e.code, file=sys.stderr)
    return 2
  from combinax.distill.topk import teacher_topk
  folder = teacher_topk(args.output_dir)
  print(f"python -m combinax.distill: top-k logits of {len(list(folder.glob('topk-*.npz')))} batches in {folder}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
