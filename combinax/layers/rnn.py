"""Recurrent layers: `LSTMCell` and `GRUCell` (one step), `LSTM` and `GRU` (a whole sequence).

A sequence layer is a stack program: one `Dense` projects the inputs of *every* time step at once (a single large
matmul), and `Scan` runs only the recurrent part, `h @ recurrent_kernel` and the gates, step by step. The initial
carries are zeros; with `mode="predict"` the `Scan` keeps its carries in `state`, so decoding one token per call
continues where the last call stopped. In training and evaluation the LSTM's recurrence is `lstm_recurrence`, the
same scan with a hand-written (cuDNN-style) gradient: the recurrent kernel's gradient is one matmul over all steps.

Parameter layout, the same for a cell and its sequence layer (so a cell's params run the sequence layer as they are):

    LSTMCell, LSTM: input/kernel (d_in, 4n), input/bias (4n,), recurrent/kernel (n, 4n)
    GRUCell, GRU:   input/kernel (d_in, 3n), input/bias (3n,), recurrent/kernel (n, 3n), recurrent/bias (3n,)

In predict mode the sequence layer's state holds the carries of its `Scan`: `Scan_0/carry` = (c, h) or (h,).

Gate blocks along the last axis follow Keras: LSTM `i, f, g, o` (input, forget, candidate, output), GRU `z, r, h`
(update, reset, candidate). So a Keras `LSTM` maps as kernel -> input/kernel, recurrent_kernel -> recurrent/kernel,
bias -> input/bias (a cuDNN LSTM's 8n biases: add its two halves). The GRU is the `reset_after=True` variant
(Keras's default, cuDNN's and PyTorch's): the reset gate multiplies the recurrent projection *after* the matmul,
`h~ = tanh(x W_h + b_h + r * (h U_h + c_h))`, which needs a recurrent bias: a Keras GRU's bias (2, 3n) maps as
bias[0] -> input/bias, bias[1] -> recurrent/bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from combinax import shapes
from combinax.layers import initializers
from combinax.layers.base import Layer, LayerError, child_rng
from combinax.layers.combinators import Fn, Select, Serial
from combinax.layers.control import Scan
from combinax.layers.core import Dense


class _Scoped(Serial):
  """A Serial that keeps its layers' params under a key of its own, counted like a leaf's (`LSTM_0`, `LSTM_1`)
  unless given a `name=`: a model with two LSTMs reads `LSTM_0/input/kernel`, `LSTM_1/input/kernel`."""

  @property
  def transparent(self) -> bool:
    return False


def _forget_bias_initializer(n_units: int, forget_bias: float):
  """Bias of the LSTM's input projection: zeros, except `forget_bias` on the forget gate (Keras's
  `unit_forget_bias`). It is an initial value, not added at run time, so imported Keras biases apply unchanged."""
  def init(rng, shape, dtype=jnp.float32):
    del rng
    return jnp.zeros(shape, dtype).at[n_units:2 * n_units].set(forget_bias)
  return init


def _check_carries(layer: Layer, projected, carries, n_gates: int):
  """Carries are (batch, n_units) with the batch of the (projected) input step."""
  n = layer.n_units
  batch = projected.shape[:-1]
  if projected.shape[-1:] != (n_gates * n,) or any(c.shape != batch + (n,) for c in carries):
    raise LayerError(layer, "the carries must be (batch, n_units), with the input's batch",
                     expected=f"input projection {batch + (n_gates * n,)}, carries {batch + (n,)}",
                     actual=shapes.describe((projected, *carries)))


def _is_cell_gate(z):
  """True on the `g` block (the third quarter) of (..., 4n) LSTM gates, the one block under tanh."""
  n = z.shape[-1] // 4
  return jax.lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1) // n == 2


def _lstm_step(projected, c, h, kernel):
  """One LSTM step from x W + b and the carries: (c_new, h_new, gates after their nonlinearities, (batch, 4n) in
  blocks i, f, g, o). The four blocks' nonlinearities are one elementwise pass over the (batch, 4n) array, not four
  (XLA:CPU runs each small pass as its own loop)."""
  z = projected + jnp.dot(h, kernel)
  gates = jnp.where(_is_cell_gate(z), jnp.tanh(z), jax.nn.sigmoid(z))
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = f * c + i * g
  return c, o * jnp.tanh(c), gates


class _LSTMRecurrence(Layer):
  """The recurrent half of an LSTM step: (x W + b, c, h) -> (h_new, c_new, h_new); params {"kernel": (n, 4n)}."""

  def __init__(self, n_units: int, recurrent_initializer, name: str = "recurrent"):
    super().__init__(3, 3, name)
    self.n_units, self.recurrent_initializer = n_units, initializers.get(recurrent_initializer)

  def init_params_and_state(self, rng, input_signature):
    _check_carries(self, input_signature[0], input_signature[1:], 4)
    n = self.n_units
    return {"kernel": self.recurrent_initializer(rng, (n, 4 * n), jnp.float32)}, {}

  def forward(self, params, state, inputs, *, rng, train):
    projected, c, h = inputs
    _check_carries(self, projected, (c, h), 4)
    c, h, _ = _lstm_step(projected, c, h, params["kernel"])
    return (h, c, h), state


def _lstm_forward(projected, kernel, c0, h0):
  """Runs the recurrence over batch-major `projected` (batch, T, 4n), reading each step where it lies (no
  time-major copy of the projections); returns hs (batch, T, n) and, time-major, cs and the gates after their
  nonlinearities (i, f, g, o)."""
  def step(carry, t):
    c, h, gates = _lstm_step(jax.lax.dynamic_index_in_dim(projected, t, 1, keepdims=False), *carry, kernel)
    return (c, h), (h, c, gates)
  _, (hs, cs, gates) = jax.lax.scan(step, (c0, h0), jnp.arange(projected.shape[1]))
  return jnp.swapaxes(hs, 0, 1), cs, gates


@jax.custom_vjp
def lstm_recurrence(projected, kernel, c0, h0):
  """The LSTM recurrence over a whole sequence: projected inputs x_t W + b (batch, T, 4n), the recurrent kernel
  (n, 4n) and the initial carries (batch, n) -> (hs (batch, T, n), c_T, h_T).

  Its gradient is written by hand, cuDNN-style: the backward scan only carries dh and dc and writes each step's
  gate gradient into place; the recurrent kernel's gradient is then one matmul over all steps, not a rank-`batch`
  update per step as autodiff of the scan would make (checked against autodiff in the tests).
  """
  hs, cs, _ = _lstm_forward(projected, kernel, c0, h0)
  return hs, cs[-1], hs[:, -1]


def _lstm_recurrence_forward(projected, kernel, c0, h0):
  hs, cs, gates = _lstm_forward(projected, kernel, c0, h0)
  return (hs, cs[-1], hs[:, -1]), (kernel, c0, h0, hs, cs, gates)


def _lstm_recurrence_backward(residuals, cotangents):
  kernel, c0, h0, hs, cs, gates = residuals
  d_hs, d_c_last, d_h_last = cotangents
  c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)

  def step(carry, per_step):
    d_h_next, d_c_next, d_projected = carry
    t, c, c_before, gate = per_step
    i, f, g, o = jnp.split(gate, 4, axis=-1)
    d_h = jax.lax.dynamic_index_in_dim(d_hs, t, 1, keepdims=False) + d_h_next
    tanh_c = jnp.tanh(c)
    d_c = d_c_next + d_h * o * (1.0 - tanh_c * tanh_c)
    # each block's gradient: (what multiplies it) * (its nonlinearity's derivative), in one pass over (batch, 4n)
    d_z = (jnp.concatenate([d_c * g, d_c * c_before, d_c * i, d_h * tanh_c], axis=-1)
           * jnp.where(_is_cell_gate(gate), 1.0 - gate * gate, gate * (1.0 - gate)))
    d_projected = jax.lax.dynamic_update_index_in_dim(d_projected, d_z.astype(d_projected.dtype), t, 1)
    return (jnp.dot(d_z, kernel_t), d_c * f, d_projected), None

  kernel_t = jnp.transpose(kernel)
  batch, length = hs.shape[:2]
  d_projected = jnp.zeros((batch, length, gates.shape[-1]), gates.dtype)
  (d_h0, d_c0, d_projected), _ = jax.lax.scan(step, (d_h_last, d_c_last, d_projected),
                                              (jnp.arange(length), cs, c_prev, gates), reverse=True)
  # One 2-D matmul over all steps (flattened: XLA:CPU is slower at contracting two axes).
  h_prev = jnp.concatenate([h0[:, None], hs[:, :-1]], axis=1)
  d_kernel = jnp.dot(h_prev.reshape(-1, h_prev.shape[-1]).T, d_projected.reshape(-1, d_projected.shape[-1]))
  return d_projected, d_kernel, d_c0, d_h0


lstm_recurrence.defvjp(_lstm_recurrence_forward, _lstm_recurrence_backward)


class _LSTMSequenceRecurrence(Layer):
  """The recurrent half of an LSTM over a whole sequence (training and evaluation; predict mode scans the cell):
  (xs W + b (batch, length, 4n), c0, h0) -> (hs, c_last, h_last); params {"kernel": (n, 4n)}, as `_LSTMRecurrence`'s,
  initialised as the scanned cell's would be."""

  def __init__(self, n_units: int, recurrent_initializer, name: str = "recurrent"):
    super().__init__(3, 3, name)
    self.cell = _LSTMRecurrence(n_units, recurrent_initializer, name)
    self.n_units = n_units

  def _check(self, projected, c0, h0):
    if len(projected.shape) != 3:
      raise LayerError(self, "projected inputs must be (batch, length, 4 * n_units)",
                       expected=f"(batch, length, {4 * self.n_units})", actual=shapes.describe(projected))
    _check_carries(self, jax.ShapeDtypeStruct(projected.shape[:1] + projected.shape[2:], projected.dtype),
                   (c0, h0), 4)

  def init_params_and_state(self, rng, input_signature):
    self._check(*input_signature)
    projected, c0, h0 = input_signature
    step = (shapes.ShapeDtype(projected.shape[:1] + projected.shape[2:], projected.dtype), c0, h0)
    return self.cell.init(child_rng(rng, 0), step)   # the rng a Scan would give its cell

  def forward(self, params, state, inputs, *, rng, train):
    projected, c0, h0 = inputs
    self._check(projected, c0, h0)
    return lstm_recurrence(projected, params["kernel"], c0, h0), state


