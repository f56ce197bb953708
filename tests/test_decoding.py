"""Sampling and beam search: greedy equals recomputation, one compilation, EOS, prompts, and a toy model whose best
sequence is known by enumeration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from combinax import decoding
from combinax import layers as cl
from combinax.layers import attention
from combinax.models.rnn import RNNLM
from combinax.models.transformer import Transformer, TransformerLM

KEY = jax.random.key(0)
LM = dict(d_model=16, d_ff=32, n_layers=2, n_heads=2, dropout=0.0, max_len=24)


@pytest.fixture(scope="module")
def lm():
  prompt = jax.random.randint(jax.random.key(1), (3, 4), 1, 20, jnp.int32)
  params, _ = TransformerLM(20, **LM).init(KEY, prompt)
  return TransformerLM(20, **LM), TransformerLM(20, **LM, mode="predict"), params, prompt


def greedy_by_recomputation(model, params, prompt, n, inputs=None):
  """Appends the arg-max next token n times, re-running the whole sequence each time."""
  seq = prompt
  for _ in range(n):
    padded = jnp.pad(seq, ((0, 0), (0, 1)))           # logits at the last position predict the next token
    logits = model.apply(params, {}, padded if inputs is None else (inputs, padded))[0]
    seq = jnp.concatenate([seq, jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)], axis=1)
  return seq[:, prompt.shape[1]:]


def test_greedy_equals_recomputation_and_compiles_once(lm):
  model, decoder, params, prompt = lm
  out = decoding.autoregressive_sample(decoder, params, prompt, max_length=6, temperature=0.0)
  np.testing.assert_array_equal(out, greedy_by_recomputation(model, params, prompt, 6))
  compiled = decoding._sample._cache_size()
  decoding.autoregressive_sample(decoder, params, prompt + 1, max_length=6, temperature=0.0)
  assert decoding._sample._cache_size() == compiled  # new data, same shapes: no new compilation


@pytest.mark.parametrize("start_id", [0, None])
def test_prompts_of_nearby_widths_share_one_compilation_and_decode_as_without_padding(lm, start_id):
  model, _, params, _ = lm
  roomy = TransformerLM(20, **{**LM, "max_len": 40}, mode="predict")
  prompts = [jax.random.randint(jax.random.key(w), (2, w), 1, 20, jnp.int32) for w in (9, 12, 16)]
  before = decoding._sample._cache_size()
  outs = [decoding.autoregressive_sample(roomy, params, p, max_length=5, temperature=0.0, start_id=start_id)
          for p in prompts]
  assert decoding._sample._cache_size() == before + 1   # all padded to 16, filled in one call, then rewound
  for p, out in zip(prompts, outs):
    # A cache with no room for the padding decodes the prompt as it is: the same tokens.
    snug = TransformerLM(20, **{**LM, "max_len": p.shape[1] + 5 + 1}, mode="predict")
    np.testing.assert_array_equal(out, decoding.autoregressive_sample(snug, params, p, max_length=5,
                                                                      temperature=0.0, start_id=start_id))
  snug = TransformerLM(20, **{**LM, "max_len": 9 + 5 + 1}, mode="predict")
  assert decoding._bucket(snug, 9, 5, 0) is None and decoding._bucket(roomy, 9, 5, 0) == 16


def test_the_caches_hold_what_a_call_feeds_whatever_max_len_the_model_was_built_with(lm, monkeypatch):
  model, _, params, prompt = lm
  roomy = TransformerLM(20, **{**LM, "max_len": 4096}, mode="predict")
  assert attention.CACHE_BLOCK == 256
  assert [decoding.cache_positions(roomy, n) for n in (1, 256, 257, 4000)] == [256, 256, 512, 4096]
  assert decoding.cache_positions(TransformerLM(20, **LM, mode="predict"), 11) == 24   # at most its max_len
  assert decoding.cache_positions(RNNLM(20, d_model=8, n_layers=1, mode="predict"), 11) is None
  made = []
  init_state = decoding.init_state
  monkeypatch.setattr(decoding, "init_state", lambda *a: made.append(init_state(*a)) or made[-1])
  out = decoding.autoregressive_sample(roomy, params, prompt, max_length=6, temperature=0.0)
  np.testing.assert_array_equal(out, greedy_by_recomputation(model, params, prompt, 6))
  caches = [leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(made)[0]
            if path[-1].key in ("k", "v")]
  assert caches and all(shape[-3] == 256 for shape in caches)   # (layers, batch, positions, heads, d_head)


def test_only_states_made_of_caches_and_positions_can_be_rewound(lm):
  _, decoder, _, _ = lm
  assert decoding.rewind_blocker(decoder) is None
  rnn = RNNLM(12, d_model=8, n_layers=1, mode="predict")
  assert type(decoding.rewind_blocker(rnn)).__name__ == "Scan"   # the LSTM's carry
  assert decoding._bucket(rnn, 3, 5, 0) is None


def test_without_a_start_token_the_prompt_is_fed_as_it_is(lm):
  # start_id=None with token 0 written at the front of the prompt is exactly the default start token 0.
  _, decoder, params, prompt = lm
  with_start = decoding.autoregressive_sample(decoder, params, prompt, max_length=6, temperature=0.0)
  written = jnp.concatenate([jnp.zeros((prompt.shape[0], 1), jnp.int32), prompt], axis=1)
  as_is = decoding.autoregressive_sample(decoder, params, written, max_length=6, temperature=0.0, start_id=None)
  np.testing.assert_array_equal(as_is, with_start)
  with pytest.raises(ValueError, match="start_id=None feeds each prompt as it is, so every prompt needs at least one"):
    decoding.autoregressive_sample(decoder, params, None, max_length=2, temperature=0.0, start_id=None)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(lm):
  _, decoder, params, prompt = lm
  sample = lambda seed, **kw: decoding.autoregressive_sample(decoder, params, prompt, max_length=8,
                                                             rng=jax.random.key(seed), **kw)
  np.testing.assert_array_equal(sample(1), sample(1))
  assert not np.array_equal(sample(1), sample(2))
  greedy = decoding.autoregressive_sample(decoder, params, prompt, max_length=8, temperature=0.0)
  np.testing.assert_array_equal(sample(3, top_k=1), greedy)
  np.testing.assert_array_equal(sample(4, top_p=1e-6), greedy)


def test_sample_logits_restricts_the_support():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
  rng = jax.random.key(5)
  counts = lambda x: np.bincount(np.asarray(x), minlength=4) / x.shape[0]
  plain = counts(decoding.sample_logits(logits, rng))
  np.testing.assert_allclose(plain, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  top2 = counts(decoding.sample_logits(logits, rng, top_k=2))
  np.testing.assert_allclose(top2, [0.625, 0.375, 0, 0], atol=0.03)
  nucleus = counts(decoding.sample_logits(logits, rng, top_p=0.7))   # {0.5, 0.3} reach 0.7
  np.testing.assert_allclose(nucleus, [0.625, 0.375, 0, 0], atol=0.03)
  sharp = counts(decoding.sample_logits(logits, rng, temperature=0.25))
  assert sharp[0] > 0.85


def test_top_k_and_top_p_keep_the_tokens_a_sorted_float64_reference_keeps():
  logits = np.asarray(jax.random.normal(jax.random.key(3), (16, 3000))) * np.linspace(0.5, 6, 16)[:, None]
  for top_k, top_p in [(1, None), (40, None), (2999, None), (None, 1e-6), (None, 0.3), (None, 0.9), (None, 1.0),
                       (100, 0.8)]:
    kept = np.isfinite(np.asarray(decoding.sampled_logits(jnp.asarray(logits, jnp.float32), 0.7, top_k, top_p)))
    scaled = np.asarray(jnp.asarray(logits, jnp.float32) / 0.7, np.float64)
    if top_k is not None:
      scaled = np.where(scaled >= np.sort(scaled, axis=-1)[:, -top_k:][:, :1], scaled, -np.inf)
    if top_p is not None and top_p < 1:   # top_p=1 keeps every token
      probs = np.exp(scaled - scaled.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      ordered = -np.sort(-probs, axis=-1)
      before = np.cumsum(ordered, axis=-1) - ordered
      smallest = np.min(np.where(before < top_p, ordered, np.inf), axis=-1, keepdims=True)
      scaled = np.where(probs >= smallest, scaled, -np.inf)
    np.testing.assert_array_equal(kept, np.isfinite(scaled), err_msg=f"top_k={top_k} top_p={top_p}")


def test_tokens_tied_at_the_top_k_or_top_p_boundary_stay_together():
  logits = jnp.log(jnp.array([[0.4, 0.2, 0.2, 0.2]]))
  assert np.isfinite(np.asarray(decoding.sampled_logits(logits, 1.0, top_k=2))).tolist() == [[True] * 4]
  assert np.isfinite(np.asarray(decoding.sampled_logits(logits, 1.0, top_p=0.5))).tolist() == [[True] * 4]
  assert np.isfinite(np.asarray(decoding.sampled_logits(logits, 1.0, top_p=0.4))).tolist() == [
      [True, False, False, False]]


def test_eos_ends_a_sequence_with_padding(lm):
  _, decoder, params, prompt = lm
  greedy = np.asarray(decoding.autoregressive_sample(decoder, params, prompt, max_length=6, temperature=0.0))
  eos = int(greedy[0, 2])
  out = np.asarray(decoding.autoregressive_sample(decoder, params, prompt, max_length=6, temperature=0.0,
                                                  eos_id=eos, pad_id=0))
  for row, full in zip(out, greedy):
    hits = np.flatnonzero(full == eos)
    if hits.size:
      end = hits[0]
      np.testing.assert_array_equal(row[:end + 1], full[:end + 1])
      assert np.all(row[end + 1:] == 0)
    else:
      np.testing.assert_array_equal(row, full)


def test_streamed_tokens_arrive_in_order_and_equal_the_result(lm):
  _, decoder, params, prompt = lm
  streamed = []
  out = np.asarray(decoding.autoregressive_sample(decoder, params, prompt, max_length=6, temperature=0.0,
                                                  on_token=streamed.append))
  assert len(streamed) == 6 and all(t.shape == (3,) for t in streamed)
  np.testing.assert_array_equal(np.stack(streamed, axis=1), out)
  # The loop stops once every sequence has ended: the stream ends there too, each sequence's EOS in it.
  eos = int(out[0, 1])
  streamed.clear()
  ended = np.asarray(decoding.autoregressive_sample(decoder, params, prompt[:1], max_length=6, temperature=0.0,
                                                    eos_id=eos, on_token=streamed.append))
  end = int(np.flatnonzero(out[0] == eos)[0])
  np.testing.assert_array_equal(np.concatenate(streamed), ended[0, :end + 1])
  with pytest.raises(ValueError, match="prompts must be of one length; got prompt_lengths \\[4, 2, 3\\]"):
    decoding.autoregressive_sample(decoder, params, prompt, max_length=2, prompt_lengths=[4, 2, 3],
                                   temperature=0.0, on_token=streamed.append)


def test_prompts_of_different_lengths(lm):
  _, decoder, params, prompt = lm
  lengths = [4, 2, 3]
  padded = jnp.where(jnp.arange(4)[None, :] < jnp.array(lengths)[:, None], prompt, 0)
  batched = decoding.autoregressive_sample(decoder, params, padded, max_length=5, temperature=0.0,
                                           prompt_lengths=lengths)
  for i, n in enumerate(lengths):
    alone = decoding.autoregressive_sample(decoder, params, prompt[i:i + 1, :n], max_length=5, temperature=0.0)
    np.testing.assert_array_equal(batched[i], alone[0])


def test_beam_one_is_greedy(lm):
  _, decoder, params, prompt = lm
  greedy = decoding.autoregressive_sample(decoder, params, prompt, max_length=6, temperature=0.0)
  seqs, scores = decoding.beam_search(decoder, params, prompt, max_length=6, beam_size=1, length_penalty=0.0)
  np.testing.assert_array_equal(seqs[:, 0], greedy)


def _bigram_model(log_table, mode):
  """Logits of the next token depend only on the previous one: table[previous]."""
  vocab = log_table.shape[0]
  return cl.Serial(cl.ShiftRight(mode=mode), cl.Embedding(vocab, vocab)), {"Embedding_0": {"embedding": log_table}}


def test_beam_search_finds_the_best_sequence_of_a_toy_model():
  # From the start token 0: 1 is likeliest (0.5), but 2 leads to a near-certain 2 -> 2 (0.4 * 0.9 > 0.5 * 0.34).
  probs = np.array([[0.1, 0.5, 0.4], [0.34, 0.33, 0.33], [0.05, 0.05, 0.9]])
  model, params = _bigram_model(jnp.log(jnp.asarray(probs, jnp.float32)), "predict")
  length = 3
  best = max(itertools.product(range(3), repeat=length),
             key=lambda seq: np.prod([probs[a, b] for a, b in zip((0,) + seq, seq)]))
  assert best == (2, 2, 2)
  seqs, scores = decoding.beam_search(model, params, None, max_length=length, beam_size=2, length_penalty=0.0)
  assert tuple(np.asarray(seqs[0, 0])) == best
  assert float(scores[0, 0]) == pytest.approx(np.log(0.4 * 0.9 * 0.9), rel=1e-5)
  assert float(scores[0, 0]) >= float(scores[0, 1])
  greedy = decoding.autoregressive_sample(model, params, None, max_length=length, temperature=0.0)
  assert tuple(np.asarray(greedy[0])) == (1, 0, 1)


def test_beam_search_with_eos_and_length_penalty():
  # Token 2 is EOS; ending at once (0.6) beats going on (0.4 * ...), whatever the penalty for short sequences.
  probs = np.array([[0.0001, 0.3999, 0.6], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
  model, params = _bigram_model(jnp.log(jnp.asarray(probs, jnp.float32)), "predict")
  seqs, scores = decoding.beam_search(model, params, np.zeros((2, 0), np.int32), max_length=4, beam_size=2,
                                      eos_id=2, length_penalty=0.0)
  assert np.asarray(seqs[0, 0]).tolist() == [2, 0, 0, 0]
  assert np.asarray(seqs[0, 1]).tolist() == [1, 2, 0, 0]
  np.testing.assert_allclose(scores[0], np.log([0.6, 0.3999 * 0.8]), rtol=1e-4)
  np.testing.assert_array_equal(seqs[0], seqs[1])  # the batch rows decode independently


def test_encoder_decoder_decoding():
  kw = dict(d_model=16, d_ff=32, n_encoder_layers=1, n_decoder_layers=2, n_heads=2, dropout=0.0, max_len=16)
  source = jax.random.randint(jax.random.key(2), (2, 5), 1, 12, jnp.int32)
  params, _ = Transformer(12, **kw).init(KEY, (source, source))
  out = decoding.autoregressive_sample(Transformer(12, **kw, mode="predict"), params, None, max_length=5,
                                       temperature=0.0, inputs=source)
  expected = greedy_by_recomputation(Transformer(12, **kw), params, jnp.zeros((2, 0), jnp.int32), 5, inputs=source)
  np.testing.assert_array_equal(out, expected)
  seqs, _ = decoding.beam_search(Transformer(12, **kw, mode="predict"), params, None, max_length=5, beam_size=1,
                                 length_penalty=0.0, inputs=source)
  np.testing.assert_array_equal(seqs[:, 0], out)


def test_rnn_decoding():
  rnn_kw = dict(d_model=16, n_layers=2, dropout=0.0)
  prompt = jax.random.randint(jax.random.key(2), (2, 3), 1, 12, jnp.int32)
  rnn_params, _ = RNNLM(12, **rnn_kw).init(KEY, prompt)
  out = decoding.autoregressive_sample(RNNLM(12, **rnn_kw, mode="predict"), rnn_params, prompt, max_length=4,
                                       temperature=0.0)
  np.testing.assert_array_equal(out, greedy_by_recomputation(RNNLM(12, **rnn_kw), rnn_params, prompt, 4))
  seqs, _ = decoding.beam_search(RNNLM(12, **rnn_kw, mode="predict"), rnn_params, prompt, max_length=4, beam_size=3,
                                 length_penalty=0.0)
  assert seqs.shape == (2, 3, 4)


def test_decoding_errors(lm):
  model, decoder, params, prompt = lm
  with pytest.raises(ValueError, match="mode='predict'"):
    decoding.autoregressive_sample(model, params, prompt, max_length=3, temperature=0.0)
  with pytest.raises(ValueError, match="max_len >= 34"):
    decoding.autoregressive_sample(decoder, params, prompt, max_length=30, temperature=0.0)
  with pytest.raises(ValueError, match="needs an rng"):
    decoding.autoregressive_sample(decoder, params, prompt, max_length=3)
