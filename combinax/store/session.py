"""One long-running job's session on its run directory: what `Trainer`, `FederatedRun` and `GrowthRun` share.

    session = RunSession(output_dir, keep=3, checkpoint_every=500)
    with session.held():                        # the lock; leftovers of killed saves and writes cleared
      resumed = session.resume(fresh, record, allow_change=False)   # newest whole checkpoint, or refuse
      start = resumed.tree if resumed else fresh
      session.start(record)                     # config.gin: the run is known to start
      logger = session.logger(total, start_step)
      ... session.save(step, tree, metadata, record) when session.due(step, total) ...

A job gives its `record`, what the run is: `{"config": gin.config_str(), "model": str(model), ...}` plus
fingerprints of what else must not change under it (a model's parameter structure, a federated run's client data),
named in `fingerprints`. Every checkpoint keeps the record it was trained with (`metadata["run"]`), so a resume
under another configuration is refused, naming each difference, unless the caller allows it, or the only difference
is a raised length (`extendable`, e.g. `Trainer.steps`): "train longer" resumes with a note.

The same cases behave the same for every job: a directory another run holds, a checkpoint of another model, a
changed configuration, and a directory whose every checkpoint is damaged (each is set aside as `*.damaged`, and the
run stops naming every reason rather than start again over them) raise a `RunDirectoryError` whose message says
what to do, and leave the directory as it was.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, NamedTuple

import gin
import jax

from combinax.store import checkpoints, rundir
from combinax.store.logging import QuietLogger, RunLogger
from combinax.store.rundir import RunDirectoryError

MODEL_FINGERPRINT = {"model_fingerprint": "the model"}


class Resumed(NamedTuple):
  tree: Any               # the restored tree, in the template's structure and shardings
  metadata: dict          # the checkpoint's shared metadata (metrics, best_history, run, ...)
  host: dict | None       # this process's metadata (e.g. its data position); None if another process count saved it
  checkpoint: Path
  notes: list[str]        # for the log: checkpoints set aside, an allowed change of configuration


class RunSession:
  """A run directory as one job uses it: lock, leftovers, resume-or-refuse, record, save cadence, logs.

  Args:
    directory: the run directory (created if missing).
    keep, best_metric, best_mode: the checkpoints kept (`CheckpointManager`).
    checkpoint_every: the save cadence `due` follows.
    fingerprints: {record key: what it names}: entries of the record that must equal the checkpoint's to resume,
      beside the gin configuration (default: the model's fingerprint).
    extendable: gin bindings that give the run's length (e.g. "Trainer.steps", in any scope): a rerun that only
      raises them extends the run, without being allowed a change; lowering them, or any other difference, is one.
  """

  def __init__(self, directory: str | Path, *, keep: int = 3, best_metric: str | None = None,
               best_mode: str = "min", checkpoint_every: int = 1, fingerprints: dict[str, str] | None = None,
               extendable: tuple[str, ...] = ()):
    self.directory = Path(directory)
    self.manager = checkpoints.CheckpointManager(self.directory, keep, best_metric=best_metric, mode=best_mode,
                                                 clean_up=False)
    self.checkpoint_every = int(checkpoint_every)
    self.fingerprints = dict(MODEL_FINGERPRINT if fingerprints is None else fingerprints)
    self.primary = jax.process_index() == 0
    self.extendable = tuple(extendable)

  @contextlib.contextmanager
  def held(self):
    """Holds the directory's lock for the block (`rundir.locked`: another run there is refused, naming it), after
    clearing what killed saves and writes left; on the way out, the save in flight is committed."""
    with rundir.locked(self.directory):
      self.manager.clear_leftovers()
      if self.primary:
        rundir.clear_leftovers(self.directory)
      try:
        yield self
      except BaseException:
        # The error that stopped the run is the one to tell: a save in flight failing too (a full disk fails
        # both) does not take its place.
        with contextlib.suppress(checkpoints.CheckpointError):
          self.manager.close()
        raise
      self.manager.close()

  # --- Resuming -------------------------------------------------------------------------------------------------

  def differences(self, saved: dict, record: dict) -> list[str]:
    """What differs between the run a checkpoint records and this one: each gin binding, then each fingerprint."""
    changes = rundir.config_differences(saved.get("config", ""), record["config"])
    for key, name in self.fingerprints.items():
      if saved.get(key) == record.get(key):
        continue
      if key == "model_fingerprint":
        changes.append(f"{name}: " + "; ".join(rundir.model_differences(saved.get("model", ""), record["model"])
                                               or ["the same text, other params"]))
      else:
        changes.append(name)
    return changes

  def _raised_lengths(self, saved: dict, record: dict) -> list[str]:
    """The `extendable` bindings that this run raises (integers, saved -> now), as `name: saved -> now`."""
    before, after = rundir.bindings(saved.get("config", "")), rundir.bindings(record["config"])
    raised = []
    for key in sorted(set(before) & set(after)):
      if key.rpartition("/")[2] in self.extendable and before[key] != after[key]:
        try:
          if int(after[key]) > int(before[key]):
            raised.append(f"{key}: {before[key]} -> {after[key]}")
        except ValueError:   # a macro or an expression: not a plain length, so compared as any binding
          pass
    return raised

  def _compare(self, checkpoint: Path, saved: dict | None, record: dict, allow_change: bool) -> list[str]:
    if not saved:   # saved before checkpoints recorded their run (combinax 0.1, 0.2)
      return [f"{checkpoint.name} records no configuration: resuming without comparing it with this one"]
    changes = self.differences(saved, record)
    if not changes:
      return []
    raised = self._raised_lengths(saved, record)
    if len(raised) == len(changes):   # the run only goes on for longer: the most common rerun there is
      return [f"extending the run from {checkpoint.name}: " + "; ".join(raised)]
    if allow_change:
      return [f"resuming {checkpoint.name} with a changed configuration (allowed): " + "; ".join(changes)]
    raise RunDirectoryError(
        f"{self.directory}: this configuration differs from the one {checkpoint.name} was trained with: "
        + "; ".join(changes) + ". Nothing was changed in the run directory. Rerun with the configuration it was "
        "trained with (kept in each checkpoint, and in config.gin), or allow the change deliberately "
        "(--allow_config_change, or run(allow_config_change=True)), or use another --output_dir")

  def resume(self, fresh: Any, record: dict, *, allow_change: bool = False) -> Resumed | None:
    """The newest checkpoint that loads whole into `fresh`'s structure, or None when the directory holds none.

    A checkpoint directory without its manifest, or a damaged checkpoint, is set aside (`*.damaged`) and the one
    before it is tried; when every checkpoint is damaged, the run stops rather than start again over them. A
    checkpoint of another model, or of another configuration (`record`; unless `allow_change`), stops it too."""
    notes, damaged = [], []
    for checkpoint in self.manager.incomplete():
      aside = self.manager.set_aside(checkpoint)
      notes.append(f"checkpoint {checkpoint.name} cannot be used, set aside as {aside.name}: its manifest is missing")
    for checkpoint in reversed(self.manager.checkpoints()):
      error = None
      try:
        tree, metadata = checkpoints.restore(checkpoint, fresh)
        host = checkpoints.read_host_metadata(checkpoint)
      except checkpoints.CheckpointMismatchError as e:   # not damage: another model's run (same on all processes)
        saved = checkpoints.read_manifest(checkpoint)["metadata"].get("run")
        changes = f" (what differs: {'; '.join(self.differences(saved, record))})" if saved else ""
        raise RunDirectoryError(f"{e}. {self.directory} holds a run of another model or optimizer{changes}: run this "
                                "one in a new --output_dir, or resume with the configuration that run was trained "
                                "with") from None
      except checkpoints.CheckpointError as e:
        error = e
      # Every process takes the same decision, even when only one of them found its own part damaged.
      if not checkpoints.all_processes_agree(error is None):
        error = error or checkpoints.CheckpointError(f"{checkpoint}: another process found its part damaged")
        aside = self.manager.set_aside(checkpoint)
        damaged.append(f"{checkpoint.name}: {error}")
        notes.append(f"checkpoint {checkpoint.name} cannot be used, set aside as {aside.name}: {error}")
        continue
      notes += self._compare(checkpoint, metadata.get("run"), record, allow_change)
      return Resumed(tree, metadata, host, checkpoint, notes)
    if damaged:
      raise RunDirectoryError(f"{self.directory}: no checkpoint there loads whole, so the run stops rather than start "
                              "again from scratch over them (each was set aside as *.damaged; move them away to "
                              "start afresh): " + "; ".join(damaged))
    return None

  # --- Running --------------------------------------------------------------------------------------------------

  def start(self, record: dict):
    """Records that the run starts (it resumed or begins): its configuration replaces config.gin (each checkpoint
    keeps its own), written only now, so that a refused rerun leaves the directory as it was."""
    if self.primary:
      rundir.write_atomically(self.directory / "config.gin", record["config"])

  def logger(self, total: int, start: int = 0, progress: bool | None = None) -> RunLogger | QuietLogger:
    """The run's log (progress, metrics.jsonl, TensorBoard) on process 0; nothing on the others."""
    return RunLogger(self.directory, total, start, progress=progress) if self.primary else QuietLogger()

  def due(self, step: int, total: int) -> bool:
    """Whether `step` is one to save at: every `checkpoint_every`, and the last."""
    return step % self.checkpoint_every == 0 or step == total

  def save(self, step: int, tree: Any, metadata: dict, record: dict, host_metadata: dict | None = None):
    """Starts an asynchronous save of `tree` as checkpoint `step` (see `CheckpointManager.save`) with the run's
    `record` in its metadata, and writes the operative configuration (every value the run used) beside it: kept for
    the record, while resumes compare the given one, so that a default changed by an upgrade does not refuse them."""
    operative = gin.operative_config_str()
    self.manager.save(step, tree, {**metadata, "run": {**record, "operative_config": operative}},
                      host_metadata=host_metadata)
    self.write_operative_config(operative)

  def write_operative_config(self, operative: str | None = None):
    """operative_config.gin: every value the run has used so far (process 0)."""
    if self.primary:
      rundir.write_atomically(self.directory / "operative_config.gin",
                              gin.operative_config_str() if operative is None else operative)

  def latest(self) -> Path | None:
    return self.manager.latest()
