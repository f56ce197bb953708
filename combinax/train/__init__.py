"""combinax.train: schedules, regularization, sharding and checkpoints for training loops."""

from combinax.train import checkpoints, regularization, schedules, sharding
from combinax.train.schedules import (constant, cosine, exponential_decay, linear_warmup, multifactor, rsqrt_decay,
                                      step_decay)
from combinax.train.step import TrainState, TrainStep
from combinax.train.trainer import EvalTask, Trainer, TrainingError, TrainTask
