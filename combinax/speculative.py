"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes `k` tokens one by
one, the target model scores all of them in one call, and as many as the target agrees with are kept, plus one
token of the target's own. Greedy, the output is the target's greedy output token for token; sampling, each token
is distributed exactly as the target's (a proposal d drawn from the draft's q is kept with probability
min(1, p(d) / q(d)), else a token is drawn from max(0, p - q), normalised).

Both models decode with their KV caches (predict mode, as `autoregressive_sample` uses them). After each round their
decoding states are rewound past the rejected proposals (`Layer.rewind`: a cache moves its `index` back, the
positions beyond it being masked, and overwritten when fed again), so the draft and the target must be models whose
every layer can rewind (Transformers; not RNNs, whose carries cannot be rolled back: `decoding.rewind_blocker`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from combinax.decoding import (cache_positions, check_model, check_sampling, init_state, next_token_logits,
                               rewind_blocker, sampled_logits)
from combinax.layers.base import Layer
from combinax.shapes import ShapeDtype


class SpeculationStats(NamedTuple):
  """How a speculative run went: `rounds` (target calls), `accepted` (draft tokens kept, over all rounds), and
  `acceptance_rate` (accepted / (rounds x k)); each round also makes one token of the target's own."""
  rounds: int
  accepted: int
  acceptance_rate: float


def speculative_sample(target: Layer, target_params, draft: Layer, draft_params, prompt, *, max_length: int,
                       k: int = 4, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                       eos_id: int | None = None, rng=None, start_id: int | None = 0,
                       pad_id: int = 0) -> tuple[jax.Array, SpeculationStats]:
  """`max_length` tokens after each prompt (int (batch, length), all of one length), as `autoregressive_sample`
  would make them with `target`, proposed `k` at a time by `draft`; returns (tokens int32 (batch, max_length),
  `SpeculationStats`). Both models are built with `mode="predict"` and a `max_len` of at least the prompt (+1 with a
  start token) + max_length + k; they share the vocabulary. The other arguments are `autoregressive_sample`'s.
  With several sequences, a round keeps the proposals every one of them accepted."""
  check_sampling(max_length, temperature, top_k, top_p)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k: expected a positive number of draft tokens per round, got {k!r}")
  if temperature != 0 and rng is None:
    raise ValueError("sampling with temperature > 0 needs an rng (or use temperature=0 for greedy decoding)")
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2:
    raise ValueError(f"prompt: expected int (batch, length), got shape {prompt.shape}")
  fed = prompt.shape[1] + (start_id is not None)
  if fed < 1:
    raise ValueError("start_id=None feeds each prompt as it is, so the prompt needs at least one token")
  for name, model in (("target", target), ("draft", draft)):
    try:
      check_model(model, fed + max_length + k, None)
    except ValueError as e:
      raise ValueError(f"{name}: {e} (speculating {k} tokens ahead)") from None
    blocker = rewind_blocker(model)
    if blocker is not None:
      raise ValueError(f"{name}: speculative decoding rewinds the decoding state past rejected tokens, which "
                       f"{blocker.name} ({type(blocker).__name__}: a recurrent carry) cannot do; use a model whose "
                       "state is its attention caches (a Transformer)")
  # (Else greedy decoding runs on, comparing ids of two vocabularies, and sampling fails inside the compiled loop
  # with a broadcasting error that names neither model.)
  check_draft(target, draft)
  batch = prompt.shape[0]
  settings = _Speculation(int(k), int(max_length), float(temperature), top_k, top_p, start_id, pad_id)
  tokens, rounds, accepted = _speculate(target, draft, settings, target_params, draft_params,
                                        *(init_state(m, batch, None, cache_positions(m, fed + max_length + k))
                                          for m in (target, draft)), prompt,
                                        jax.random.key(0) if rng is None else rng)
  if eos_id is not None:   # as the plain sampler: the EOS is kept, then padding
    after = jnp.cumsum(tokens == eos_id, axis=1) - (tokens == eos_id) > 0
    tokens = jnp.where(after, pad_id, tokens)
  rounds, accepted = int(rounds), int(accepted)
  return tokens, SpeculationStats(rounds, accepted, accepted / max(rounds * k, 1))


def check_draft(target: Layer, draft: Layer, *, target_name: str = "the target", draft_name: str = "the draft"):
  """A ValueError naming both vocabulary sizes unless `draft` predicts as many tokens as `target` (the draft's
  proposals are ids of the target's vocabulary: it must use the target's tokenizer). Either mode of each model."""
  target_size, draft_size = vocabulary_size(target), vocabulary_size(draft)
  if target_size != draft_size:
    raise ValueError(f"{draft_name} predicts {draft_size} tokens and {target_name} {target_size}: a draft must use "
                     f"{target_name}'s tokenizer")


@functools.lru_cache(maxsize=32)
def vocabulary_size(model: Layer) -> int:
  """How many tokens a language model predicts (the last axis of its logits), from its shapes alone: nothing runs.
  Kept per model (layers are hashable), so that a session decoding prompt after prompt traces it once."""
  return model.output_signature(ShapeDtype((1, 1), jnp.int32)).shape[-1]


class _Speculation(NamedTuple):
  """What `_speculate` compiles for (hashable)."""
  k: int
  max_length: int
  temperature: float
  top_k: int | None
  top_p: float | None
  start_id: int | None
  pad_id: int


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _speculate(target, draft, settings: _Speculation, target_params, draft_params, target_state, draft_state,
               prompt, rng):
  k, max_length, temperature, top_k, top_p, start_id, pad_id = settings
  greedy = temperature == 0
  batch = prompt.shape[0]
  sequence = prompt if start_id is None else jnp.concatenate(
      [jnp.full((batch, 1), start_id, jnp.int32), prompt], axis=1)
  length = sequence.shape[1]
  buffer = jnp.pad(sequence, ((0, 0), (0, max_length + k + 1)), constant_values=pad_id)
  if length > 1:   # the caches hold every committed token but the last, the one fed next
    _, target_state = target.apply(target_params, target_state, sequence[:, :-1])
    _, draft_state = draft.apply(draft_params, draft_state, sequence[:, :-1])

  def distribution(logits):
    return jax.nn.softmax(sampled_logits(logits, temperature, top_k, top_p), axis=-1)

  def propose(carry, i):
    token, state, key = carry
    logits, state = next_token_logits(draft, draft_params, state, None, token[:, None])
    if greedy:
      nxt, q = jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.zeros((batch, 0))
    else:
      q = distribution(logits)
      nxt = jax.random.categorical(jax.random.fold_in(key, i), jnp.log(q), axis=-1).astype(jnp.int32)
    return (nxt, state, key), (nxt, q)

  def round_(carry):
    n, pending, buffer, target_state, draft_state, rounds, accepted = carry
    key = jax.random.fold_in(rng, rounds)
    # k + 1 draft steps: they feed the pending token and the k proposals (the last step's sample is not used), so
    # the draft's cache holds every proposal the target may accept.
    (_, draft_state, _), (proposed, q) = lax.scan(propose, (pending, draft_state, jax.random.fold_in(key, 0)),
                                                  jnp.arange(k + 1))
    proposals = proposed[:k].T                                                # (batch, k)
    logits, target_state = target.apply(target_params, target_state,
                                        jnp.concatenate([pending[:, None], proposals], axis=1))
    logits = logits.astype(jnp.float32)                                       # (batch, k + 1, vocab)
    if greedy:
      choice = jnp.argmax(logits, axis=-1).astype(jnp.int32)                 # the target's own token at each place
      agree = proposals == choice[:, :k]
    else:
      vocab = logits.shape[-1]
      p = distribution(logits.reshape(-1, vocab)).reshape(batch, k + 1, vocab)
      q = jnp.moveaxis(q[:k], 0, 1)                                           # (batch, k, vocab)
      p_d = jnp.take_along_axis(p[:, :k], proposals[..., None], axis=-1)[..., 0]
      q_d = jnp.take_along_axis(q, proposals[..., None], axis=-1)[..., 0]
      agree = jax.random.uniform(jax.random.fold_in(key, 1), (batch, k)) * q_d < p_d   # P = min(1, p / q)
    kept = jnp.sum(jnp.cumprod(agree, axis=1), axis=1)                        # per sequence
    a = jnp.min(kept)                                                         # what every sequence accepted
    if greedy:
      token = choice[:, a]    # a sequence that also accepted proposal a + 1 has it as the target's own token
    else:
      p_a = p[:, a]
      q_a = jnp.take(q, jnp.minimum(a, k - 1), axis=1)
      residual = jnp.where(a < k, jnp.maximum(p_a - q_a, 0.0), p_a)
      residual = jnp.where(jnp.sum(residual, axis=-1, keepdims=True) > 0, residual, p_a)   # p == q: nothing left
      resampled = jax.random.categorical(jax.random.fold_in(key, 2), jnp.log(residual), axis=-1).astype(jnp.int32)
      token = jnp.where(kept > a, proposals[:, jnp.minimum(a, k - 1)], resampled)
    place = jnp.arange(k + 1)[None, :]
    window = lax.dynamic_slice_in_dim(buffer, n, k + 1, axis=1)
    written = jnp.where(place < a, jnp.pad(proposals, ((0, 0), (0, 1))), jnp.where(place == a, token[:, None],
                                                                                  window))
    buffer = lax.dynamic_update_slice_in_dim(buffer, written, n, axis=1)
    n = n + a + 1
    # Back to every committed token but the last: the rejected proposals leave the caches.
    return (n, token, buffer, target.rewind(target_state, n - 1), draft.rewind(draft_state, n - 1), rounds + 1,
            accepted + a)

  def not_finished(carry):
    return carry[0] < length + max_length

  carry = (jnp.int32(length), sequence[:, -1], buffer, target_state, draft_state, jnp.int32(0), jnp.int32(0))
  _, _, buffer, _, _, rounds, accepted = lax.while_loop(not_finished, round_, carry)
  return buffer[:, length:length + max_length], rounds, accepted