class _GRURecurrence(Layer):
  """The recurrent half of a GRU step (reset after the matmul): (x W + b, h) -> (h_new, h_new);
  params {"kernel": (n, 3n), "bias": (3n,)}."""

  def __init__(self, n_units: int, recurrent_initializer, name: str = "recurrent"):
    super().__init__(2, 2, name)
    self.n_units, self.recurrent_initializer = n_units, initializers.get(recurrent_initializer)

  def init_params_and_state(self, rng, input_signature):
    _check_carries(self, input_signature[0], input_signature[1:], 3)
    n = self.n_units
    return {"kernel": self.recurrent_initializer(rng, (n, 3 * n), jnp.float32),
            "bias": jnp.zeros((3 * n,), jnp.float32)}, {}

  def forward(self, params, state, inputs, *, rng, train):
    projected, h = inputs
    _check_carries(self, projected, (h,), 3)
    recurrent = jnp.dot(h, params["kernel"])
    recurrent = recurrent + params["bias"].reshape((1,) * (recurrent.ndim - 1) + (-1,))
    x_z, x_r, x_h = jnp.split(projected, 3, axis=-1)
    h_z, h_r, h_h = jnp.split(recurrent, 3, axis=-1)
    update, reset = jax.nn.sigmoid(x_z + h_z), jax.nn.sigmoid(x_r + h_r)
    candidate = jnp.tanh(x_h + reset * h_h)
    h = update * h + (1.0 - update) * candidate
    return (h, h), state


