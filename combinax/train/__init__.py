"""combinax.train: schedules, regularization, sharding and checkpoints for training loops.

Its gin configurables (`Trainer`, `TrainTask`, `EvalTask`, the schedules, the mesh and sharding rules, `l2_penalty`,
`sample_setup`, `train_job`) and optax's optimizers (`@optax.adamw`) are registered here, in one place.
"""

import gin as _gin
import optax as _optax

from combinax.configurable import register as _register
from combinax import sharding
from combinax.store import checkpoints
from combinax.train import regularization, schedules
from combinax.train.schedules import (constant, cosine, exponential_decay, linear_warmup, multifactor, rsqrt_decay,
                                      step_decay)
from combinax.train.step import TrainState, TrainStep
from combinax.train.trainer import EvalTask, Trainer, TrainingError, TrainTask, sample_setup, train_job

_register(globals(), "combinax.train", ["TrainTask", "EvalTask", "Trainer", "sample_setup", "train_job", "constant",
                                         "linear_warmup", "rsqrt_decay", "step_decay", "exponential_decay", "cosine",
                                         "multifactor"])
_register(vars(sharding), "combinax.train", ["make_mesh", "fsdp_rules", "tensor_parallel_rules"])
_register(vars(regularization), "combinax.train", ["l2_penalty"])
for _name in ("adam", "adamw", "sgd", "adafactor", "rmsprop", "lion", "lamb", "adagrad", "nadam", "adabelief"):
  _gin.external_configurable(getattr(_optax, _name), name=_name, module="optax")
