"""GPipe (Huang et al., 2019): a stack of identical blocks run as K stages over M micro-batches.

`Pipeline(block, n_layers, stages=K, microbatches=M)` is a `Repeat` (the same params, stacked on a leading layer axis,
at the same paths, so checkpoints move between pipelined and unpipelined models as they are) whose `apply` splits
the batch into M micro-batches and the layers into K stages of n_layers / K, and runs the GPipe schedule: at
iteration t stage k works on micro-batch t - k, so M + K - 1 iterations pass every micro-batch through every stage,
and (K - 1) / (M + K - 1) of the stage-iterations are bubbles (`schedule`).

How: the stages are one `jax.vmap` over the stage axis of the params, reshaped to (K, n_layers / K, ...), and the
activations between them one (K, micro-batch, ...) buffer that `jnp.roll` shifts by one stage per iteration, all in
one `lax.scan` over the iterations (compile time does not grow with M or depth). Run under a mesh with a `stage` axis
of size K (`with jax.set_mesh(mesh):`), the params and the buffer are constrained to it, so stage k's layers live on
its devices and XLA turns the roll into a collective permute between neighbours; a `data` axis splits each
micro-batch as usual. The model says how many stages; the mesh it runs under says where. We chose this over
`shard_map` with `ppermute`: the same schedule, but written once for any mesh (or none: one device runs it exactly),
and autodiff, jit and data parallelism compose with it unchanged.

Bubbles compute on zeros, never on what the buffer held, so neither the outputs nor the gradients can see them.
With `remat=True` (GPipe's choice) the backward pass keeps only each iteration's stage inputs and recomputes the rest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from combinax import shapes
from combinax.layers.base import Layer, LayerError
from combinax.layers.combinators import from_stack, to_stack
from combinax.layers.repeat import Repeat
from combinax.sharding import DATA, STAGE


def schedule(stages: int, microbatches: int) -> np.ndarray:
  """The GPipe schedule: entry [t, k] is the micro-batch stage k works on at iteration t, or -1 in a bubble.

  >>> schedule(2, 3)
  array([[ 0, -1],
         [ 1,  0],
         [ 2,  1],
         [-1,  2]])
  >>> float((schedule(4, 12) < 0).mean())   # the bubble, (K - 1) / (M + K - 1)
  0.2
  """
  working = np.arange(microbatches + stages - 1)[:, None] - np.arange(stages)[None, :]
  return np.where((working >= 0) & (working < microbatches), working, -1)


def gpipe(stage_fn, staged_params, microbatched: tuple, *, stages: int, fill: float = 0.0, constrain=None):
  """Runs the GPipe schedule: `stage_fn(params of one stage, stage index, inputs, micro-batch index) -> outputs`
  (tuples of arrays of one micro-batch each) over `microbatched` (a tuple of (M, micro-batch, ...) arrays) with
  `staged_params` (leading axis K). Returns the last stage's outputs, (M, micro-batch, ...) each.

  `fill` is what stage 0 is handed after the last micro-batch (tests fill it with NaN to show that bubbles are
  never computed on); `constrain(buffer)` places the (K, ...) activation buffer (on the mesh's stage axis).
  """
  n_micro = microbatched[0].shape[0]
  working = jnp.asarray(schedule(stages, n_micro))
  constrain = constrain or (lambda tree: tree)

  def iteration(carry, t):
    buffer, outputs = carry
    incoming = tuple(jnp.where(t < n_micro, lax.dynamic_index_in_dim(m, jnp.minimum(t, n_micro - 1), 0, False),
                               jnp.asarray(fill, m.dtype)) for m in microbatched)
    buffer = tuple(b.at[0].set(x) for b, x in zip(buffer, incoming))        # stage 0 takes micro-batch t
    index = working[t]
    busy = index >= 0
    # Bubbles compute on zeros: what the buffer holds there never reaches a layer, nor its gradient.
    buffer = constrain(tuple(jnp.where(busy.reshape((-1,) + (1,) * (b.ndim - 1)), b, jnp.zeros_like(b))
                             for b in buffer))
    out = jax.vmap(stage_fn)(staged_params, jnp.arange(stages), buffer, jnp.maximum(index, 0))
    done = t - (stages - 1)                                                  # the micro-batch the last stage ended
    outputs = tuple(jnp.where(done >= 0, lax.dynamic_update_index_in_dim(o, y[stages - 1], jnp.maximum(done, 0), 0),
                              o) for o, y in zip(outputs, out))
    return (constrain(tuple(jnp.roll(y, 1, axis=0) for y in out)), outputs), None   # stage k feeds stage k + 1

  buffer = tuple(jnp.zeros((stages,) + m.shape[1:], m.dtype) for m in microbatched)
  outputs = tuple(jnp.zeros_like(m) for m in microbatched)
  (_, outputs), _ = lax.scan(iteration, (buffer, outputs), jnp.arange(working.shape[0]))
  return outputs


class Pipeline(Repeat):
  """`n_layers` copies of `block` (params as `Repeat`'s) run as `stages` pipeline stages over `microbatches`
  micro-batches (GPipe). The block maps its inputs to outputs of the same signature, each with the batch on its
  leading axis, and keeps no state. `remat` is what the backward pass keeps of each stage's work in an iteration:
  `True` (GPipe's) only its inputs, `"dots"` also its matmul outputs, `False` everything. Dropout draws a mask per
  layer and micro-batch. Under a mesh with a `stage` axis (`jax.set_mesh`), each stage runs on its devices.

  >>> from combinax import layers as cl
  >>> blocks = Pipeline(cl.Serial(cl.Dense(4), cl.Relu()), 4, stages=2, microbatches=2, name="blocks")
  >>> params, _ = blocks.init(jax.random.key(0), ShapeDtype((6, 4)))
  >>> params["Dense_0"]["kernel"].shape, blocks.output_signature(ShapeDtype((6, 4)))
  ((4, 4, 4), ShapeDtype((6, 4), float32))
  """

  def __init__(self, block: Layer, n_layers: int, *, stages: int, microbatches: int, remat: bool | str = True,
               name: str | None = None):
    super().__init__(block, n_layers, scan=True, remat=remat, name=name)
    self.stages, self.microbatches = int(stages), int(microbatches)
    if self.stages < 1 or self.n_layers % self.stages:
      raise LayerError(self, "the stages must split the layers evenly", expected=f"a divisor of n_layers={n_layers}",
                       actual=f"stages={stages}")
    if self.microbatches < 1:
      raise LayerError(self, "microbatches must be positive", expected=">= 1", actual=microbatches)
    if block.decodes:
      raise LayerError(self, "a decoder (mode='predict') runs its layers one token at a time: build it without "
                       "pipeline stages; it takes the pipelined model's params as they are",
                       expected="pipeline_stages=1 in predict mode", actual=f"stages={stages}")

  def _constrain(self, spec_of):
    """Places (K, ...) arrays on the `stage` axis of the mesh the step runs under, if it has one."""
    mesh = dict(jax.sharding.get_abstract_mesh().shape)
    if STAGE not in mesh:
      return None
    if mesh[STAGE] != self.stages:
      raise LayerError(self, f"the mesh's '{STAGE}' axis must have one device group per stage",
                       expected=f"{STAGE}={self.stages}", actual=mesh)
    n_data = mesh.get(DATA, 1)
    def place(x):   # a data axis splits the micro-batch (axis 1) where it divides it
      data = DATA if n_data > 1 and x.ndim > 1 and x.shape[1] % n_data == 0 else None
      return lax.with_sharding_constraint(x, spec_of(x, data))
    return lambda tree: jax.tree_util.tree_map(place, tree)

  def forward(self, params, state, inputs, *, rng, train):
    if jax.tree_util.tree_leaves(state):
      raise LayerError(self, "the pipelined block keeps state (batch statistics, a decoding cache); pipeline a "
                       "stateless block, or use Repeat", actual=shapes.describe(state))
    items = to_stack(inputs, self.n_in)
    batch = items[0].shape[0] if items[0].ndim else 0
    if not batch or batch % self.microbatches or any(x.ndim == 0 or x.shape[0] != batch for x in items):
      raise LayerError(self, f"inputs need one batch axis that {self.microbatches} micro-batches divide",
                       expected=f"leading axes that are multiples of {self.microbatches}",
                       actual=shapes.describe(inputs))
    k, per_stage = self.stages, self.n_layers // self.stages
    staged = jax.tree_util.tree_map(lambda p: p.reshape((k, per_stage) + p.shape[1:]), params)
    place_params = self._constrain(lambda x, data: P(STAGE))
    if place_params:
      staged = place_params(staged)

    def stage_fn(stage_params, stage, xs, micro):
      def one_layer(xs, per_layer):
        layer_params, j = per_layer
        layer_rng = None if rng is None else jax.random.fold_in(jax.random.fold_in(rng, stage * per_stage + j), micro)
        ys, _ = self.block.apply(layer_params, {}, from_stack(list(xs), self.n_in), rng=layer_rng, train=train)
        return tuple(to_stack(ys, self.n_out)), None
      return lax.scan(one_layer, tuple(xs), (stage_params, jnp.arange(per_stage)))[0]

    stage_fn = self.rematerialised(stage_fn, prevent_cse=True)
    microbatched = tuple(x.reshape((self.microbatches, batch // self.microbatches) + x.shape[1:]) for x in items)
    outputs = gpipe(stage_fn, staged, microbatched, stages=k,
                    constrain=self._constrain(lambda x, data: P(STAGE, data)))
    return from_stack([y.reshape((batch,) + y.shape[2:]) for y in outputs], self.n_out), state