def _ZeroCarries(n_units: int, n_carries: int) -> Layer:
  """(xs) -> (xs, zeros, ...): `n_carries` zero carries (batch, n_units) below a (batch, length, ...) input."""
  def zero_carries(xs):
    zeros = jnp.zeros((xs.shape[0], n_units), xs.dtype)
    return (xs,) + (zeros,) * n_carries
  return Fn("ZeroState", zero_carries, n_out=1 + n_carries)


class _Sequence(_Scoped):
  """Checks that its input is (batch, length, features) floats before running its layers."""

  def _check_sequence(self, x):
    if len(x.shape) != 3 or not jnp.issubdtype(x.dtype, jnp.floating):
      raise LayerError(self, "input must be a float sequence (batch, length, features); embed token ids first",
                       expected="rank 3 (batch, length, features), a float dtype", actual=shapes.describe(x))

  def init_params_and_state(self, rng, input_signature):
    self._check_sequence(input_signature)
    return super().init_params_and_state(rng, input_signature)

  def forward(self, params, state, inputs, *, rng, train):
    self._check_sequence(inputs)
    return super().forward(params, state, inputs, rng=rng, train=train)


class LSTMCell(_Scoped):
  """One LSTM step: (x_t, c, h) -> (h_new, c_new, h_new), so `Scan(LSTMCell(n), axis=1, n_carry=2)` runs it.

  `c` and `h` are (batch, n_units). Gates are Keras's `i, f, g, o` blocks; params `input/{kernel, bias}` and
  `recurrent/kernel` (see the module docstring). The forget gate's bias starts at `forget_bias`.

  >>> cell = LSTMCell(4)
  >>> step = (ShapeDtype((2, 3)), ShapeDtype((2, 4)), ShapeDtype((2, 4)))
  >>> cell.output_signature(step)
  (ShapeDtype((2, 4), float32), ShapeDtype((2, 4), float32), ShapeDtype((2, 4), float32))
  >>> cx.paths(cell.init(jax.random.key(0), step)[0])
  ['input/bias', 'input/kernel', 'recurrent/kernel']
  """

  def __init__(self, n_units: int, forget_bias: float = 1.0, kernel_initializer="glorot_uniform",
               recurrent_initializer="orthogonal", name: str | None = None):
    n = int(n_units)
    super().__init__(
        Dense(4 * n, kernel_initializer, _forget_bias_initializer(n, forget_bias), name="input"),  # x W + b, c, h
        _LSTMRecurrence(n, recurrent_initializer),                                               # h', c', h'
        name=name)
    self.n_units, self.forget_bias = n, forget_bias


