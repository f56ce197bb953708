"""What every command shares: its flags (absl's syntax, one `FlagValues` per command, so a command lists and accepts
only its own), the shared flags' one meaning, gin configuration, joining a multi-host job, and how a command ends:
one line and exit code 2 for a bad flag or configuration (before anything is written), one line and exit code 1 for
an error combinax raised to say why a run cannot go on (`--traceback` shows the traceback), 0 otherwise.

    COMMAND = Command("combinax-train", HELP, run_training, shared=("config_file", "config", "output_dir", ...),
                      define=define_own_flags)
    def main(): COMMAND.main()          # the console script
    COMMAND.run(["--output_dir=runs/lm", ...])   # in-process (tests): errors propagate, ConfigError included
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import gin
from absl import flags

HELP_FLAGS = {"--help", "-h", "-help", "--helpshort"}
COORDINATOR_TIMEOUT = 300   # seconds: jax.distributed.initialize's own default


class ConfigError(SystemExit):
  """A bad flag or configuration: the command exits with its message and code 2, before anything is written."""


# The flags several commands take, defined here once so that each means the same in all of them: name ->
# (absl's definer, default, help). `multihost` brings the three flags that say where the job's processes are.
SHARED = {
    "config_file": (flags.DEFINE_multi_string, [], "gin config file(s), applied in order"),
    "config": (flags.DEFINE_multi_string, [], "gin bindings, e.g. 'Trainer.steps = 100', applied after the files"),
    "output_dir": (flags.DEFINE_string, None, "the run directory: checkpoints, configs and logs (rerunning resumes "
                   "from it)"),
    "allow_config_change": (flags.DEFINE_bool, False, "resume although the configuration differs from the one the "
                            "newest checkpoint was trained with (e.g. another learning rate; raising only the "
                            "run's length, Trainer.steps or FederatedRun.rounds, needs no flag)"),
    "multihost": (flags.DEFINE_bool, False, "one process of a multi-host job: calls jax.distributed.initialize() "
                  "first"),
}
MULTIHOST = {
    "coordinator_address": (flags.DEFINE_string, None, "with --multihost: host:port of process 0, which coordinates "
                            "the job (default: what JAX detects on a cluster: Slurm, Open MPI, Kubernetes, Cloud TPU)"),
    "num_processes": (flags.DEFINE_integer, None, "with --multihost: how many processes the job has (default: "
                      "detected)"),
    "process_id": (flags.DEFINE_integer, None, "with --multihost: this process's index, 0 to num_processes - 1 "
                   "(default: detected)"),
    "coordinator_timeout": (flags.DEFINE_integer, None, "with --multihost: seconds to wait for the coordinator and "
                            f"every process to join the job before giving up (default: {COORDINATOR_TIMEOUT}, JAX's)"),
}
EVERY = {
    "traceback": (flags.DEFINE_bool, False, "show the Python traceback of an error, not only its message"),
    "verbosity": (flags.DEFINE_integer, -1, "the libraries' own log lines (Orbax's, at absl's levels): -1 warnings "
                  "only, 0 also what each save does"),
}


class Command:
  """A command line: `program`, its `help` text, `main(args)` (args: the parsed flags; `main(args, rest)` for a
  command taking `positional` arguments, e.g. a subcommand), the `shared` flags it takes (of `SHARED`) and
  `define(flag_values)` defining its own; `--traceback` and `--verbosity` every command takes."""

  def __init__(self, program: str, help: str, main: Callable, *, shared: Iterable[str] = (),
               define: Callable[[flags.FlagValues], None] | None = None, positional: str | None = None):
    unknown = set(shared) - set(SHARED)
    if unknown:
      raise ValueError(f"Command {program}: no shared flag {sorted(unknown)}; the shared ones are {list(SHARED)}")
    self.program, self.help, self.main_fn = program, help, main
    self.shared, self.define, self.positional = tuple(shared), define, positional

  def flag_values(self) -> flags.FlagValues:
    """A fresh set of this command's flags (parsing one twice would add to its repeated flags' values)."""
    values = flags.FlagValues()
    chosen = {name: SHARED[name] for name in self.shared} | (MULTIHOST if "multihost" in self.shared else {}) | EVERY
    for name, (define, default, meaning) in chosen.items():
      define(name, default, meaning, flag_values=values)
    if self.define is not None:
      self.define(values)
    return values

  def parse(self, argv: list[str]) -> tuple[flags.FlagValues, list[str]]:
    """(the flags of `argv`, the arguments that are not flags): a ConfigError names a bad flag, and arguments that
    are not flags where the command takes none (`positional` says what they are where it does)."""
    values = self.flag_values()
    try:
      rest = values([self.program, *argv])[1:]
    except flags.Error as e:
      raise ConfigError(f"{self.program}: {e} (--help lists this command's flags)") from None
    if rest and self.positional is None:
      raise ConfigError(f"{self.program}: unexpected argument(s) {' '.join(rest)} (--help lists this command's "
                        "flags)")
    return values, rest

  def _call(self, args: flags.FlagValues, rest: list[str]):
    return self.main_fn(args, rest) if self.positional is not None else self.main_fn(args)

  def run(self, argv: list[str]):
    """Parses `argv` and runs the command in this process; every error propagates (for tests and callers)."""
    return self._call(*self.parse(argv))

  def help_text(self) -> str:
    return self.help + "\nflags:\n" + self.flag_values().get_help(include_special_flags=False)

  def main(self, argv: list[str] | None = None):
    """The console script: help, or the command, ending as the module docstring says."""
    argv = sys.argv[1:] if argv is None else argv
    if HELP_FLAGS & set(argv):
      print(self.help_text())
      return
    # "Unable to initialize backend 'tpu'" and its like are INFO lines of JAX's backend discovery, not ours.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    args = None
    try:
      args, rest = self.parse(argv)
      flags.FLAGS.mark_as_parsed()   # absl's own flags (its logging's) keep their defaults
      from absl import logging as absl_logging
      absl_logging.set_verbosity(args.verbosity)   # Orbax reports each stage of every save at absl's INFO level
      if not args.traceback:
        quiet_background_failures()
      self._call(args, rest)
    except ConfigError as e:
      print(e.code if isinstance(e.code, str) else e, file=sys.stderr, flush=True)
      sys.exit(2)
    except Exception as e:   # noqa: BLE001  (a known error says all in its message)
      if (args is not None and args.traceback) or not known_error(e):
        raise
      print(f"{self.program}: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
      sys.exit(1)


class _OrbaxTracebacks(logging.Filter):
  """Drops what Orbax logs with a traceback when a save fails in its background threads: the failure also reaches
  the run (`CheckpointManager.wait` raises it as a CheckpointError naming the checkpoint), which says it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


