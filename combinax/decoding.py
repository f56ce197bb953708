"""Autoregressive sampling and beam search with predict-mode models (KV caches and RNN carries kept in `state`).

A model built with `mode="predict"` continues its sequence on each call. Both functions below run their whole
decoding loop inside one `jax.jit`-compiled `lax.while_loop`: one compilation per shape and setting, none per token.

Conventions (those of `TransformerLM`, `Transformer` and `RNNLM`, whose inputs are shifted right inside): the
decoder is fed `start_id` first and then each token in turn, and its logits at a position predict the token there.
A decoder-only model maps ids (batch, n) to logits (batch, n, vocab); an encoder-decoder maps (inputs, ids); a model
of more inputs takes a tuple of them before its ids (an `ImagePrefixLM`'s (images, prompt lengths)). Those `inputs`
are passed to every call: a model computes what it needs from them once (`cl.Cache`, `cl.Prefill`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import io_callback

from combinax import shapes
from combinax.layers import attention
from combinax.layers.base import Layer, walk


def check_model(model: Layer, n_positions: int, inputs=None):
  """A ValueError unless `model` can decode `n_positions` positions (and those its first call fills before them:
  `prefilled_positions`): built with mode="predict", every layer's `max_positions` at least that, and taking
  (inputs, ids) if `inputs` are given (an encoder-decoder; a tuple of n_in - 1 inputs for a model of more), ids
  alone if not."""
  given = 0 if inputs is None else 1 if model.n_in <= 2 or not isinstance(inputs, (tuple, list)) else len(inputs)
  if model.n_in != given + 1:
    needs = ("no inputs= (decoder-only)" if model.n_in == 1 else "inputs= (an encoder-decoder)" if model.n_in == 2
             else f"inputs= a tuple of the {model.n_in - 1} inputs before its ids")
    got = "none" if inputs is None else f"{given}"
    raise ValueError(f"{model.name}: a model with n_in={model.n_in} needs {needs}; got {got}")
  if not model.decodes:
    raise ValueError(f"{model.name}: decoding needs the model built with mode='predict' (it keeps no decoding state)")
  n_positions += prefilled_positions(model, inputs)   # an image before the text takes positions too
  for layer in walk(model):
    if layer.max_positions is not None and layer.max_positions < n_positions:
      raise ValueError(f"{model.name}: decoding {n_positions} positions needs max_len >= {n_positions}, "
                       f"but {layer.name} has max_len={layer.max_positions}")


def max_positions(model: Layer) -> int | None:
  """The most positions `model` can decode: the smallest `max_positions` among its layers, or None if unbounded."""
  return min((layer.max_positions for layer in walk(model) if layer.max_positions is not None), default=None)


def prefilled_positions(model: Layer, inputs) -> int:
  """The positions a predict-mode model's first call puts in its caches before its tokens (an `ImagePrefixLM`'s
  image: `Layer.prefilled_positions`), which the caches must hold too; 0 for most models."""
  if inputs is None:
    return 0
  sig = _state_signature(model, 1, inputs)
  return sum(layer.prefilled_positions(sig) for layer in walk(model))


def check_sampling(max_length, temperature, top_k, top_p):
  """Each sampling setting in its range, or a ValueError naming it, what it must be and what it was."""
  problems = []
  if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
    problems.append(f"max_length: expected a positive number of tokens, got {max_length!r}")
  if not isinstance(temperature, (int, float, np.number)) or not np.isfinite(temperature) or temperature < 0:
    problems.append(f"temperature: expected a finite number >= 0 (0 is greedy), got {temperature!r}")
  if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
    problems.append(f"top_k: expected None or a positive number of tokens, got {top_k!r}")
  if top_p is not None and not (isinstance(top_p, (int, float, np.number)) and 0 < top_p <= 1):
    problems.append(f"top_p: expected None or a probability in (0, 1], got {top_p!r}")
  if problems:
    raise ValueError("; ".join(problems))


def _as_prompt(prompt, inputs, batch_size: int):
  """The prompt as int32 (batch, length); no prompt is an empty one for each input (or `batch_size` of them)."""
  if prompt is None:
    batch = batch_size if inputs is None else jax.tree_util.tree_leaves(inputs)[0].shape[0]
    prompt = np.zeros((batch, 0), np.int32)
  return jnp.asarray(prompt, jnp.int32)


def _with_ids(model: Layer, inputs, ids):
  """A decoder's inputs for one call: `ids` alone, (inputs, ids) for an encoder-decoder, (*inputs, ids) for more."""
  if inputs is None:
    return ids
  return (*inputs, ids) if model.n_in > 2 else (inputs, ids)