class GRUCell(_Scoped):
  """One GRU step (reset gate after the recurrent matmul): (x_t, h) -> (h_new, h_new), for `Scan(..., n_carry=1)`.

  Gates are Keras's `z, r, h` blocks; params `input/{kernel, bias}` and `recurrent/{kernel, bias}`.

  >>> cell = GRUCell(4)
  >>> cell.output_signature((ShapeDtype((2, 3)), ShapeDtype((2, 4))))
  (ShapeDtype((2, 4), float32), ShapeDtype((2, 4), float32))
  """

  def __init__(self, n_units: int, kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
               name: str | None = None):
    n = int(n_units)
    super().__init__(
        Dense(3 * n, kernel_initializer, name="input"),   # x W + b, h
        _GRURecurrence(n, recurrent_initializer),         # h', h'
        name=name)
    self.n_units = n


class LSTM(_Sequence):
  """An LSTM over a sequence: (batch, length, features) -> (batch, length, n_units), starting from zero carries.

  With `mode="predict"` the carries (c, h) stay in `state`: each call continues where the last one stopped.

  >>> lstm = LSTM(8)
  >>> lstm.output_signature(ShapeDtype((2, 5, 3)))
  ShapeDtype((2, 5, 8), float32)
  >>> cx.paths(lstm.init(jax.random.key(0), ShapeDtype((2, 5, 3)))[0])
  ['input/bias', 'input/kernel', 'recurrent/kernel']
  """

  def __init__(self, n_units: int, mode: str = "train", forget_bias: float = 1.0,
               kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", name: str | None = None):
    n = int(n_units)
    super().__init__(
        Dense(4 * n, kernel_initializer, _forget_bias_initializer(n, forget_bias), name="input"),  # xs W + b
        _ZeroCarries(n, 2),                                                           # xs W + b, c0=0, h0=0
        Scan(_LSTMRecurrence(n, recurrent_initializer), axis=1, n_carry=2, mode=mode) if mode == "predict"
        else _LSTMSequenceRecurrence(n, recurrent_initializer),                       # hs, c_last, h_last
        Select([0], n_in=3),                                                          # hs (batch, length, n)
        name=name)
    self.n_units = n


class GRU(_Sequence):
  """A GRU over a sequence: (batch, length, features) -> (batch, length, n_units), starting from a zero carry.

  With `mode="predict"` the carry h stays in `state`: each call continues where the last one stopped.

  >>> GRU(8).output_signature(ShapeDtype((2, 5, 3)))
  ShapeDtype((2, 5, 8), float32)
  """

  def __init__(self, n_units: int, mode: str = "train", kernel_initializer="glorot_uniform",
               recurrent_initializer="orthogonal", name: str | None = None):
    n = int(n_units)
    super().__init__(
        Dense(3 * n, kernel_initializer, name="input"),                                # xs W + b: (batch, length, 3n)
        _ZeroCarries(n, 1),                                                           # xs W + b, h0=0
        Scan(_GRURecurrence(n, recurrent_initializer), axis=1, n_carry=1, mode=mode),  # hs, h_last
        Select([0], n_in=2),                                                          # hs (batch, length, n)
        name=name)
    self.n_units = n
