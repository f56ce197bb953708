"""The training loop: `TrainTask` (data, loss, optimizer), `EvalTask` (data, metrics), `Trainer` (the loop).

`Trainer.run()` resumes from the newest checkpoint in `output_dir` when there is one, and then continues exactly as
an uninterrupted run would: params, optimizer state, step, rng and the data pipeline's position are all in the
checkpoint. It checks for a non-finite loss only when it logs or saves (no host sync on other steps), stops with a
`TrainingError` naming the first bad step, and never saves a state that saw one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from combinax import data as cx_data
from combinax import layers as cl
from combinax import quant, sharding
from combinax.data.hosts import sharded_position
from combinax.layers.base import Layer, LayerError
from combinax.parallel import Pipeline
from combinax.paths import leaves_with_paths, matches, paths, subtree, with_subtree
from combinax.store import checkpoints
from combinax.store.logging import plot_loss_curve
from combinax.store.session import RunSession
from combinax.train import objective, regularization, schedules
from combinax.train.step import TrainState, TrainStep, frozen_mask, loss_inputs, split_batch


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. a non-finite loss); the message names the step and the last good checkpoint."""


def _scale_by_pattern(multipliers: dict[str, float]) -> optax.GradientTransformation:
  """Multiplies the updates of parameters whose path matches a pattern (first match wins) by its factor."""
  def factors(tree):
    flat = leaves_with_paths(tree)
    values = [next((f for pattern, f in multipliers.items() if matches(path, pattern)), 1.0) for path, _ in flat]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), values)

  def update(updates, state, params=None):
    return jax.tree_util.tree_map(lambda u, f: u * f, updates, factors(updates)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@dataclasses.dataclass(frozen=True, eq=False)
class TrainTask:
  """What to train on and how: the data pipeline (a stage such as `data.Serial(...)`, called to get a stream of
  batches), the loss layer, the optax optimizer (a factory taking `learning_rate`), the schedule, clipping, weight
  decay (decoupled, for optimizers that take `weight_decay`), L2, accumulation, freezing (`frozen` patterns, or
  only the `trainable` ones train), per-group rates (`lr_multipliers`), and the transforms of the step's loss
  (`make_objective`): `fuse_loss` (the model's final Dense and a cross-entropy loss computed together: faster for
  language models), `quantization_aware` (`combinax.quant` rules, e.g. `[("blocks/*kernel", ("int8", 32))]`: the
  model trains and evaluates with those weights as their quantized form computes, the gradients reaching the float
  weights straight through, so that it is fine-tuned for decoding with quantized weights), and distillation: a
  `teacher` (a model with the student's vocabulary, or a function of `mode`) whose params come from
  `teacher_checkpoint` runs in each step, its outputs going to the loss layer after the model's
  (`cl.DistillationLoss`). Frozen; `dataclasses.replace(task, ...)` makes a variant (as `GrowthRun` does)."""

  data: Callable = gin.REQUIRED
  loss_layer: Layer | None = None
  optimizer: Callable = optax.adamw
  schedule: Callable | None = None
  clip_norm: float | None = 1.0
  weight_decay: float = 0.0
  l2_weight: float = 0.0
  accumulate_steps: int = 1
  frozen: Iterable[str] = ()
  lr_multipliers: dict[str, float] | None = None
  trainable: Iterable[str] | None = None
  fuse_loss: bool = False
  quantization_aware: Iterable[tuple] = ()
  teacher: Layer | Callable | None = None
  teacher_checkpoint: str | None = None

  def __post_init__(self):
    if (self.teacher is None) != (self.teacher_checkpoint is None):
      raise ValueError("TrainTask: distillation needs both teacher (a model, or a function of mode) and "
                       "teacher_checkpoint (a run directory or a checkpoint holding its params)")
    normal = dict(quantization_aware=tuple(tuple(rule) for rule in self.quantization_aware),
                  loss_layer=self.loss_layer if self.loss_layer is not None else cl.WeightedCategoryCrossEntropy(),
                  schedule=self.schedule if self.schedule is not None else schedules.constant(1e-3),
                  weight_decay=float(self.weight_decay), l2_weight=float(self.l2_weight), frozen=tuple(self.frozen),
                  trainable=None if self.trainable is None else tuple(self.trainable),
                  lr_multipliers=dict(self.lr_multipliers or {}))
    for name, value in normal.items():
      object.__setattr__(self, name, value)   # (a frozen dataclass normalises its fields this way)

  def make_optimizer(self, params) -> optax.GradientTransformation:
    kwargs = {"learning_rate": self.schedule}
    accepted = inspect.signature(self.optimizer).parameters
    if self.weight_decay:
      if "weight_decay" not in accepted:
        raise ValueError(f"TrainTask: {getattr(self.optimizer, '__name__', self.optimizer)} takes no weight_decay; "
                         "use optax.adamw (decoupled) or l2_weight (a loss penalty)")
      kwargs["weight_decay"] = self.weight_decay
      if "mask" in accepted:
        kwargs["mask"] = regularization.decay_mask  # a function: it also sees the trainable subset below
    parts = [optax.clip_by_global_norm(self.clip_norm)] if self.clip_norm else []
    parts.append(self.optimizer(**kwargs))
    if self.lr_multipliers:
      parts.append(_scale_by_pattern(self.lr_multipliers))
    frozen = frozen_mask(params, self.frozen, self.trainable)
    if frozen is None:
      return optax.chain(*parts)
    # Frozen params get no optimizer state and no update work (e.g. LoRA: Adam moments of the adapters only).
    return optax.masked(optax.chain(*parts), jax.tree_util.tree_map(lambda f: not f, frozen))


  def make_objective(self, model: Layer, inputs_signature, compute_dtype=None) -> objective.Objective:
    """The step's loss for `model` as this task composes it: the loss layer (fused with the model's head, with
    `fuse_loss`), the model in `compute_dtype`, the teacher beside it, on quantization-aware weights."""
    if self.fuse_loss and compute_dtype is not None:
      raise ValueError(f"fuse_loss=True computes the logits in float32; it cannot run with compute_dtype="
                       f"{jnp.dtype(compute_dtype).name}: set one of them")
    if self.fuse_loss and self.teacher is not None:
      raise ValueError("fuse_loss=True computes the model's loss from its last activations alone; a teacher's "
                       "loss needs its logits: set one of them")
    base = (objective.fused_head if self.fuse_loss else objective.plain)(model, self.loss_layer)
    transforms = [objective.compute_dtype(compute_dtype)] if compute_dtype is not None else []
    if self.teacher is not None:
      transforms.append(objective.teacher(*self._teacher(model, inputs_signature)))
    if self.quantization_aware:
      transforms.append(objective.quantization_aware(self.quantization_aware))
    return objective.chain(base, *transforms)

  def _teacher(self, model: Layer, inputs_signature):
    """The teacher in eval mode and its params from `teacher_checkpoint`; its outputs must have the student's
    shape: one tokenizer, one vocabulary."""
    teacher = self.teacher if isinstance(self.teacher, Layer) else self.teacher(mode="eval")
    template = jax.eval_shape(lambda: teacher.init(jax.random.key(0), inputs_signature)[0])
    ours, theirs = model.output_signature(inputs_signature), teacher.output_signature(inputs_signature)
    if ours != theirs:
      raise TrainingError(f"the teacher's outputs {theirs} differ from the student's {ours}: distillation needs the "
                          "teacher's vocabulary (the same tokenizer)")
    source = checkpoints.checkpoint_or_latest(self.teacher_checkpoint)
    if source is None:
      raise TrainingError(f"teacher_checkpoint {self.teacher_checkpoint}: no checkpoint there")
    return teacher, checkpoints.restore(source, template, prefix="params")[0]


class EvalTask:
  """Evaluation every `eval_every` steps on `n_batches` batches of `data` (a fresh stream each time, so every
  evaluation sees the same batches): `metrics` maps names to layers taking (outputs, *rest of the batch)."""

  def __init__(self, data: Callable = gin.REQUIRED, metrics: dict[str, Layer] | None = None, eval_every: int = 100,
               n_batches: int = 10):
    self.data, self.eval_every, self.n_batches = data, int(eval_every), int(n_batches)
    self.metrics = metrics if metrics is not None else {
        "loss": cl.WeightedCategoryCrossEntropy(), "accuracy": cl.WeightedCategoryAccuracy()}


def train_job(job: Callable | None = None) -> Callable:
  """What `combinax-train` runs: the `Trainer`, or the job a config names (`train_job.job = @GrowthRun`); it is
  called with `output_dir` and has a `run()` method."""
  return job if job is not None else Trainer


def sample_setup(model=gin.REQUIRED, tokenizer=None):
  """What `combinax-decode` needs from the config: the model function and the tokenizer (bind them in the recipe)."""
  return model, tokenizer


class Trainer:
  """Trains `model` (a layer, or a function of `mode` such as a gin-configured `TransformerLM`) on `task`.

  Args:
    output_dir: checkpoints (`step_XXXXXXXX/`), `config.gin`, `metrics.jsonl`, TensorBoard files, `loss_curve.png`.
    steps: train until this many updates in total (a resumed run goes on from its checkpoint).
    checkpoint_every, keep_checkpoints, best_metric ("eval/<name>", lower is better unless `best_mode="max"`).
    log_every: steps between logs (the only host syncs); seed: params init, dropout and data order keys.
    model_parallel, sharding_rules: the mesh's `model` axis size and "replicated", "fsdp", "tensor" or a rule list.
    pipeline_stages, microbatches: train with GPipe (`combinax.parallel.Pipeline`): `model`, a function of `mode`
      such as a gin-configured `TransformerLM`, is built with them; the mesh gets a `stage` axis of
      `pipeline_stages` device groups, and the stacked blocks (and their optimizer state) are split over it.
    compute_dtype: "bfloat16" for bf16 compute with float32 master params.
    init_checkpoint: a checkpoint directory whose params start a new run (fine-tuning), when not resuming; or
      {params path: checkpoint} to start parts of the model from different runs: "" the whole model, "image" the
      params under `image/` from a checkpoint of the vision tower alone (its params the model lacks, such as its
      own head, unused and said so in the log).
    early_stopping_patience: stop after this many evaluations without improving `best_metric`.
  """

  def __init__(self, model: Layer | Callable = gin.REQUIRED, task: TrainTask = gin.REQUIRED,
               eval_task: EvalTask | None = None, output_dir: str | None = None, steps: int = 1000, seed: int = 0,
               checkpoint_every: int = 500, keep_checkpoints: int = 3, best_metric: str | None = None,
               best_mode: str = "min", log_every: int = 50, model_parallel: int = 1,
               sharding_rules: str | list = "replicated", compute_dtype: str | None = None,
               init_checkpoint: str | dict | None = None, early_stopping_patience: int | None = None,
               progress: bool | None = None, pipeline_stages: int = 1, microbatches: int = 1):
    if output_dir is None:
      raise ValueError("Trainer: output_dir is required (pass --output_dir to combinax-train)")
    for name, value in (("pipeline_stages", pipeline_stages), ("microbatches", microbatches)):
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Trainer.{name}: expected a positive int, got {value!r}")
    pipeline = {} if pipeline_stages == 1 else {"pipeline_stages": pipeline_stages, "microbatches": microbatches}
    if pipeline and isinstance(model, Layer):
      raise ValueError("Trainer: pipeline_stages needs the model as a function of mode (e.g. @TransformerLM in gin), "
                       "which the Trainer builds with pipeline_stages and microbatches, and places on a mesh with "
                       "a 'stage' axis")
    # One model for training and evaluation: `apply(train=...)` decides dropout and batch statistics ("train" and
    # "eval" build the same model).
    try:
      self.model = model(mode="train", **pipeline) if not isinstance(model, Layer) else model
    except LayerError as e:   # the Pipeline's own check, said as the setting the user gave (Trainer's, not its)
      if not (pipeline and isinstance(e.layer, Pipeline) and e.layer.n_layers % pipeline_stages):
        raise
      raise ValueError(f"Trainer.pipeline_stages: expected a divisor of the model's {e.layer.n_layers} layers, got "
                       f"{pipeline_stages}") from None
    self.task, self.eval_task, self.output_dir = task, eval_task, Path(output_dir)
    self.steps, self.seed, self.log_every = int(steps), int(seed), int(log_every)
    self.init_checkpoint = init_checkpoint
    self.best_metric, self.patience, self.progress = best_metric, early_stopping_patience, progress
    # (Leftovers of killed saves are cleared in `run`, holding the directory's lock: not here, where another run
    # may be writing.)
    self.session = RunSession(self.output_dir, keep=keep_checkpoints, best_metric=best_metric, best_mode=best_mode,
                              checkpoint_every=checkpoint_every, extendable=("Trainer.steps",))
    self.pipelined, self.microbatches = bool(pipeline), microbatches
    rules = {"replicated": [], "fsdp": sharding.fsdp_rules(), "tensor": sharding.tensor_parallel_rules()}
    self.rules = ((sharding.pipeline_rules() if pipeline else []) +
                  (rules[sharding_rules] if isinstance(sharding_rules, str) else list(sharding_rules)))
    self.mesh = sharding.make_mesh(model_parallel, pipeline_stages=pipeline_stages)
    self.compute_dtype = jnp.dtype(compute_dtype) if compute_dtype else None
    self._eval_fn = jax.jit(self._eval_metrics) if eval_task is not None else None

  # --- Setup ------------------------------------------------------------------------------------------------

  def first_batch_signature(self, stream=None):
    """The shapes of the first batch of `stream` (default: a fresh one of the task's data), read without moving it
    (its position is saved and put back)."""
    stream = stream if stream is not None else self.task.data()
    position = stream.get_state()
    batch = next(stream)
    stream.set_state(position)
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tuple(batch))

  def _build(self, stream) -> tuple[TrainStep, TrainState]:
    """The jitted step for batches like the stream's first, and a fresh train state for it."""
    signature = self.first_batch_signature(stream)
    inputs_sig, _ = split_batch(self.model, signature)
    abstract_params = jax.eval_shape(lambda: self.model.init(jax.random.key(0), inputs_sig)[0])
    loss = self.task.make_objective(self.model, inputs_sig, self.compute_dtype)
    step_fn = TrainStep(self.model, loss, self.task.make_optimizer(abstract_params), mesh=self.mesh,
                        rules=self.rules, l2_weight=self.task.l2_weight, accumulate_steps=self.task.accumulate_steps,
                        frozen=self.task.frozen, trainable=self.task.trainable)
    return step_fn, step_fn.init(jax.random.key(self.seed), signature)

  def _record(self, fresh: TrainState) -> dict:
    """What this run is, saved in every checkpoint: the gin configuration it was given, the model as `str` shows it,
    and a fingerprint of the model and its params' structure (paths, shapes, dtypes)."""
    structure = [(path, leaf.shape, str(leaf.dtype)) for path, leaf in leaves_with_paths(fresh.params)]
    model = str(self.model)
    fingerprint = hashlib.sha256(repr((model, structure)).encode()).hexdigest()
    return {"config": gin.config_str(), "model": model, "model_fingerprint": fingerprint}

  def _restore(self, stream, fresh: TrainState, record: dict,
               allow_change: bool) -> tuple[TrainState, list, list]:
    """(the state to start from, the best-metric history so far, notes for the log): the newest checkpoint in
    `output_dir` that loads whole (`RunSession.resume`, with the stream put back at its position), else
    `init_checkpoint`'s params, else `fresh`."""
    resumed = self.session.resume(fresh, record, allow_change=allow_change)
    if resumed is not None:
      notes = resumed.notes
      # A global order's position is the same on every host, saved once: it resumes on any number of hosts. A
      # per-host position (`combinax.data.hosts`) is in each host's own record, absent when another number saved it.
      position = resumed.metadata.get("data")
      if position is None and resumed.host is not None:
        position = resumed.host.get("data")
      if position is not None and not stream.reads_per_host() and sharded_position(
          cx_data.loads_state(position)):
        position = None
        notes.append(f"{resumed.checkpoint.name} holds the data positions of hosts that each read their own shard "
                     "(as every source was read before 2026-12): params, optimizer state, step and rng are "
                     "restored, but the data pipeline, which now reads one global order, starts again")
      elif position is None:
        saved_by = checkpoints.read_manifest(resumed.checkpoint).get("processes", 1)
        notes.append(f"{resumed.checkpoint.name} was saved by {saved_by} process(es) and this run has "
                     f"{jax.process_count()}: params, optimizer state, step and rng are restored, but the data "
                     "pipeline, which each host reads per shard, starts again from its beginning")
      if position is not None:
        stream.set_state(cx_data.loads_state(position))
      return resumed.tree, resumed.metadata.get("best_history", []), notes
    if self.init_checkpoint:  # fine-tuning: the params and model state of other runs, nothing else
      params, model_state, notes = self._start_from(fresh)
      return fresh._replace(params=params, state=model_state), [], notes
    return fresh, [], []

  def _start_from(self, fresh: TrainState) -> tuple[Any, Any, list]:
    """(params, model state, notes) of `init_checkpoint`: each checkpoint's params and state at its place in the
    model; the notes name the params no checkpoint had (a new head, adapters) and those a part's checkpoint has
    beyond that part (its own head)."""
    sources = self.init_checkpoint if isinstance(self.init_checkpoint, Mapping) else {"": self.init_checkpoint}
    params, model_state, notes = fresh.params, fresh.state, []
    restored, found = set(), {}
    for where in sorted(sources, key=len):   # the whole model first, then its parts over it
      source = found[where] = checkpoints.checkpoint_or_latest(sources[where])
      if source is None:
        raise TrainingError(f"init_checkpoint {sources[where]}: no checkpoint there")
      if where == "":
        params, kept = checkpoints.restore_matching(source, params, prefix="params")
        model_state, _ = checkpoints.restore_matching(source, model_state, prefix="state")
        restored |= set(paths(params)) - set(kept)
        continue
      part = subtree(params, where)
      if part is None:
        raise TrainingError(f"init_checkpoint[{where!r}]: the model has no params under {where}/; it has "
                            f"{sorted(params) if isinstance(params, dict) else type(params).__name__}")
      loaded, kept = checkpoints.restore_matching(source, part, prefix="params", skip_unused=True)
      params = with_subtree(params, where, loaded)
      restored |= {f"{where}/{p}" for p in set(paths(loaded)) - set(kept)}
      saved = [e["path"][len("params/"):] for e in checkpoints.read_manifest(source)["leaves"]
               if e["path"].startswith("params/")]
      unused = sorted(set(saved) - set(paths(part)))
      if unused:
        notes.append(f"init_checkpoint[{where!r}] {source}: {len(unused)} of its params are not in the model's "
                     f"{where}/ and are not used: {', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}")
    kept = [p for p in paths(params) if p not in restored]
    if kept:   # a new head, adapters
      named = found[""] if list(found) == [""] else {where: str(path) for where, path in found.items()}
      notes.insert(0, f"init_checkpoint {named}: {len(kept)} params not in it keep their "
                      f"initialisation: {', '.join(kept[:8])}{' ...' if len(kept) > 8 else ''}")
    return params, model_state, notes

  # --- The loop ---------------------------------------------------------------------------------------------

  def _check_finite(self, train_state: TrainState):
    bad = int(train_state.bad_step)
    if bad >= 0:
      self.session.manager.wait()
      latest = self.session.latest()
      raise TrainingError(f"step {bad + 1}: the loss or the gradients are not finite (NaN/inf); the run stopped "
                          f"there. The last good checkpoint is {latest or 'none (no checkpoint was saved)'}.")

  def _save(self, train_state: TrainState, stream, metrics: dict, best_history: list, record: dict):
    """Starts an asynchronous save (the files are written while training goes on) with the data position (once
    for a global order, each host its own for a per-host pipeline) and the run's configuration (`_record`)."""
    self._check_finite(train_state)
    position = {"data": cx_data.dumps_state(stream.get_state())}
    per_host = stream.reads_per_host()
    self.session.save(int(train_state.step), train_state,
                      {"metrics": metrics, "best_history": best_history, **({} if per_host else position)},
                      record, host_metadata=position if per_host else {})

  def _eval_metrics(self, params, model_state, batch) -> dict:
    """Each metric of the eval task on one batch (jitted once, in `__init__`)."""
    inputs, rest = split_batch(self.model, batch)
    if self.task.quantization_aware:   # the model as it will decode: its quantized weights
      params = quant.fake_quantize(params, self.task.quantization_aware)
    outputs, _ = self.model.apply(params, model_state, inputs, train=False)
    return {name: layer.apply({}, {}, loss_inputs(layer, self.model, outputs, rest))[0]
            for name, layer in self.eval_task.metrics.items()}

  def evaluate(self, params, model_state) -> dict:
    """Mean of each metric over the eval task's batches."""
    if self._eval_fn is None:
      raise TrainingError("Trainer.evaluate: the Trainer has no eval_task")
    totals, count = {}, 0
    stream = self.eval_task.data()
    for _, batch in zip(range(self.eval_task.n_batches), stream):
      with sharding.running_on(self.mesh):
        values = self._eval_fn(params, model_state, sharding.shard_batch(tuple(batch), self.mesh))
      totals = {k: totals.get(k, 0.0) + float(v) for k, v in values.items()}
      count += 1
    if not count:
      raise TrainingError("EvalTask: its data produced no batch")
    return {k: v / count for k, v in totals.items()}

  def run(self, *, allow_config_change: bool = False) -> TrainState:
    """Trains until `steps` updates; returns the final train state. On several processes (`jax.distributed`), every
    process runs this; process 0 alone writes logs, metrics and TensorBoard files.

    The run holds `output_dir`'s lock throughout (another run there is refused, naming this one). A resumed run
    whose gin configuration or model differs from its checkpoint's stops, naming the difference, unless
    `allow_config_change` (e.g. another learning rate); raising only `Trainer.steps` (bound in gin) extends the run
    with a note."""
    if self.pipelined:
      self._check_microbatches()
    with self.session.held():   # (the save in flight is committed before the run returns, or raises)
      return self._run(allow_config_change)

  def _check_microbatches(self):
    """Refuses a batch that `microbatches` does not divide before the run directory is made: the Pipeline finds it
    only inside the first step, after the directory and its lock exist. (Batches are global: each host's rows of
    the first batch, times the hosts.)"""
    batch = jax.tree_util.tree_leaves(self.first_batch_signature())[0].shape[0] * jax.process_count()
    if batch % self.microbatches:
      raise TrainingError(f"Trainer.microbatches: expected a divisor of the task's batch size {batch}, got "
                          f"{self.microbatches}")

  def _run(self, allow_config_change: bool) -> TrainState:
    stream = self.task.data()
    step_fn, fresh = self._build(stream)
    record = self._record(fresh)
    train_state, best_history, notes = self._restore(stream, fresh, record, allow_config_change)
    self.session.start(record)
    start = int(train_state.step)
    logger = self.session.logger(self.steps, start, progress=self.progress)
    if start:
      logger.message(f"resumed from step {start} ({self.session.latest()})")
    for note in notes:
      logger.message(note)
    try:
      step = start
      while step < self.steps:
        train_state, metrics = step_fn(train_state, next(stream))
        step += 1
        if step % self.log_every == 0 or step == self.steps:
          self._check_finite(train_state)
          logger.log(step, {**metrics, "learning_rate": self.task.schedule(step - 1)})
        eval_metrics = {}
        if self.eval_task is not None and (step % self.eval_task.eval_every == 0 or step == self.steps):
          self._check_finite(train_state)
          eval_metrics = {f"eval/{k}": v for k, v in self.evaluate(train_state.params, train_state.state).items()}
          logger.log(step, {k.split("/", 1)[1]: v for k, v in eval_metrics.items()}, prefix="eval")
          if self.best_metric in eval_metrics:
            best_history.append(eval_metrics[self.best_metric])
        stop = self._should_stop_early(best_history)
        if stop or self.session.due(step, self.steps):
          self._save(train_state, stream, eval_metrics, best_history, record)
        if stop:
          logger.message(f"early stopping at step {step}: {self.best_metric} has not improved for "
                         f"{self.patience} evaluations")
          break
    finally:
      logger.close()
      if self.session.primary:
        stopped_by = sys.exc_info()[1]
        try:
          plot_loss_curve(self.output_dir)
        except OSError:
          # (e.g. a full disk, which stopped the run too): the error that stopped it is the one to tell
          if stopped_by is None:
            raise
    return train_state

  def _should_stop_early(self, history: list) -> bool:
    """True when the best `best_metric` so far is `patience` or more evaluations old."""
    if not self.patience or not history:
      return False
    best_at = (np.argmin if self.session.manager.mode == "min" else np.argmax)(history)
    return len(history) - 1 - int(best_at) >= self.patience