def _state_signature(model: Layer, batch: int, inputs):
  """What a decoder is initialised with for `batch` sequences: one token each (after the encoder's inputs)."""
  ids = shapes.ShapeDtype((batch, 1), jnp.int32)
  if inputs is None:
    return ids
  resized = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((batch,) + x.shape[1:], x.dtype), inputs)
  return _with_ids(model, shapes.signature(resized), ids)


def init_state(model: Layer, batch: int, inputs=None, positions: int | None = None):
  """`model`'s decoding state before its first call, for `batch` sequences (and an encoder-decoder's `inputs`, of
  any batch: only their shapes count), its KV caches holding `positions` positions (None: each its `max_len`; see
  `cache_positions`). Compiled once per model and shapes; the params are not computed."""
  sig = _state_signature(model, batch, inputs)
  leaves, tree = jax.tree_util.tree_flatten(sig)
  return _zero_state(model, tree, tuple(leaves), positions)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _zero_state(model: Layer, tree, leaves, positions):
  # Compiled once per model and signature: a fresh `jax.jit(lambda: ...)` at each call traced and compiled the
  # model's init every time, 160 ms of SmolLM2's 216 ms to its first token. (Shortened inside: the full-length
  # zeros are never made.)
  state = model.init(jax.random.key(0), jax.tree_util.tree_unflatten(tree, leaves))[1]
  return state if positions is None else model.shorten(state, positions)


