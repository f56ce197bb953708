"""`combinax-train` (train from gin configs; rerunning resumes) and `combinax-decode` (sample from a trained LM).

    combinax-train --config_file=configs/transformer_lm_kjv.gin --output_dir=runs/lm [--config='Trainer.steps=100']
    combinax-decode --output_dir=runs/lm --prompt="In the beginning" --max_length=60
    combinax-decode --pretrained=smollm2-135m-instruct --quantize=int8 --interactive

`combinax-train` writes `config.gin` (every binding it was given) and `operative_config.gin` (the values used) next
to the checkpoints; `combinax-decode` reads `config.gin` back, so it builds the same model and tokenizer.
Multi-host: start the same command on every host with `--multihost --coordinator_address=HOST0:PORT
--num_processes=N --process_id=I` (or just `--multihost` on a cluster JAX detects); it calls
`jax.distributed.initialize()` before anything else. Every process reads its own shard of the data and writes its
own shards of each checkpoint; process 0 alone writes configs, logs, metrics and TensorBoard files.

`--help` prints what each command does and its flags; the console shows combinax's own lines only (JAX's note
that it found no TPU is kept out). `combinax-train` restarts itself once on Linux, and says so (see `TRAIN_HELP`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import gin
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("config_file", [], "gin config file(s), applied in order")
flags.DEFINE_multi_string("config", [], "gin bindings, e.g. 'Trainer.steps = 100', applied after the files")
flags.DEFINE_string("output_dir", None, "where checkpoints, configs and logs go (rerunning resumes from it)")
flags.DEFINE_bool("multihost", False, "one process of a multi-host job: calls jax.distributed.initialize() first")
flags.DEFINE_string("coordinator_address", None, "with --multihost: host:port of process 0, which coordinates the "
                    "job (default: what JAX detects on a cluster: Slurm, Open MPI, Kubernetes, Cloud TPU)")
flags.DEFINE_integer("num_processes", None, "with --multihost: how many processes the job has (default: detected)")
flags.DEFINE_integer("process_id", None, "with --multihost: this process's index, 0 to num_processes - 1 "
                     "(default: detected)")
flags.DEFINE_bool("allow_config_change", False, "combinax-train: resume although the configuration differs from the "
                  "one the newest checkpoint was trained with (e.g. more steps, another learning rate)")
flags.DEFINE_bool("traceback", False, "show the Python traceback of an error, not only its message")
flags.DEFINE_multi_string("prompt", [], "combinax-decode: prompt text(s); several make a batch")
flags.DEFINE_integer("max_length", None, "combinax-decode: tokens to generate (default: up to the model's max_len, "
                     "the positions it was trained for; 60 for models without one)")
flags.DEFINE_float("temperature", 0.8, "combinax-decode: >= 0; 0 is greedy")
flags.DEFINE_integer("top_k", 40, "combinax-decode: sample among the k likeliest tokens (0: all)")
flags.DEFINE_float("top_p", None, "combinax-decode: sample among the likeliest tokens whose probabilities sum to "
                   "top_p, in (0, 1] (nucleus sampling)")
flags.DEFINE_bool("allow_longer", False, "combinax-decode: decode past the max_len the model was trained with. "
                  "Positions beyond it were never seen in training: sinusoidal and rotary encodings give them "
                  "values, but the model has not learned to use them, and text degrades; a learned position table "
                  "has no rows for them at all, so it is refused even then")
flags.DEFINE_integer("seed", 0, "combinax-decode: sampling seed")
flags.DEFINE_string("pretrained", None, "combinax-decode: a bundled pretrained LM to decode instead of a run's "
                    "(python -m combinax.pretrained list)")
flags.DEFINE_string("quantize", None, "combinax-decode: int8, q4 or q4_1 weights (quantized at load), or gguf (a "
                    "GGUF model's own packed blocks, with --pretrained)")
flags.DEFINE_string("draft", None, "combinax-decode: the output_dir of a small LM trained with the same tokenizer, "
                    "which proposes tokens for the model to check (speculative decoding)")
flags.DEFINE_integer("draft_k", 4, "combinax-decode: tokens the draft proposes at a time")
flags.DEFINE_string("template", None, "combinax-decode: how a prompt's text is put to the model, with {prompt} "
                    "for the text (default: a pretrained model's chat template, else the text as it is)")
flags.DEFINE_integer("samples", None, "combinax-decode: write this many samples to --output as a synthetic corpus "
                     "(JSON lines), cycling through the --prompt texts")
flags.DEFINE_string("output", None, "combinax-decode --samples: the .jsonl file to write (resumed if it exists)")
flags.DEFINE_integer("batch_size", 8, "combinax-decode --samples: samples made together")
flags.DEFINE_bool("interactive", False, "combinax-decode: read one prompt a line from the terminal and print each "
                  "answer as it is made (an empty line ends)")


TRAIN_HELP = """combinax-train: trains the model a gin config describes; rerunning resumes from the newest checkpoint.

  combinax-train --config_file=configs/transformer_lm_kjv.gin --output_dir=runs/lm [--config='Trainer.steps = 100']

