"""RETRO as a TransformerLM option: the plain LM's paths, decoding == recomputation, neighbours read only from the
next chunk on, and retro-fitting (only the new layers train, the LM's weights stay bit-identical)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import combinax as cx
from combinax import layers as cl
from combinax.models.transformer import RetroOptions, TransformerLM
from combinax.train.step import TrainStep

KEY = jax.random.key(0)
SMALL = dict(d_model=16, d_ff=32, n_heads=4, dropout=0.0, max_len=32, n_layers=4)
RETRO = RetroOptions(every=2, chunk_size=4, encoder_layers=1)


def ids(shape, seed, low=1, vocab=20):
  return jax.random.randint(jax.random.key(seed), shape, low, vocab, jnp.int32)


def test_a_retro_model_keeps_the_plain_lms_paths_and_starts_as_that_lm():
  tokens, neighbours = ids((2, 12), 0), ids((2, 3, 2, 5), 1, low=0)
  params, state = TransformerLM(20, **SMALL, retro=RETRO).init(KEY, (tokens, neighbours))
  plain_params, _ = TransformerLM(20, **SMALL).init(KEY, tokens)
  lm_part = {key: value for key, value in params.items() if key not in ("retro", "neighbour_encoder")}
  assert cx.paths(lm_part) == cx.paths(plain_params)
  assert jax.tree_util.tree_map(jnp.shape, lm_part) == jax.tree_util.tree_map(jnp.shape, plain_params)
  assert params["retro"]["chunked_cross_attention"]["q"]["kernel"].shape == (2, 16, 16)   # n_layers / every
  assert "embedding" not in str(cx.paths(params["neighbour_encoder"]))                    # the LM's, shared
  # The plain LM's trained weights in a zero-initialised RETRO model compute that LM's function exactly.
  retro_logits = TransformerLM(20, **SMALL, retro=RETRO).apply({**params, **plain_params}, state,
                                                               (tokens, neighbours))[0]
  np.testing.assert_array_equal(retro_logits, TransformerLM(20, **SMALL).apply(plain_params, {}, tokens)[0])


def test_neighbours_retrieved_for_a_chunk_change_only_the_chunks_after_it():
  model = TransformerLM(20, **SMALL, retro=RetroOptions(every=2, chunk_size=4, encoder_layers=1, zero_init=False))
  tokens, neighbours = ids((1, 12), 0), ids((1, 3, 2, 5), 1, low=0)
  params, state = model.init(KEY, (tokens, neighbours))
  logits = model.apply(params, state, (tokens, neighbours))[0]
  changed = model.apply(params, state, (tokens, neighbours.at[:, 1].set(7)))[0]   # chunk 1's neighbours
  np.testing.assert_array_equal(logits[:, :8], changed[:, :8])                  # chunks 0 and 1 never read them
  assert not np.allclose(logits[:, 8:], changed[:, 8:])                          # chunk 2 does
  # ... and the first chunk reads no neighbours at all.
  np.testing.assert_allclose(logits[:, :4], model.apply(params, state, (tokens, neighbours * 0))[0][:, :4],
                             rtol=0, atol=0)


OPTIONS = {
    "scanned": dict(),
    "llama_style_unrolled": dict(n_kv_heads=2, positions="rotary", norm="rms", gated_ff=True, ff_activation=cl.Silu,
                                 use_bias=False, tie_embeddings=True, scan_layers=False),
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_decoding_with_caches_equals_recomputation(options):
  retro = RetroOptions(every=2, chunk_size=3, encoder_layers=1, zero_init=False)
  tokens, neighbours = ids((2, 10), 0), ids((2, 4, 2, 4), 1, low=0)
  params, state = TransformerLM(20, **SMALL, **options, retro=retro).init(KEY, (tokens, neighbours))
  full = TransformerLM(20, **SMALL, **options, retro=retro).apply(params, state, (tokens, neighbours))[0]
  decoder = TransformerLM(20, **SMALL, **options, retro=retro, mode="predict")
  fed = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]                 # predict mode is fed the shifted tokens
  pieces = [fed[:, :4]] + [fed[:, t:t + 1] for t in range(4, 10)]  # a prompt across a chunk boundary, then one by one
  _, state = decoder.init(KEY, (pieces[0], neighbours))
  decoded = []
  for piece in pieces:
    logits, state = decoder.apply(params, state, (piece, neighbours))
    decoded.append(logits)
  np.testing.assert_allclose(jnp.concatenate(decoded, axis=1), full, rtol=1e-4, atol=1e-5)


def test_retro_fitting_trains_only_the_new_layers_and_learns_to_read_the_neighbours():
  """Each chunk repeats one random token; the neighbour retrieved with a chunk holds the next chunk (a continuation,
  as RETRO's neighbours do), the other neighbour is padding. A frozen LM cannot know the next chunk's token: only
  reading the neighbours lowers the loss."""
  m, vocab = 4, 16
  model = TransformerLM(vocab, d_model=32, d_ff=64, n_heads=4, dropout=0.0, max_len=16, n_layers=2,
                        retro=RetroOptions(every=1, chunk_size=m, encoder_layers=1))

  def batch(i):
    tokens = jnp.repeat(ids((16, 3), i, vocab=vocab), m, axis=1)                                  # (16, 3 chunks of m)
    continuation = jnp.concatenate([tokens[:, m:], jnp.zeros((16, m), jnp.int32)], axis=1).reshape(16, 3, 1, m)
    neighbours = jnp.concatenate([continuation, jnp.zeros((16, 3, 1, m), jnp.int32)], axis=2)
    return tokens, neighbours, tokens, jnp.ones(tokens.shape).at[:, :m].set(0.0)   # chunk 0 has nothing to read

  step = TrainStep(model, cl.WeightedCategoryCrossEntropy(), optax.adam(3e-3),
                   trainable=["retro/*", "neighbour_encoder/*"])
  train_state = step.init(KEY, batch(0))
  before = jax.tree_util.tree_map(np.asarray, train_state.params)
  losses = []
  for i in range(200):
    train_state, metrics = step(train_state, batch(i))
    losses.append(float(metrics["loss"]))
  after = train_state.params
  for path in ("blocks", "embed", "final_norm", "logits"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, before[path], after[path])
  assert not np.array_equal(before["retro"]["chunked_cross_attention"]["o"]["kernel"],
                            after["retro"]["chunked_cross_attention"]["o"]["kernel"])
  assert np.mean(losses[:5]) > 0.9 * np.log(vocab)                # guessing: the LM knows nothing of these tokens
  assert np.mean(losses[-10:]) < 0.3 * np.log(vocab), losses[::20]   # copying from the neighbours
