"""`GrowthRun`: train a small model, grow it with a trained LiGO operator, train the large model; one command.

    combinax-train --config_file=configs/grow_lm_kjv.gin --output_dir=runs/grow

Each phase is an ordinary `Trainer` run in its own directory, so each resumes where it stopped and logs its own
metrics and loss curve; a rerun skips the phases that are complete:

    small/    the small model's run (`small`, a Trainer of the gin scope `small/`)
    growth/   the operator's run: the `Grown` model, only `growth/*` trained, from small/'s final checkpoint
    grown/    the large model's params materialised from growth/'s final checkpoint: a plain checkpoint
    large/    the large model's run (`large`, a Trainer of the scope `large/`), starting from grown/; it holds a
              copy of the run's config.gin, so `combinax-decode --output_dir=<output_dir>/large` samples from it
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import gin
import jax
import optax

from combinax.growth.grow import TRAINABLE, Grown
from combinax.growth.operator import GrowthError, GrowthOptions
from combinax.store import checkpoints
from combinax.store.session import RunSession
from combinax.train import schedules
from combinax.train.step import split_batch
from combinax.train.trainer import Trainer, TrainingError


class GrowthRun:
  """Small run -> operator steps -> large run, under `output_dir` (see the module docstring).

  Args:
    small, large: functions giving a Trainer (in gin, `@small/Trainer` and `@large/Trainer`, not called); they get
      `output_dir` (and the large one `init_checkpoint`) from here.
    options: the operator's initialisation (`GrowthOptions`).
    steps: operator training steps (Adam at `learning_rate` on the large model's loss and data); 0 materialises the
      operator as initialised, which is how stacking, interpolation and Net2Net run as baselines.
    log_every: the operator phase's log, evaluation (with the large run's eval task) and checkpoint interval.

  The operator phase is the large run's Trainer and task (`large` called again, `dataclasses.replace` of its task),
  so every setting of the large run holds there too (data, loss, compute dtype, accumulation, a teacher, the mesh
  and sharding, the seed) except what defines the phase: the `Grown` model, Adam at `learning_rate` on the
  operator's params alone (`growth/*`: no clipping, weight decay, L2, freezing or per-group rates, which are the
  large run's), its steps and its log. A setting it cannot honour (a pipelined, fused-head or quantization-aware
  large run) is refused by name.
  """

  def __init__(self, small: Callable[..., Trainer] = gin.REQUIRED, large: Callable[..., Trainer] = gin.REQUIRED,
               output_dir: str | None = None, options: GrowthOptions = GrowthOptions(), steps: int = 100,
               learning_rate: float = 1e-3, log_every: int = 10):
    if output_dir is None:
      raise ValueError("GrowthRun: output_dir is required (pass --output_dir to combinax-train)")
    if steps < 0:
      raise ValueError(f"GrowthRun.steps: expected >= 0 operator steps, got {steps}")
    self.output_dir, self.options, self.steps = Path(output_dir), options, int(steps)
    self.learning_rate, self.log_every = float(learning_rate), int(log_every)
    self.session = RunSession(self.output_dir)
    self.small = small(output_dir=str(self.output_dir / "small"))
    self.large_trainer = large
    self.large = large(output_dir=str(self.output_dir / "large"), init_checkpoint=str(self.output_dir / "grown"))
    self.grown = Grown(self.small.model, self.large.model, options)
    if self.steps:
      self._check_operator_phase()

  def _check_operator_phase(self):
    """Refuses, by name, the large run's settings that the operator phase cannot honour."""
    task = self.large.task
    unfit = [(self.large.pipelined, "large/Trainer.pipeline_stages", "the Grown model runs unpipelined"),
             (task.fuse_loss, "large/TrainTask.fuse_loss = True", "the Grown model has no final Dense to fuse"),
             (bool(task.quantization_aware), "large/TrainTask.quantization_aware",
              "its rules name the large model's params, which the operator phase computes rather than trains")]
    for refused, name, why in unfit:
      if refused:
        raise GrowthError(f"GrowthRun: the operator phase cannot honour {name} ({why}); leave it out of the large "
                          "run, or grow without operator steps (GrowthRun.steps = 0)")

  def _complete(self, trainer: Trainer) -> Path | None:
    latest = trainer.session.latest()
    if latest is not None and checkpoints.read_manifest(latest)["step"] >= trainer.steps:
      return latest
    return None

  def _growth_trainer(self, small_checkpoint: Path) -> Trainer:
    """The operator phase: the large run's Trainer and task (see the class docstring)."""
    large = self.large
    task = dataclasses.replace(large.task, optimizer=optax.adam, schedule=schedules.constant(self.learning_rate),
                               clip_norm=None, weight_decay=0.0, l2_weight=0.0, frozen=(), lr_multipliers=None,
                               trainable=TRAINABLE)
    eval_task = large.eval_task
    if eval_task is not None:   # evaluate the grown model every log_every operator steps
      eval_task = type(eval_task)(data=eval_task.data, metrics=eval_task.metrics, eval_every=self.log_every,
                                  n_batches=eval_task.n_batches)
    return self.large_trainer(model=self.grown, task=task, eval_task=eval_task,
                              output_dir=str(self.output_dir / "growth"), steps=self.steps,
                              checkpoint_every=self.log_every, keep_checkpoints=1, best_metric=None,
                              log_every=self.log_every, init_checkpoint=str(small_checkpoint),
                              early_stopping_patience=None)

  def _materialise(self, small_checkpoint: Path):
    """Writes grown/: the large model's params and state, from the operator run (or the initial operator)."""
    inputs, _ = split_batch(self.grown, self.large.first_batch_signature())
    abstract_params, _ = jax.eval_shape(lambda: self.grown.init(jax.random.key(0), inputs))
    small_template = self.grown.small_params(abstract_params)
    # Every small param must come from the small run: a partial restore would grow random weights silently.
    small_params, _ = checkpoints.restore(small_checkpoint, small_template, prefix="params")
    if self.steps:
      operator_checkpoint = checkpoints.latest(self.output_dir / "growth")
      params, _ = checkpoints.restore(operator_checkpoint, abstract_params, prefix="params")
      source = str(operator_checkpoint)
    else:
      fresh, _ = jax.jit(lambda key: self.grown.init(key, inputs))(jax.random.key(self.large.seed))
      params, source = {**small_params, "growth": fresh["growth"]}, "the operator's initial setting"
    _, state = jax.jit(lambda key: self.large.model.init(key, inputs))(jax.random.key(self.large.seed))
    metadata = {"grown_from": str(small_checkpoint), "operator": source, "operator_steps": self.steps,
                "options": {k: str(v) for k, v in dataclasses.asdict(self.options).items()}}
    checkpoints.save(self.output_dir / "grown", 0, {"params": jax.jit(self.grown.large_params)(params),
                                                    "state": state}, metadata)

  def run(self, *, allow_config_change: bool = False):
    """Runs (or resumes) each phase that is not complete; returns the large run's final train state. Holds
    `output_dir`'s lock throughout; `allow_config_change` goes to each phase's `Trainer.run`."""
    with self.session.held():   # (each phase is a Trainer with a session of its own, in its own folder)
      final = self._run(allow_config_change)
      self.session.start({"config": gin.config_str()})   # the whole run's configuration, once every phase accepted it
      self.session.write_operative_config()
      return final

  def _run(self, allow_config_change: bool):
    small_checkpoint = self._complete(self.small)
    if small_checkpoint is None:
      _say(f"phase 1/3: the small model ({self.small.output_dir})")
      self.small.run(allow_config_change=allow_config_change)
      small_checkpoint = self._complete(self.small)
      if small_checkpoint is None:   # it stopped early
        small_checkpoint = self.small.session.latest()
    if small_checkpoint is None:
      raise TrainingError(f"GrowthRun: the small run left no checkpoint in {self.small.output_dir}")
    if self.large.session.latest() is None and checkpoints.latest(self.output_dir / "grown") is None:
      if self.steps:
        _say(f"phase 2/3: {self.steps} operator steps ({self.output_dir / 'growth'})")
        self._growth_trainer(small_checkpoint).run(allow_config_change=allow_config_change)
      self._materialise(small_checkpoint)
      _say(f"grown: {self.output_dir / 'grown'} holds the large model's params")
    # (the large run writes its config.gin, from which combinax-decode --output_dir=<output_dir>/large builds it)
    _say(f"phase 3/3: the large model ({self.large.output_dir})")
    return self.large.run(allow_config_change=allow_config_change)


def _say(line: str):
  print(f"growth: {line}", flush=True)