def cache_positions(model: Layer, n_positions: int, inputs=None) -> int | None:
  """The KV cache length a call that feeds `n_positions` positions (after those its first call fills: an image's)
  decodes with: that many rounded up to a whole number of `attention.CACHE_BLOCK`s, at most the model's
  `max_positions`; None for a model with no bounded cache (an RNN's carry).

  A step reads and writes its caches whole outside the attention (the scan over the layers passes each layer's
  cache in and out: three copies of it a step, read on the compiled HLO), so a cache of `max_len` = 8,192 made
  SmolLM2's steps 4.5x slower than one of 160 with the same tokens in it; sized to what the call fills, a step costs
  what its positions do, whatever `max_len` the model was built with."""
  capacity = max_positions(model)
  if capacity is None:
    return None
  needed = n_positions + prefilled_positions(model, inputs)
  block = attention.CACHE_BLOCK
  return min(capacity, -(-needed // block) * block)


def next_token_logits(model: Layer, params, state, inputs, ids):
  """Feeds `ids` (batch, n) to a predict-mode `model` (after an encoder-decoder's `inputs`, or None); returns the
  float32 logits (batch, vocab) of the last position, which predict the token after `ids`, and the new state."""
  logits, state = model.apply(params, state, _with_ids(model, inputs, ids))
  return logits[:, -1].astype(jnp.float32), state


def sample_logits(logits, rng, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
  """One token per row of `logits` (batch, vocab): arg-max when temperature is 0, else a sample from
  softmax(logits / temperature) restricted to the `top_k` most likely tokens and/or the smallest set whose
  probability reaches `top_p` (nucleus sampling)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, sampled_logits(logits, temperature, top_k, top_p), axis=-1).astype(jnp.int32)


def sampled_logits(logits, temperature: float, top_k: int | None = None, top_p: float | None = None):
  """The logits `sample_logits` samples from (temperature > 0): divided by the temperature, -inf outside the top_k
  and the top_p nucleus; their softmax is the distribution of its tokens. A token stays when fewer than `top_k`
  tokens are strictly likelier, and when the tokens strictly likelier hold less than `top_p` of the probability
  (after top_k), so tokens tied at the boundary stay or go together."""
  if top_k is not None and top_k > logits.shape[-1]:
    raise ValueError(f"top_k: expected at most the vocabulary's {logits.shape[-1]} tokens, got {top_k}")
  logits = logits / temperature
  if top_k is not None:
    keys = _ordered_keys(logits)
    logits = jnp.where(keys >= _threshold_key(keys, jnp.ones((), jnp.int32), top_k), logits, -jnp.inf)
  if top_p is not None and top_p < 1:   # 1 keeps every token (float32 sums of the tail may round up to 1)
    keys = _ordered_keys(logits)
    logits = jnp.where(keys >= _threshold_key(keys, jax.nn.softmax(logits, axis=-1), top_p), logits, -jnp.inf)
  return logits


def _ordered_keys(x):
  """uint32 keys that order as the float32 values `x` do (-inf lowest): the sign bit flipped for positive values,
  every bit for negative ones."""
  bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _threshold_key(keys, weights, limit):
  """Per row of `keys` (batch, vocab), the smallest key K whose strictly larger keys weigh less than `limit`
  (`weights` broadcast against keys): keys >= K are the top-k (weights 1, limit k) or the nucleus (weights the
  probabilities, limit top_p). A bisection over the 2^32 keys, 32 masked sums: sorting the vocabulary instead
  (argsort, or lax.top_k once its result meets the logits in one fusion) took 300-450 ms a step for 32 rows of
  SmolLM2's 49,152 tokens on XLA:CPU, this takes 25-50 ms."""
  def halve(_, bounds):
    low, high = bounds
    middle = low + (high - low) // 2
    light = jnp.sum(jnp.where(keys > middle[..., None], weights, 0), axis=-1) < limit
    return jnp.where(light, low, middle + 1), jnp.where(light, middle, high)
  rows = keys.shape[:-1]
  start = (jnp.zeros(rows, jnp.uint32), jnp.full(rows, 0xFFFFFFFF, jnp.uint32))
  return lax.fori_loop(0, 32, halve, start)[1][..., None]


def autoregressive_sample(model: Layer, params, prompt=None, *, max_length: int = 100, temperature: float = 1.0,
                          top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                          rng=None, inputs=None, prompt_lengths=None, start_id: int | None = 0, pad_id: int = 0,
                          batch_size: int = 1, on_token=None):
  """Generates `max_length` tokens after each prompt; returns int32 (batch, max_length), `pad_id` after an EOS.

  Args:
    model: a decoder-only model or an encoder-decoder, built with `mode="predict"` and `max_len` at least the
      longest prompt + max_length.
    params: the model's params (the same as in training: paths do not depend on the mode).
    prompt: int (batch, prompt length) or None. Prompts of different lengths are padded at the end and their
      lengths given in `prompt_lengths` (host values); the common prefix is filled in one call (prefill).
    temperature, top_k, top_p: sampling (temperature 0 is greedy); eos_id: where a sequence ends.
    rng: needed unless greedy. inputs: the encoder's inputs for an encoder-decoder.
    start_id: the token fed before each prompt, as the model saw one before every training sequence (combinax's
      LMs shift their inputs right by one token 0); None feeds the prompt as it is, for a model trained without one
      (e.g. an imported LM whose tokenizer adds no BOS: SmolLM2), so it sees exactly the context its reference sees.
    on_token: streaming: called on the host with each new position's tokens (a numpy int32 (batch,) array; `pad_id`
      for a sequence already ended) as soon as they are made, in order, while the loop goes on. Prompts must be of
      one length. It is part of what is compiled: pass the same function each time (not a new lambda per call).
  """
  check_sampling(max_length, temperature, top_k, top_p)
  prompt = _as_prompt(prompt, inputs, batch_size)
  batch, width = prompt.shape
  lengths = np.full((batch,), width) if prompt_lengths is None else np.asarray(prompt_lengths)
  if lengths.shape != (batch,) or lengths.min() < 0 or lengths.max() > width:
    raise ValueError(f"prompt_lengths must be {batch} lengths within 0..{width}, got {prompt_lengths}")
  if temperature != 0 and rng is None:
    raise ValueError("sampling with temperature > 0 needs an rng (or use temperature=0 for greedy decoding)")
  if on_token is not None and not callable(on_token):
    raise ValueError(f"on_token: expected a function of the new tokens, got {on_token!r}")
  if on_token is not None and lengths.min() != width:
    raise ValueError(f"on_token streams one position of every sequence at a time, so the prompts must be of one "
                     f"length; got prompt_lengths {lengths.tolist()}")
  if start_id is None and lengths.min() < 1:
    raise ValueError("start_id=None feeds each prompt as it is, so every prompt needs at least one token; got a "
                     f"prompt of length {lengths.min()}")
  total = int(lengths.max()) + max_length
  check_model(model, total, inputs)
  if lengths.min() != width and prefilled_positions(model, inputs):
    raise ValueError(f"{model.name} fills its prefix (an image, the start token and the prompt) in its first call, "
                     f"so its prompts must be of one length in a batch; got prompt_lengths {lengths.tolist()}")
  bucket = _bucket(model, width, max_length, start_id)
  if bucket is not None:   # one compilation for every prompt width up to the bucket's
    prompt = jnp.pad(prompt, ((0, 0), (0, bucket - width)), constant_values=pad_id)
  state = init_state(model, batch, inputs, cache_positions(model, prompt.shape[1] + max_length + 1, inputs))
  rng = jax.random.key(0) if rng is None else rng
  settings = _Sampling(None if bucket is not None else int(lengths.min()), prompt.shape[1] + max_length, max_length,
                       float(temperature), top_k, top_p, eos_id, start_id, pad_id, on_token)
  return _sample(model, settings, params, state, prompt, jnp.asarray(lengths, jnp.int32), inputs, rng)


def rewind_blocker(model: Layer) -> Layer | None:
  """The first layer of `model` (depth first) whose own decoding state cannot be rewound to an earlier position
  (an RNN's carry: see `Layer.rewindable`), or None: then `model.rewind(state, index)` takes the whole state back
  (speculative decoding and prompt buckets rely on it)."""
  for layer in walk(model):
    if not layer.rewindable and all(child.rewindable for child in layer.sublayers):
      return layer
  return None


def _bucket(model: Layer, width: int, max_length: int, start_id) -> int | None:
  """The width a prompt of `width` is padded to, so that prompts of nearby widths share one compilation: the next
  power of two, at least 16; None (no padding) when the model's state cannot be rewound past the padding or its cache
  has no room for it. The padded positions are filled with the prompt in one call and then rewound."""
  bucket = max(16, 1 << max(width - 1, 0).bit_length())
  capacity = max_positions(model)
  needed = bucket + max_length + (start_id is not None)
  if rewind_blocker(model) is not None or (capacity is not None and needed > capacity):
    return None
  return bucket


class _Sampling(NamedTuple):
  """What `_sample` compiles for (hashable: one compilation per model and settings)."""
  shortest: int | None   # the shortest prompt: positions before it are filled in one call; None: the whole padded
                         # prompt is, and the state is rewound to the shortest prompt (prompt buckets)
  total: int             # the (padded) prompt's width + max_length
  max_length: int
  temperature: float
  top_k: int | None
  top_p: float | None
  eos_id: int | None
  start_id: int | None
  pad_id: int
  on_token: object = None   # a host function of each position's new tokens (streaming), or None


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sample(model, settings: _Sampling, params, state, prompt, lengths, inputs, rng):
  shortest, total, max_length, temperature, top_k, top_p, eos_id, start_id, pad_id, on_token = settings
  batch = prompt.shape[0]
  buffer = jnp.pad(prompt, ((0, 0), (0, total - prompt.shape[1])), constant_values=pad_id)
  fed = buffer[:, :prompt.shape[1] if shortest is None else shortest]
  if start_id is not None:
    fed = jnp.concatenate([jnp.full((batch, 1), start_id, jnp.int32), fed], axis=1)
  if shortest is not None:
    logits, state = next_token_logits(model, params, state, inputs, fed)   # prefill: logits for position `shortest`
    start = jnp.int32(shortest)
  else:   # the whole padded prompt in one call, then back to the shortest prompt's end
    start = jnp.min(lengths)
    committed = start + (start_id is not None)                      # tokens fed up to position `start`
    all_logits, state = model.apply(params, state, _with_ids(model, inputs, fed))
    logits = lax.dynamic_index_in_dim(all_logits, committed - 1, axis=1, keepdims=False).astype(jnp.float32)
    state = model.rewind(state, committed)

  def body(carry):
    t, logits, state, buffer, done = carry
    candidate = sample_logits(logits, jax.random.fold_in(rng, t), temperature, top_k, top_p)
    in_prompt = t < lengths
    token = jnp.where(in_prompt, buffer[:, t], jnp.where(done, pad_id, candidate))
    if eos_id is not None:
      done = done | (~in_prompt & (token == eos_id))
    buffer = buffer.at[:, t].set(token)
    if on_token is not None:   # ordered: the host sees the positions in turn, while the loop goes on
      io_callback(lambda tokens: on_token(np.asarray(tokens)), None, token, ordered=True)
    logits, state = next_token_logits(model, params, state, inputs, token[:, None])
    return t + 1, logits, state, buffer, done

  end = jnp.max(lengths) + max_length

  def not_finished(carry):
    t, _, _, _, done = carry
    return (t < end) & ~jnp.all(done)

  done = jnp.zeros((batch,), jnp.bool_)
  _, _, _, buffer, _ = lax.while_loop(not_finished, body, (start, logits, state, buffer, done))
  generated = jnp.take_along_axis(buffer, lengths[:, None] + jnp.arange(max_length)[None, :], axis=1)
  return generated


def _batch_axes(model: Layer, batch: int, inputs) -> tuple:
  """For each leaf of the decoding state (in `tree_leaves` order), the axis that indexes the batch, or None:
  found by asking for the state of one more sequence and seeing which axis grows."""
  def abstract(n):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), _state_signature(model, n, inputs))[1])

  def axis(a, b):
    changed = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
    return changed[0] if changed else None

  return tuple(axis(a, b) for a, b in zip(jax.tree_util.tree_leaves(abstract(batch)),
                                          jax.tree_util.tree_leaves(abstract(batch + 1))))