Writes checkpoints, config.gin, operative_config.gin, metrics.jsonl and TensorBoard files to --output_dir, which
the run holds locked: a second run on it is refused, naming the first. Each checkpoint keeps the configuration it
was trained with; rerunning with another configuration stops, naming what differs (--allow_config_change resumes
anyway, e.g. with more steps or another learning rate).

Errors print one line (exit code 2 for a bad flag or configuration, 1 for a run that cannot go on); --traceback
shows the Python traceback too.

Several hosts: run the same command on each, adding --multihost --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I (or only --multihost where JAX detects the cluster). Each process reads its own shard of the data
(batch sizes stay global) and writes its own shards of each checkpoint; process 0 writes the logs.

Huge pages: on Linux, combinax-train restarts itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (and prints a
line saying so), unless GLIBC_TUNABLES already names it or the environment has COMBINAX_HUGE_PAGES=0. XLA:CPU
allocates its scratch buffer (hundreds of MB) afresh for every step; on 4 KiB pages the kernel faults in every page of
it every step, and on transparent huge pages a training step is ~10% faster (benchmarks/RESULTS.md).
"""

class ConfigError(SystemExit):
  """A bad flag or configuration: the command exits with its message and code 2, before anything is written."""


def parse_config(files, bindings, skip_unknown: bool = False):
  """Parses gin files and bindings; a bad binding, an unknown configurable or a value of the wrong type (checked
  against the parameter's annotation) exits with one line per problem, no traceback."""
  import combinax.train  # noqa: F401  (registers every configurable: models, layers' factories, data, optax)
  import combinax.models  # noqa: F401
  import combinax.growth  # noqa: F401
  import combinax.distill.topk  # noqa: F401
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


def train_main(argv):
  del argv
  if FLAGS.output_dir is None:
    raise ConfigError("combinax-train: --output_dir is required")
  start_multihost()
  parse_config(FLAGS.config_file, FLAGS.config)
  from combinax.train.trainer import train_job
  # Nothing is written here: the job locks --output_dir, and writes config.gin once the run is known to start (a
  # refused rerun leaves the run directory as it was).
  try:
    trainer = train_job()(output_dir=str(Path(FLAGS.output_dir)))
  except (ValueError, TypeError, RuntimeError) as e:
    if "gin" in str(e).lower() or "configurable" in str(e).lower() or "required" in str(e).lower():
      raise ConfigError(f"combinax-train: bad gin configuration: {e} (bind each in a config file or with "
                        "--config='NAME.parameter = value')") from None
    raise
  trainer.run(allow_config_change=FLAGS.allow_config_change)


def start_multihost() -> int:
  """With --multihost, joins the job (`jax.distributed.initialize`); returns this process's index (0 without)."""
  explicit = {"coordinator_address": FLAGS.coordinator_address, "num_processes": FLAGS.num_processes,
              "process_id": FLAGS.process_id}
  given = [f"--{name}" for name, value in explicit.items() if value is not None]
  if not FLAGS.multihost:
    if given:
      raise ConfigError(f"combinax-train: {', '.join(given)} only mean something with --multihost")
    return 0
  import jax
  # Processes on CPUs exchange gradients over TCP with gloo (GPUs and TPUs use their own links; this setting only
  # concerns the CPU backend). It must be set before the backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
  except (ValueError, RuntimeError) as e:
    raise ConfigError(f"combinax-train --multihost: cannot join the job ({type(e).__name__}: {e}); give "
                      "--coordinator_address=HOST:PORT of process 0, --num_processes and --process_id, or run "
                      "where JAX detects the cluster") from None
  return jax.process_index()


def decode_main(argv):
  """`combinax-decode` (combinax/train/decode_cli.py)."""
  from combinax.train.decode_cli import main
  return main(argv)


def _shown_help(help_text: str) -> bool:
  """Prints `help_text` and this module's flags if the command line asks for help (absl's own --help would show
  only the flags of the console script's stub)."""
  if not {"--help", "-h", "-help", "--helpshort"} & set(sys.argv[1:]):
    return False
  print(help_text + "\nflags:\n" + FLAGS.module_help(__name__))
  return True


def _known_error(error: Exception) -> bool:
  """True for the errors combinax raises to explain why a run cannot go on: their message is the whole story."""
  from combinax.data.base import DataError
  from combinax.data.corpora import UnknownCorpusError
  from combinax.growth.operator import GrowthError
  from combinax.layers.base import LayerError
  from combinax.pretrained.families import PretrainedError
  from combinax.train.checkpoints import CheckpointError
  from combinax.train.rundir import RunDirectoryError
  from combinax.train.trainer import TrainingError
  return isinstance(error, (DataError, UnknownCorpusError, GrowthError, LayerError, PretrainedError, CheckpointError, RunDirectoryError,
                            TrainingError, OSError))


def _run(main, program: str):
  """Runs `main` under absl, JAX's startup notes kept quiet. A ConfigError exits with its message (code 2); an
  error combinax raised to say why the run cannot go on prints its message alone (code 1), unless --traceback."""
  # "Unable to initialize backend 'tpu'" and its like are INFO lines of JAX's backend discovery, not ours.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

  def quiet_main(argv):
    # Orbax reports each stage of every save at absl's INFO level; combinax prints its own lines (--verbosity=0
    # shows Orbax's too).
    if not FLAGS["verbosity"].present:
      from absl import logging as absl_logging
      absl_logging.set_verbosity(absl_logging.WARNING)
    try:
      return main(argv)
    except Exception as e:
      if FLAGS.traceback or not _known_error(e):
        raise
      message = " ".join(str(e).split("\n"))
      print(f"{program}: {type(e).__name__}: {message}", file=sys.stderr, flush=True)
      sys.exit(1)

  try:
    app.run(quiet_main)
  except ConfigError as e:
    print(e.code if isinstance(e.code, str) else e, file=sys.stderr)
    sys.exit(2)


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


def _thp_mode() -> str | None:
  try:
    text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
  except OSError:
    return None
  return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def train():
  """Entry point of `combinax-train`."""
  if _shown_help(TRAIN_HELP):
    return
  environment = huge_pages_environment(os.environ, _thp_mode())
  if environment is not None:
    print(f"combinax-train: restarting with GLIBC_TUNABLES={environment['GLIBC_TUNABLES']} (transparent huge pages "
          "for XLA's per-step scratch buffers; COMBINAX_HUGE_PAGES=0 turns this off; --help says more)",
          file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, "-c", "from combinax.train.cli import train; train()",
                               *sys.argv[1:]], environment)
  _run(train_main, "combinax-train")


def decode():
  """Entry point of `combinax-decode`."""
  from combinax.train.decode_cli import DECODE_HELP
  if not _shown_help(DECODE_HELP):
    _run(decode_main, "combinax-decode")
