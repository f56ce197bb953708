"""`python -m combinax.federated.flower server|client`: a federated recipe run as separate processes over Flower
(`combinax.federated.flower`; pip install 'combinax[federated]')."""

from __future__ import annotations

from absl import flags

from combinax.cli.frame import Command, ConfigError, parse_config

HELP = """usage: python -m combinax.federated.flower server|client --config_file=F [--config=B] --output_dir=D
    [--address=HOST:PORT] [--client_id=K]
  server: Flower's server for the recipe's rounds; writes the final server state to --output_dir
  client: client K of the recipe's split (one process per client, K from 0), until the server ends the run"""

PROGRAM = "python -m combinax.federated.flower"


def define(values: flags.FlagValues):
  flags.DEFINE_string("address", "127.0.0.1:8080", "the server's host:port", flag_values=values)
  flags.DEFINE_integer("client_id", None, "client: which of the recipe's clients it is", flag_values=values)


def flower(args, rest: list[str]):
  if rest not in (["server"], ["client"]):
    raise ConfigError(f"{PROGRAM}: expected server or client, got {' '.join(rest) or 'nothing'}\n{HELP}")
  role = rest[0]
  if args.output_dir is None:
    raise ConfigError(f"{PROGRAM} {role}: --output_dir is required")
  if role == "client" and args.client_id is None:
    raise ConfigError(f"{PROGRAM} client: --client_id is required")
  import combinax.federated  # noqa: F401  (registers the federated configurables)
  from combinax.federated import flower as adapter
  from combinax.federated.fedavg import FederatedError
  from combinax.federated.run import FederatedRun
  parse_config(args.config_file, args.config)
  run = FederatedRun(output_dir=args.output_dir)
  try:
    if role == "server":
      print(f"combinax flower server: wrote {adapter.serve(run, address=args.address)}")
    else:
      adapter.join(run, address=args.address, client_id=args.client_id)
  except FederatedError as e:
    raise ConfigError(f"combinax flower {role}: {str(e).splitlines()[0]}") from None


COMMAND = Command(PROGRAM, HELP, flower, shared=("config_file", "config", "output_dir"), define=define,
                  positional="server|client")


def main(argv: list[str] | None = None):
  """Entry point of `python -m combinax.federated.flower`."""
  COMMAND.main(argv)