def beam_search(model: Layer, params, prompt=None, *, max_length: int = 100, beam_size: int = 4,
                eos_id: int | None = None, length_penalty: float = 0.6, inputs=None, start_id: int = 0,
                pad_id: int = 0, batch_size: int = 1):
  """The `beam_size` most likely continuations of each prompt, batched.

  Scores are log-probabilities divided by the GNMT length penalty ((5 + length) / 6) ** length_penalty; a sequence
  ends at `eos_id` (kept, then `pad_id`). Prompts share one length. Returns (sequences int32 (batch, beam_size,
  max_length), scores (batch, beam_size)), best first. With beam_size 1 and length_penalty 0 it is greedy decoding.
  """
  check_sampling(max_length, 0.0, None, None)
  if isinstance(beam_size, bool) or not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
    raise ValueError(f"beam_size: expected a positive number of beams, got {beam_size!r}")
  prompt = _as_prompt(prompt, inputs, batch_size)
  batch = prompt.shape[0]
  check_model(model, prompt.shape[1] + max_length, inputs)
  wide_inputs = None if inputs is None else jax.tree_util.tree_map(lambda x: jnp.repeat(x, beam_size, axis=0),
                                                                   inputs)
  state = init_state(model, batch * beam_size, wide_inputs,
                     cache_positions(model, prompt.shape[1] + max_length + 1, wide_inputs))
  axes = _batch_axes(model, batch * beam_size, wide_inputs)
  settings = _Beams(axes, batch, beam_size, max_length, eos_id, float(length_penalty), start_id, pad_id)
  return _beam(model, settings, params, state, jnp.repeat(prompt, beam_size, axis=0), wide_inputs)


