"""Knowledge distillation (Hinton et al. 2015): a student's loss against a teacher's softened distribution.

Per position, with temperature T and weight alpha:

  alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, target)

where s are the student's logits and t the teacher's (the T^2 keeps the soft term's gradient on the scale of the
hard one's as T changes), averaged over the positions of non-zero weight like the other weighted losses.

With a teacher's top k only (its log-probabilities of its k likeliest tokens and their ids, stored once by a
teacher pass over a corpus), both distributions are taken over k + 1 classes: those k tokens, and "the rest" (the
teacher's 1 - the k's probability; the student's probability of every other token), each tempered by T. With k the
whole vocabulary, "the rest" is empty and this is the full loss. Renormalising the teacher over its k tokens
instead, as this layer first did, teaches the student that every other token is impossible: distilled so from
SmolLM2's top 32 at T = 2, a student's held-out cross-entropy was 4.69 where hard labels gave 4.20
(experiments/distill_smollm2.py), the next token being outside the teacher's top 32 often enough.
Everything is computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from combinax import shapes
from combinax.layers.base import Layer, LayerError
from combinax.layers.losses import category_cross_entropy, check_categorical, weighted_mean


def soft_cross_entropy_terms(student_logits, teacher_logits, temperature: float, teacher_ids=None):
  """Per-position KL(softmax(t / T) || softmax(s / T)): the teacher's logits over the full vocabulary, or with
  `teacher_ids` (..., k) its log-probabilities `teacher_logits` (..., k) of those k tokens, the distributions then
  taken over the k tokens and the rest (see the module's docstring)."""
  if teacher_ids is None:
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(t) * (t - s), axis=-1)
  student = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  teacher = teacher_logits.astype(jnp.float32)
  vocab, k = student.shape[-1], teacher_ids.shape[-1]
  picked = jnp.take_along_axis(student, teacher_ids, axis=-1)
  if k < vocab:
    rows = student.reshape(-1, vocab)
    chosen = jnp.zeros(rows.shape, bool).at[jnp.arange(rows.shape[0])[:, None], teacher_ids.reshape(-1, k)].set(True)
    student_rest = jax.nn.logsumexp(jnp.where(chosen, -jnp.inf, rows), axis=-1).reshape(student.shape[:-1])
    teacher_mass = jnp.sum(jnp.exp(teacher), axis=-1)
    teacher_rest = jnp.where(teacher_mass < 1, jnp.log(jnp.maximum(1 - teacher_mass, 1e-38)), -jnp.inf)
    picked = jnp.concatenate([picked, student_rest[..., None]], axis=-1)
    teacher = jnp.concatenate([teacher, teacher_rest[..., None]], axis=-1)
  s = jax.nn.log_softmax(picked / temperature, axis=-1)
  t = jax.nn.log_softmax(teacher / temperature, axis=-1)
  # 0 log 0 = 0: a class the teacher gives no probability (an empty rest) adds nothing
  return jnp.sum(jnp.where(t > -jnp.inf, jnp.exp(t) * (t - s), 0.0), axis=-1)


class DistillationLoss(Layer):
  """alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy of the targets, weighted
  mean over positions: (student logits, teacher logits, targets, weights) -> scalar; with `top_k=True`, (student
  logits, the teacher's log-probabilities of its top-k tokens, their token ids, targets, weights).

  >>> loss = DistillationLoss(temperature=2.0, alpha=0.5)
  >>> logits = jnp.array([[1.0, 2.0, 3.0]])
  >>> float(loss.apply({}, {}, (logits, logits, jnp.array([2]), jnp.ones(1)))[0])   # only the hard half is left
  0.2038...
  """

  def __init__(self, temperature: float = 2.0, alpha: float = 0.5, top_k: bool = False, name: str | None = None):
    super().__init__(5 if top_k else 4, 1, name)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
      raise LayerError(self, "temperature must be positive", expected="T > 0", actual=temperature)
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
      raise LayerError(self, "alpha weighs the soft term against the hard one", expected="0 <= alpha <= 1",
                       actual=alpha)
    self.temperature, self.alpha, self.top_k = float(temperature), float(alpha), bool(top_k)

  def forward(self, params, state, inputs, *, rng, train):
    if self.top_k:
      student, teacher, ids, targets, weights = inputs
      if teacher.shape != ids.shape or teacher.shape[:-1] != student.shape[:-1] or \
         not jnp.issubdtype(ids.dtype, jnp.integer):
        raise LayerError(self, "the teacher's top-k logits and ids must match each other and the student's positions",
                         expected="values (..., k) and integer ids (..., k), ... the student's (..., vocab)",
                         actual=shapes.describe((student, teacher, ids)))
    else:
      student, teacher, targets, weights = inputs
      ids = None
      if teacher.shape != student.shape:
        raise LayerError(self, "student and teacher logits differ in shape: they must share the vocabulary "
                         "(one tokenizer)", expected=shapes.describe(student), actual=shapes.describe(teacher))
    check_categorical(self, student, targets, weights)
    soft = soft_cross_entropy_terms(student, jax.lax.stop_gradient(teacher), self.temperature, ids)
    hard = category_cross_entropy(student, targets)
    per_position = self.alpha * self.temperature ** 2 * soft + (1.0 - self.alpha) * hard
    return weighted_mean(per_position, weights), state