def _ignore_closed_event_loops(unraisable, *, default):
  """After one of a save's writes failed, Orbax closes the save's event loop while TensorStore still finishes the
  others; each then reports "Event loop is closed" as an unraisable error (a traceback apiece, dozens on a full
  disk), about a save already reported as failed. Other unraisable errors go on to Python's hook."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
    default(unraisable)


def quiet_background_failures():
  """Keeps a failed save's report to combinax's one line (without --traceback): Orbax's logged tracebacks and the
  closed event loops of its unfinished writes are left out."""
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _OrbaxTracebacks) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxTracebacks())
  if getattr(sys.unraisablehook, "func", None) is not _ignore_closed_event_loops:
    sys.unraisablehook = functools.partial(_ignore_closed_event_loops, default=sys.unraisablehook)


COMPILATION_CACHE = "jax-compilation"   # the folder of combinax's cache (`cache_root()`) holding compiled programs


def persistent_compilation_cache() -> Path | None:
  """Keeps every program this process compiles in `<combinax cache>/jax-compilation` (JAX's persistent compilation
  cache, `$COMBINAX_CACHE` honoured), and loads it from there instead of compiling it again in a later process with
  the same program, JAX and flags. Call it before anything compiles. Returns the folder, or None where JAX's cache
  was set up already (`JAX_COMPILATION_CACHE_DIR`, or the caller's `jax.config`): that setting is kept as it is.

  Every program is kept, however quickly it compiled (JAX keeps only those of 1 s or more by default): a start of
  `combinax-decode --pretrained=smollm2-135m-instruct --quantize=int8` compiled the decoding program in 2.9 s and 27
  small ones in 2.0 s together (the restore's checksums, one per array shape: 10 in 1.8 s), each under 1 s; read
  from here, all 28 took 0.24 s (2 cores shared with another job). The folder may be deleted at any time; like any
  compilation cache it runs what it holds, so it is the user's own (never a folder others can write)."""
  import jax

  from combinax.data.tokenizers import cache_root
  if jax.config.jax_compilation_cache_dir is not None:
    return None
  folder = cache_root() / COMPILATION_CACHE
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)   # (-1: any size, and JAX adjusts nothing)
  return folder


def known_error(error: Exception) -> bool:
  """True for the errors combinax raises to explain why a run cannot go on: their message is the whole story."""
  from combinax.data.base import DataError
  from combinax.data.corpora import UnknownCorpusError
  from combinax.growth.operator import GrowthError
  from combinax.layers.base import LayerError
  from combinax.pretrained.families import PretrainedError
  from combinax.retrieval import DocumentError, EncoderError, KnowledgeBaseError, RAGError, SearchError
  from combinax.store.checkpoints import CheckpointError
  from combinax.store.rundir import RunDirectoryError
  from combinax.train.trainer import TrainingError
  return isinstance(error, (DataError, UnknownCorpusError, GrowthError, LayerError, PretrainedError,
                            CheckpointError, RunDirectoryError, TrainingError, OSError, DocumentError, EncoderError,
                            KnowledgeBaseError, RAGError, SearchError))


def parse_config(files, bindings, skip_unknown: bool = False):
  """Parses gin files and bindings; a bad binding, an unknown configurable or a value of the wrong type (checked
  against the parameter's annotation) exits with one line per problem, no traceback."""
  import combinax.distill  # noqa: F401  (registers every configurable: models, layers' factories, data, optax, ...)
  import combinax.growth  # noqa: F401
  import combinax.models  # noqa: F401
  import combinax.retrieval  # noqa: F401
  import combinax.train  # noqa: F401
  from combinax.configurable import binding_type_errors
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings), skip_unknown=skip_unknown)
  except (ValueError, KeyError, TypeError, IOError) as e:
    # gin adds where the binding is on lines of their own (and a caret under it): one line says it all
    first, *where = [line.strip() for line in str(e).strip("'\"").splitlines() if line.strip().strip("^")]
    raise ConfigError(f"combinax: bad gin configuration: {first}" + (f" ({': '.join(where)})" if where else "")) \
        from None
  errors = binding_type_errors(gin.config_str())
  if errors:
    raise ConfigError("combinax: bad gin configuration: " + "; ".join(errors))