def _penalty(length, alpha: float):
  return ((5.0 + length) / 6.0) ** alpha


class _Beams(NamedTuple):
  """What `_beam` compiles for (hashable)."""
  axes: tuple            # each decoding-state leaf's batch axis (`_batch_axes`)
  batch: int
  beam_size: int
  max_length: int
  eos_id: int | None
  alpha: float           # the length penalty's exponent
  start_id: int
  pad_id: int


@functools.partial(jax.jit, static_argnums=(0, 1))
def _beam(model, settings: _Beams, params, state, prompt, inputs):
  axes, batch, k, max_length, eos_id, alpha, start_id, pad_id = settings
  fed = jnp.concatenate([jnp.full((batch * k, 1), start_id, jnp.int32), prompt], axis=1)
  logits, state = next_token_logits(model, params, state, inputs, fed)
  vocab = logits.shape[-1]
  neg = jnp.float32(-1e9)
  alive_scores = jnp.tile(jnp.array([0.0] + [neg] * (k - 1), jnp.float32), (batch, 1))   # only beam 0 starts
  alive = jnp.full((batch, k, max_length), pad_id, jnp.int32)
  finished = jnp.full((batch, k, max_length), pad_id, jnp.int32)
  finished_scores = jnp.full((batch, k), neg)

  def reorder(state, beams):
    """Each new beam takes over the decoding state (caches, carries) of the beam it grew from."""
    flat = (jnp.arange(batch)[:, None] * k + beams).reshape(-1)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    moved = [x if a is None else jnp.take(x, flat, axis=a) for x, a in zip(leaves, axes)]
    return jax.tree_util.tree_unflatten(treedef, moved)

  def body(carry):
    t, logits, state, alive, alive_scores, finished, finished_scores = carry
    log_probs = jax.nn.log_softmax(logits).reshape(batch, k, vocab)
    candidates = (alive_scores[:, :, None] + log_probs).reshape(batch, k * vocab)
    scores, index = lax.top_k(candidates, 2 * k)                    # 2k: k of them are not EOS
    beams, tokens = index // vocab, (index % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive, beams[:, :, None], axis=1).at[:, :, t].set(tokens)
    is_eos = tokens == eos_id if eos_id is not None else jnp.zeros_like(tokens, jnp.bool_)
    # The k best candidates that go on.
    live_scores, live = lax.top_k(jnp.where(is_eos, neg, scores), k)
    alive = jnp.take_along_axis(seqs, live[:, :, None], axis=1)
    state = reorder(state, jnp.take_along_axis(beams, live, axis=1))
    # The k best ended sequences so far.
    ended_scores = jnp.where(is_eos, scores / _penalty(t + 1.0, alpha), neg)
    pool_scores = jnp.concatenate([finished_scores, ended_scores], axis=1)
    finished_scores, best = lax.top_k(pool_scores, k)
    finished = jnp.take_along_axis(jnp.concatenate([finished, seqs], axis=1), best[:, :, None], axis=1)
    alive_tokens = jnp.take_along_axis(tokens, live, axis=1).reshape(-1)
    logits, state = next_token_logits(model, params, state, inputs, alive_tokens[:, None])
    return t + 1, logits, state, alive, live_scores, finished, finished_scores

  def go_on(carry):
    t, _, _, _, alive_scores, _, finished_scores = carry
    # Log-probabilities only fall: the best live beam at full length bounds what any live beam can still reach.
    best_possible = alive_scores[:, 0] / _penalty(float(max_length), alpha) if alpha >= 0 else alive_scores[:, 0]
    return (t < max_length) & jnp.any(best_possible > finished_scores[:, -1])

  carry = (jnp.int32(0), logits, state, alive, alive_scores, finished, finished_scores)
  t, _, _, alive, alive_scores, finished, finished_scores = lax.while_loop(go_on, body, carry)
  # Beams still alive at the end compete with the ended ones at their full length.
  pool = jnp.concatenate([finished, alive], axis=1)
  pool_scores = jnp.concatenate([finished_scores, alive_scores / _penalty(t.astype(jnp.float32), alpha)], axis=1)
  scores, best = lax.top_k(pool_scores, k)
  return jnp.take_along_axis(pool, best[:, :, None], axis=1), scores


# Speculative decoding lives in its own module (it needs the helpers above); it is part of this one's surface.
from combinax.speculative import SpeculationStats, speculative_sample  # noqa: E402,F401
