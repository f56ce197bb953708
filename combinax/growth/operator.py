"""The LiGO growth operator: a learned linear map from a small Transformer's params to a wider and deeper one's.

Wang et al., "Learning to Grow Pretrained Models for Efficient Transformer Training" (ICLR 2023), §3, written here
for combinax's `TransformerLM` and `TransformerEncoder` (pre- or post-norm, plain or gated feed-forward, learned,
rotary or no positions, grouped-query attention) and their readable, layer-stacked parameter paths.

Width. Every grown axis of size n -> n' has an expander `B = [I; C]` (n' x n): the old units kept, the new rows `C`
learned (`dense=True` learns all of B). A weight's output axis is multiplied by B, its input axis by the *reader*
`A = B diag(BᵀB)⁻¹`: for a selection (every column one-hot, as Net2Net's copies) `AᵀB = I`, so a copied unit's
outgoing weights are split between its copies and the function is kept; for a learned B the diagonal is ≥ 1 (B holds
I), so A never blows up, and it costs O(n'n), not a solve. (The authors' code multiplies by B on both sides; then a
copied unit counts twice, which only training undoes.) The expanders are tied as in §3.2:
  - one residual expander `embed` for everything that reads or writes the residual stream: the embeddings (and
    positions, token types, embedding norm), Q/K/V and FFN-in inputs, attention-output and FFN-out outputs, every
    norm, and the output head;
  - per small layer j, expanders `q`, `k`, `v` (the attention's output projection reads with V's, or with Q's under
    grouped-query attention, where it has one slice per query head) and `ff` (FFN-in / gate / up write with it,
    FFN-out / down read with it).
Heads grow in number at the same width: d_model / n_heads must be equal in both models (so the 1/sqrt(d_head) scale
and rotary frequencies are unchanged), and the selections of Q, K and V copy whole heads, the same ones.

Depth. Each large layer l of each module m (q, k, v, o, each norm, each FFN matrix; kernel and bias together) is
`Σ_j w_m[l, j] · (width-expanded small layer j)`, one einsum per leaf over the stacked layer axis.

The output head and the final norm. A pre-norm model's final norm reads the residual stream with A, and the head
writes with B: the same rule then holds whether the head is a Dense or the (B-expanded) embedding table itself
(`tie_embeddings`). Without a final norm (post-norm) the head reads with A.

Initialisations (`GrowthOptions`): depth "stack" (w[l, j] = 1 for j = l mod L, StackBERT), "interpolate" (j = l L /
L', each layer repeated in place), or "identity" (Net2Net's deeper net: each small layer followed by copies whose
attention-output and FFN-out are zero, so they add nothing to the residual stream); width "random" (each new unit
copies a random old one, LiGO's and Net2Net's init) or "cyclic" (unit i' copies i' mod n: every unit copied equally
often when n divides n', which keeps LayerNorm's mean and variance); `noise` is added to every learned entry.
"identity" + "cyclic" + noise 0 is function-preserving for pre-norm models when d_model' is a multiple of d_model
and the positions are learned, rotary or none (a wider model's sinusoids are different functions).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from combinax.layers.base import Layer
from combinax.layers.repeat import Repeat
from combinax.models.transformer import TransformerOptions
from combinax.paths import leaves_with_paths, unflatten

GROWABLE = ("TransformerLM", "TransformerEncoder")
DEPTH_INITS = ("stack", "interpolate", "identity")
WIDTH_INITS = ("random", "cyclic")


class GrowthError(ValueError):
  """A model pair the operator cannot grow, or params that do not fit it; the message names the place."""


@dataclasses.dataclass(frozen=True)
class GrowthOptions:
  """How the operator starts and what it learns; checked once (a ValueError names the field).

  >>> GrowthOptions(depth="deeper")
  Traceback (most recent call last):
  ValueError: GrowthOptions.depth: expected one of ('stack', 'interpolate', 'identity'), got 'deeper'
  """
  depth: str = "stack"       # DEPTH_INITS
  width: str = "random"      # WIDTH_INITS
  noise: float = 0.01        # std of the Gaussian noise added to every learned entry (C, or B, and w) at init
  dense: bool = False        # learn the whole expander B, not only its new rows C

  def __post_init__(self):
    for field, allowed in (("depth", DEPTH_INITS), ("width", WIDTH_INITS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"GrowthOptions.{field}: expected one of {allowed}, got {getattr(self, field)!r}")
    if not self.noise >= 0.0:
      raise ValueError(f"GrowthOptions.noise: expected a standard deviation >= 0, got {self.noise!r}")


# The operator's fixed settings that are the classic growth methods (trained for 0 steps), and LiGO's start.
METHODS = {
    "ligo": GrowthOptions(),
    "stack": GrowthOptions(depth="stack", width="cyclic", noise=0.0),              # StackBERT (+ Net2Net width)
    "interpolate": GrowthOptions(depth="interpolate", width="cyclic", noise=0.0),  # layer interpolation
    "net2net": GrowthOptions(depth="identity", width="cyclic", noise=0.0),         # function-preserving
}


class Dims(NamedTuple):
  """The sizes of one Transformer that growth reads from the model (not from its params)."""
  kind: str
  d_model: int
  d_ff: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  pre_norm: bool
  gated: bool

  @property
  def d_head(self) -> int:
    return self.d_model // self.n_heads

  def size(self, expander: str) -> int:
    return {"embed": self.d_model, "q": self.d_model, "k": self.n_kv_heads * self.d_head,
            "v": self.n_kv_heads * self.d_head, "ff": self.d_ff}[expander]


class Rule(NamedTuple):
  """How one leaf grows: `axes` are (axis counted from the end, expander, "B" to write or "A" to read); `module` is
  the depth module of a block leaf (None outside the blocks)."""
  axes: tuple
  module: str | None


def _find(model: Layer, wanted) -> list:
  found, todo = [], [model]
  while todo:
    layer = todo.pop()
    if wanted(layer):
      found.append(layer)
    else:
      todo.extend(layer.sublayers)
  return found


def dims(model: Layer, role: str = "model") -> Dims:
  """The sizes of the TransformerLM / TransformerEncoder inside `model` (which may wrap it, as BERT's does)."""
  found = _find(model, lambda layer: isinstance(getattr(layer, "options", None), TransformerOptions)
                and layer.name in GROWABLE)
  if len(found) != 1:
    raise GrowthError(f"grow: the {role} model must hold exactly one of {GROWABLE}, found {len(found)}: "
                      f"{model.summary()}")
  transformer, o = found[0], found[0].options
  blocks = _find(transformer, lambda layer: isinstance(layer, Repeat) and layer.name == "blocks")
  return Dims(transformer.name, o.d_model, o.d_ff, blocks[0].n_layers, o.n_heads, o.n_kv_heads or o.n_heads,
              o.pre_norm, o.gated_ff)


class Plan(NamedTuple):
  """What the operator maps: the two models' sizes and each small leaf's rule, in the small params' order."""
  small: Dims
  large: Dims
  rules: dict            # path -> Rule

  @property
  def grown(self) -> tuple:
    """The expanders whose axis grows (the others are the identity and have no params)."""
    return tuple(e for e in ("embed", "q", "k", "v", "ff") if self.large.size(e) > self.small.size(e))

  @property
  def modules(self) -> tuple:
    return tuple(sorted({rule.module for rule in self.rules.values() if rule.module is not None}))


def _block_sublayers(small: Dims) -> dict:
  """Each block sublayer's (input expander, output expander); None: an axis that does not grow."""
  o_reader = "v" if small.n_kv_heads == small.n_heads else "q"
  ff = {"ff/gate": ("embed", "ff"), "ff/up": ("embed", "ff"), "ff/down": ("ff", "embed")} if small.gated else {
      "ff/in": ("embed", "ff"), "ff/out": ("ff", "embed")}
  return {"attention/q": ("embed", "q"), "attention/k": ("embed", "k"), "attention/v": ("embed", "v"),
          "attention/o": (o_reader, "embed"), "attention_norm": (None, "embed"), "ff_norm": (None, "embed"), **ff}


def _rule(path: str, small: Dims) -> Rule | None:
  head, _, leaf = path.rpartition("/")
  if path.startswith("blocks/"):
    sublayer = head[len("blocks/"):]
    expanders = _block_sublayers(small).get(sublayer)
    if expanders is None:
      return None
    reader, writer = expanders
    if leaf == "kernel":
      return Rule(((-2, reader, "A"), (-1, writer, "B")), sublayer)
    return Rule(((-1, writer, "B"),), sublayer) if leaf in ("bias", "scale") else None
  head_reads = "B" if small.pre_norm else "A"   # see the module docstring: the final norm reads when there is one
  top = {"embed/embedding": ((-1, "embed", "B"),), "positions/embedding": ((-1, "embed", "B"),),
         "token_type_embed/embedding": ((-1, "embed", "B"),), "embed_norm/scale": ((-1, "embed", "B"),),
         "embed_norm/bias": ((-1, "embed", "B"),), "final_norm/scale": ((-1, "embed", "A"),),
         "final_norm/bias": ((-1, "embed", "A"),), "logits/kernel": ((-2, "embed", head_reads),),
         "logits/bias": (), "classifier/kernel": ((-2, "embed", head_reads),), "classifier/bias": ()}
  return Rule(top[path], None) if path in top else None


def make_plan(small_model: Layer, small_params, large_model: Layer) -> Plan:
  """The operator's plan for growing `small_model` (with `small_params`, arrays or signatures) into `large_model`;
  a GrowthError names what does not fit."""
  small, large = dims(small_model, "small"), dims(large_model, "large")
  if small.kind != large.kind:
    raise GrowthError(f"grow: cannot grow a {small.kind} into a {large.kind}")
  for field in ("pre_norm", "gated"):
    if getattr(small, field) != getattr(large, field):
      raise GrowthError(f"grow: the models differ in {field}: small {getattr(small, field)}, large "
                        f"{getattr(large, field)} (growth changes sizes, not the architecture)")
  for field in ("d_model", "d_ff", "n_layers", "n_heads", "n_kv_heads"):
    if getattr(large, field) < getattr(small, field):
      raise GrowthError(f"grow: the large model's {field} must be at least the small one's "
                        f"{getattr(small, field)}, got {getattr(large, field)}")
  if large.d_head != small.d_head:
    raise GrowthError(f"grow: heads grow in number, not width: the small model's heads have d_model / n_heads = "
                      f"{small.d_model} / {small.n_heads} = {small.d_head} dims, so the large one needs n_heads = "
                      f"{large.d_model} / {small.d_head}, got n_heads={large.n_heads} ({large.d_head} dims)")
  if large.n_heads // large.n_kv_heads != small.n_heads // small.n_kv_heads:
    raise GrowthError(f"grow: both models need the same query heads per key/value head: small "
                      f"{small.n_heads}/{small.n_kv_heads}, large {large.n_heads}/{large.n_kv_heads}")
  rules = {}
  for path, _ in leaves_with_paths(small_params):
    rule = _rule(path, small)
    if rule is None:
      known = sorted(_block_sublayers(small))
      raise GrowthError(f"grow: the operator does not know the parameter {path!r}; it grows the embeddings, "
                        f"norms, output head and, in blocks/, {', '.join(known)}")
    rules[path] = rule
  return Plan(small, large, rules)


# --- The operator's params ---------------------------------------------------------------------------------------

def _selection(rng, small: Dims, large: Dims, expander: str, width: str) -> jax.Array:
  """For each new unit (n' - n of them), the old unit it copies. Q, K and V copy whole heads (the same ones)."""
  def pick(key, n_old, n_new):
    if width == "cyclic":
      return jnp.arange(n_old, n_new) % n_old
    return jax.random.randint(key, (n_new - n_old,), 0, n_old)
  if expander in ("embed", "ff"):
    return pick(rng, small.size(expander), large.size(expander))
  kv_heads = pick(rng, small.n_kv_heads, large.n_kv_heads)          # each new key/value head copies one
  if expander == "q":   # a new query head copies the same-numbered query head of its kv head's source
    group = small.n_heads // small.n_kv_heads
    new = jnp.arange(small.n_heads, large.n_heads)
    heads = jnp.concatenate([jnp.arange(small.n_kv_heads), kv_heads])[new // group] * group + new % group
  else:
    heads = kv_heads
  return (heads[:, None] * small.d_head + jnp.arange(small.d_head)[None, :]).reshape(-1)


def _expander_init(rng, plan: Plan, expander: str, layer: int | None, options: GrowthOptions) -> jax.Array:
  small, large = plan.small, plan.large
  key = rng if layer is None else jax.random.fold_in(rng, layer)
  n, n_new = small.size(expander), large.size(expander)
  # Q, K and V of a layer select from the same key (the same heads); their noise differs.
  source = _selection(key, small, large, expander, options.width)
  rows = jax.nn.one_hot(source, n, dtype=jnp.float32)
  if options.dense:
    rows = jnp.concatenate([jnp.eye(n, dtype=jnp.float32), rows])
  noise_key = jax.random.fold_in(key, ("embed", "q", "k", "v", "ff").index(expander) + 1)
  return rows + options.noise * jax.random.normal(noise_key, rows.shape, jnp.float32)


def _depth_init(rng, plan: Plan, module: str, options: GrowthOptions) -> jax.Array:
  n, n_new = plan.small.n_layers, plan.large.n_layers
  layers = np.arange(n_new)
  source = layers % n if options.depth == "stack" else layers * n // n_new
  w = np.eye(n, dtype=np.float32)[source]
  if options.depth == "identity" and module in ("attention/o", "ff/out", "ff/down"):
    first = np.searchsorted(source, np.arange(n))      # the first large layer of each small layer's run
    w[np.setdiff1d(layers, first)] = 0.0               # the copies after it add nothing to the residual stream
  noise = options.noise * jax.random.normal(jax.random.fold_in(rng, plan.modules.index(module)), w.shape)
  return jnp.asarray(w) + noise


def init_operator(rng: jax.Array, plan: Plan, options: GrowthOptions = GrowthOptions()) -> dict:
  """The operator's params: `width/<expander>` (new rows C, or the whole B when dense; per small layer for q, k, v,
  ff) for each axis that grows, and `depth/<module>` (L_large x L_small) for each block module."""
  width_rng, depth_rng = jax.random.split(rng)
  width = {}
  for expander in plan.grown:
    key = jax.random.fold_in(width_rng, 0 if expander == "embed" else 1 if expander in ("q", "k", "v") else 2)
    if expander == "embed":
      width[expander] = _expander_init(key, plan, expander, None, options)
    else:
      width[expander] = jnp.stack([_expander_init(key, plan, expander, j, options)
                                   for j in range(plan.small.n_layers)])
  depth = {module.replace("/", "_"): _depth_init(depth_rng, plan, module, options) for module in plan.modules}
  return {"width": width, "depth": depth}


def operator_size(plan: Plan, options: GrowthOptions = GrowthOptions()) -> int:
  """The operator's parameter count: Σ over grown expanders of (n' - n)·n (n'·n when dense; per small layer for
  q, k, v, ff) + Σ over block modules of L'·L."""
  total = 0
  for expander in plan.grown:
    n, n_new = plan.small.size(expander), plan.large.size(expander)
    total += (n_new if options.dense else n_new - n) * n * (1 if expander == "embed" else plan.small.n_layers)
  return total + len(plan.modules) * plan.large.n_layers * plan.small.n_layers


# --- Applying it ---------------------------------------------------------------------------------------------------

def _writers_and_readers(plan: Plan, operator: dict) -> tuple[dict, dict]:
  """B and A = B diag(BᵀB)⁻¹ of each grown expander (per layer: a leading axis)."""
  writers, readers = {}, {}
  for expander in plan.grown:
    learned = operator["width"][expander]
    if learned.shape[-2] == plan.large.size(expander):   # dense: the whole B is learned
      b = learned
    else:
      eye = jnp.eye(plan.small.size(expander), dtype=learned.dtype)
      eye = jnp.broadcast_to(eye, learned.shape[:-2] + eye.shape)
      b = jnp.concatenate([eye, learned], axis=-2)
    writers[expander] = b
    readers[expander] = b / jnp.sum(b * b, axis=-2, keepdims=True)
  return writers, readers


def _multiply(x, matrix, axis: int, per_layer: bool):
  """x with its `axis` (from the end) multiplied by `matrix` (n' x n, or L x n' x n matching x's leading axis)."""
  x = jnp.moveaxis(x, axis, -1)
  x = jnp.einsum("l...n,lmn->l...m", x, matrix) if per_layer else jnp.einsum("...n,mn->...m", x, matrix)
  return jnp.moveaxis(x, -1, axis)


def expand(plan: Plan, operator: dict, small_params) -> Any:
  """The large model's params: the operator applied to the small ones (inside a jitted step, or to materialise)."""
  writers, readers = _writers_and_readers(plan, operator)
  grown = {}
  for path, x in leaves_with_paths(small_params):
    rule = plan.rules.get(path)
    if rule is None:
      raise GrowthError(f"grow: {path!r} is not in the operator's plan (the small params changed structure)")
    steps = [(axis, (writers if side == "B" else readers)[name]) for axis, name, side in rule.axes
             if name in writers]
    if len(steps) == 2:   # multiply along the axis that grows the tensor less first (ff: 100M vs 150M MACs)
      (a0, m0), (a1, m1) = steps
      if m0.shape[-2] * m0.shape[-1] * x.shape[a1] > m1.shape[-2] * m1.shape[-1] * x.shape[a0]:
        steps = steps[::-1]
    for axis, matrix in steps:
      x = _multiply(x, matrix, axis, per_layer=matrix.ndim == 3)
    if rule.module is not None:
      x = jnp.einsum("ml,l...->m...", operator["depth"][rule.module.replace("/", "_")].astype(x.dtype), x)
    grown[path] = x
  return unflatten(grown)