def configuration_error(program: str, error: Exception) -> ConfigError | None:
  """A ConfigError for an error gin raised while building the configured job (a required value unbound), or that a
  configurable raised there refusing its values, in one line; else None."""
  # gin adds a line to every error raised inside a configurable, "In call to configurable 'X' (<function X at
  # 0x...>)": a repr that says nothing to the user, after a message that names its setting already.
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  own = [line for line in lines if not line.startswith("In call to configurable ")]
  if len(own) == len(lines) and not any(word in str(error).lower() for word in ("gin", "configurable", "required")):
    return None
  unbound = "Required bindings" in str(error)
  return ConfigError(f"{program}: bad gin configuration: {' '.join(own)}" + (
      " (bind each in a config file or with --config='NAME.parameter = value')" if unbound else ""))


def start_multihost(program: str, args) -> int:
  """With --multihost, joins the job (`jax.distributed.initialize`); returns this process's index (0 without).

  A process other than 0 first checks that the coordinator (process 0, which listens) accepts a TCP connection,
  trying until --coordinator_timeout: JAX, when it cannot reach it, waits out its timeout and then aborts the process
  from C++ (a stack dump and no word of which address it tried), which no Python code can catch."""
  explicit = {"coordinator_address": args.coordinator_address, "num_processes": args.num_processes,
              "process_id": args.process_id}
  given = [f"--{name}" for name, value in {**explicit, "coordinator_timeout": args.coordinator_timeout}.items()
           if value is not None]
  if not args.multihost:
    if given:
      raise ConfigError(f"{program}: {', '.join(given)} only {'means' if len(given) == 1 else 'mean'} something "
                        "with --multihost")
    return 0
  timeout = COORDINATOR_TIMEOUT if args.coordinator_timeout is None else args.coordinator_timeout
  if timeout < 1:
    raise ConfigError(f"{program}: --coordinator_timeout: expected a number of seconds >= 1, got {timeout}")
  if args.coordinator_address is not None and args.process_id not in (None, 0):
    host, port = coordinator_host_port(program, args.coordinator_address)
    if not reachable(host, port, timeout):
      raise ConfigError(f"{program} --multihost: process {args.process_id} found no coordinator at "
                        f"{args.coordinator_address} within {timeout} s: check that process 0 runs with the same "
                        f"--coordinator_address, that {host} is its machine and that port {port} is open to this "
                        "one (no firewall between them), or raise --coordinator_timeout if it starts later")
  import jax
  # Processes on CPUs exchange gradients over TCP with gloo (GPUs and TPUs use their own links; this setting only
  # concerns the CPU backend). It must be set before the backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None},
                               initialization_timeout=timeout)
  except (ValueError, RuntimeError) as e:
    raise ConfigError(f"{program} --multihost: cannot join the job ({type(e).__name__}: {e}); give "
                      "--coordinator_address=HOST:PORT of process 0, --num_processes and --process_id, or run "
                      "where JAX detects the cluster") from None
  return jax.process_index()


def coordinator_host_port(program: str, address: str) -> tuple[str, int]:
  """(host, port) of --coordinator_address HOST:PORT (an IPv6 host in brackets, [::1]:1234)."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ConfigError(f"{program}: --coordinator_address: expected HOST:PORT of process 0, got {address!r}")
  return host.strip("[]"), int(port)


def reachable(host: str, port: int, timeout: float) -> bool:
  """Whether something accepts a TCP connection at host:port within `timeout` seconds, trying every half second
  (process 0 may start a little after the others)."""
  deadline = time.monotonic() + timeout
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.1)):
        return True
    except OSError:   # refused, unreachable, a name that does not resolve (yet), or no answer
      if time.monotonic() + 0.5 >= deadline:
        return False
      time.sleep(0.5)
