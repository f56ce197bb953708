"""The run directory as a unit: one run at a time writes it (`locked`), and its files are replaced whole
(`write_atomically`).

Two `combinax-train` processes on one `--output_dir` would delete each other's checkpoints and interleave their
logs, so a run holds an exclusive lock on `<output_dir>/.lock` for as long as it runs. The lock is `flock`: the
kernel releases it when the holder exits, however it exits (SIGKILL included), so a stale lock never blocks a
rerun. The file names its holder (pid, host, command), which is what the refused run reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import jax

LOCK_FILE = ".lock"

# lock file -> [its open handle, depth]: a process that holds a directory's lock may take it again (the Trainers of a
# GrowthRun inside its own locked directory, a Trainer run twice), because flock would refuse a second descriptor.
_held: dict[Path, list] = {}


class RunDirectoryError(RuntimeError):
  """The output directory cannot be used: another run holds it, it cannot be created or written, or what it holds
  cannot be resumed by this run (every checkpoint damaged, another model, another configuration)."""


def prepare(directory: str | os.PathLike) -> Path:
  """Creates `directory` (and its parents), or says in one line why it cannot."""
  directory = Path(directory)
  try:
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
      raise PermissionError(f"[Errno 13] Permission denied: '{directory}'")
  except FileExistsError:
    raise RunDirectoryError(f"output directory {directory}: a file of that name is there, not a directory") from None
  except OSError as e:
    raise RunDirectoryError(f"output directory {directory} cannot be created or written: {e}") from None
  return directory


@contextlib.contextmanager
def locked(directory: str | os.PathLike, lock_file: str = LOCK_FILE):
  """Holds `directory`'s run lock (`lock_file` in it: one per artefact where a folder holds several, e.g. a
  synthetic corpus's `.<name>.lock`) for the `with` block; a `RunDirectoryError` names the holder if another
  process has it. On several processes, process 0 takes the lock and all of them stop if it could not. A directory
  that this call made, and that holds nothing but the lock when the block fails (a run refused as it starts: an
  unknown corpus, a bad split), is removed: a refused run leaves nothing behind."""
  made = not Path(directory).exists()
  directory = prepare(directory).resolve()
  key = directory / lock_file
  if key in _held:
    _held[key][1] += 1
    try:
      yield directory
    finally:
      _held[key][1] -= 1
    return
  error, handle = None, None
  if jax.process_index() == 0:
    try:
      handle = _acquire(directory, lock_file)
    except RunDirectoryError as e:
      error = e
  from combinax.store import checkpoints   # (imports Orbax lazily; this module stays light)
  if not checkpoints.all_processes_agree(error is None):
    if handle is not None:
      handle.close()
    raise error or RunDirectoryError(f"output directory {directory}: process 0 found it held by another run")
  _held[key] = [handle, 1]
  try:
    yield directory
  except BaseException:
    if made and handle is not None:
      _remove_if_only(directory, lock_file)
    raise
  finally:
    del _held[key]
    if handle is not None:
      handle.close()   # closing the descriptor releases the lock


def _remove_if_only(directory: Path, lock_file: str):
  """Removes `directory` if it holds nothing but `lock_file`. The lock file goes first, still held: a run that
  opened it before is refused as ever, and one that comes after makes its own (and keeps the directory)."""
  if [p.name for p in directory.iterdir()] == [lock_file]:
    (directory / lock_file).unlink(missing_ok=True)
    with contextlib.suppress(OSError):   # something arrived in between: it stays
      directory.rmdir()


def _acquire(directory: Path, lock_file: str):
  path = directory / lock_file
  try:
    handle = open(path, "a+")
  except OSError as e:
    raise RunDirectoryError(f"output directory {directory}: cannot open its lock file {path.name}: {e}") from None
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = _describe(handle.read())
    handle.close()
    raise RunDirectoryError(f"output directory {directory} is in use by another run ({holder}); wait for it to "
                            "finish or stop it, or give another --output_dir") from None
  handle.seek(0)
  handle.truncate()
  handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}) + "\n")
  handle.flush()
  return handle


def _describe(text: str) -> str:
  try:
    holder = json.loads(text)
    return f"pid {holder['pid']} on host {holder['host']}, since {holder['since']}: {holder['command']}"
  except (ValueError, KeyError, TypeError):   # the holder has not written its name yet
    return "a process that has just started"


def temporary_path(path: str | os.PathLike) -> Path:
  """Where `path` is written before it is renamed into place: `.<name>.tmp-<pid>` beside it. Every file or folder
  combinax replaces whole goes through a name of this one form, which `clear_leftovers` recognises."""
  path = Path(path)
  return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike):
  """Yields the temporary path (`temporary_path`) to write a file or a folder at; when the block ends without an
  error, it replaces `path` whole (a reader sees the old one or the new one); when it fails, it is removed."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temporary_path(path)
  _remove(tmp)   # a leftover of an earlier process with this pid
  try:
    yield tmp
    if tmp.is_dir() and path.is_dir():   # a folder cannot be renamed over a folder: the old one goes first
      _remove(path)
    os.replace(tmp, path)
  finally:
    _remove(tmp)


def write_atomically(path: str | os.PathLike, content: str | bytes):
  """Writes `content` (text as UTF-8, or bytes) to `path` through `replaced_atomically`; an OSError names `path`
  (a failed write says only why, e.g. "No space left on device", not which file)."""
  try:
    with replaced_atomically(path) as tmp:
      (tmp.write_bytes if isinstance(content, bytes) else functools.partial(tmp.write_text, encoding="utf-8"))(content)
  except OSError as e:
    if e.filename is not None or e.errno is None:
      raise
    raise type(e)(e.errno, e.strerror, str(path)) from None


def _remove(path: Path):
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  else:
    path.unlink(missing_ok=True)


def clear_leftovers(directory: str | os.PathLike, names: str = "*"):
  """Removes what `replaced_atomically` calls interrupted by a kill left in `directory` for the files or folders
  matching `names` (call it holding the lock that guards them)."""
  for leftover in Path(directory).glob(f".{names}.tmp-*"):
    _remove(leftover)


# --- What a run was trained with ------------------------------------------------------------------------------


def bindings(config: str) -> dict[str, str]:
  """`gin.config_str()`'s text as {binding: value}, each value's whitespace normalised (a binding's value may span
  several lines: they start with a space or a closing bracket)."""
  found, key = {}, None
  for line in config.splitlines():
    if not line.strip() or line.startswith("#"):
      continue
    if line[0] in " \t)]}" and key is not None:
      found[key] += " " + line.strip()
      continue
    key, _, value = line.partition(" = ")
    found[key.strip()] = value.strip()
  return {k: " ".join(v.split()) for k, v in found.items()}


def config_differences(saved: str, now: str) -> list[str]:
  """One line per binding that differs between two gin configurations: `name: <saved> -> <now>`."""
  before, after = bindings(saved), bindings(now)
  return [f"{key}: {before.get(key, '(unset)')} -> {after.get(key, '(unset)')}"
          for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


def model_differences(saved: str, now: str, limit: int = 6) -> list[str]:
  """The lines of `str(model)` that differ (at most `limit` of each side), as `- saved` / `+ now`."""
  import difflib
  changed = [line for line in difflib.ndiff(saved.splitlines(), now.splitlines()) if line[:2] in ("- ", "+ ")]
  return [" ".join(line.split()).rstrip(" [") for line in changed[:2 * limit]]
