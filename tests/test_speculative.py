"""Speculative decoding: greedy output identical to the target's greedy decoding, whatever the draft; sampled tokens
distributed as the target's (a chi-square test that the draft's own distribution fails); the statistics it reports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import combinax as cx
from combinax import decoding
from combinax.models import TransformerLM
from combinax.speculative import speculative_sample


def lm(mode, *, vocab=16, d_model=32, n_layers=2, seed=0):
  model = TransformerLM(vocab, d_model=d_model, d_ff=2 * d_model, n_layers=n_layers, n_heads=2, max_len=64,
                        mode=mode, dropout=0.0)
  params, _ = TransformerLM(vocab, d_model=d_model, d_ff=2 * d_model, n_layers=n_layers, n_heads=2, max_len=64,
                            mode="eval", dropout=0.0).init(jax.random.key(seed), cx.ShapeDtype((1, 8), jnp.int32))
  return model, params


@pytest.fixture(scope="module")
def models():
  target, target_params = lm("predict")
  draft, draft_params = lm("predict", d_model=16, n_layers=1, seed=1)
  return target, target_params, draft, draft_params


PROMPT = jnp.array([[3, 4, 5, 6], [7, 8, 9, 1]], jnp.int32)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_greedy_speculation_is_the_targets_greedy_decoding_whatever_the_draft(models, k):
  target, target_params, draft, draft_params = models
  plain = decoding.autoregressive_sample(target, target_params, PROMPT, max_length=20, temperature=0.0, eos_id=2)
  spec, _ = speculative_sample(target, target_params, draft, draft_params, PROMPT, max_length=20, k=k,
                               temperature=0.0, eos_id=2)
  np.testing.assert_array_equal(spec, plain)
  # and without a start token, as an imported LM is decoded
  plain = decoding.autoregressive_sample(target, target_params, PROMPT, max_length=9, temperature=0.0, start_id=None)
  spec, _ = speculative_sample(target, target_params, draft, draft_params, PROMPT, max_length=9, k=k,
                               temperature=0.0, start_id=None)
  np.testing.assert_array_equal(spec, plain)


def test_a_draft_that_is_the_target_is_always_right(models):
  target, target_params, _, _ = models
  _, stats_ = speculative_sample(target, target_params, target, target_params, PROMPT, max_length=20, k=4,
                                 temperature=0.0)
  # 20 tokens: 4 rounds of 4 accepted proposals and one token of the target's own
  assert stats_ == (4, 16, 1.0)


def exact_two_token_distribution(model_eval, params, prompt, temperature, top_k):
  """P(t1, t2 | prompt) under `model_eval`, as the sampler's filtered softmax makes it (enumerated)."""
  vocab = model_eval.output_signature(cx.ShapeDtype((1, 1), jnp.int32)).shape[-1]
  probs = lambda logits: np.asarray(jax.nn.softmax(decoding.sampled_logits(logits, temperature, top_k), -1),
                                    np.float64)
  # Eval mode shifts its inputs right (token 0 in front, as the sampler's default start token): the logits at the
  # last place of `ids + [any]` are those of the token after `ids`.
  after = lambda ids: probs(model_eval.apply(params, {}, jnp.pad(ids, ((0, 0), (0, 1))))[0][:, -1])
  first = after(prompt)[0]
  second = after(jnp.concatenate([jnp.repeat(prompt, vocab, axis=0), jnp.arange(vocab)[:, None]], axis=1))
  return first[:, None] * second


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 3)])
def test_sampled_tokens_follow_the_targets_distribution_not_the_drafts(temperature, top_k):
  # A 4-token vocabulary and two tokens per sequence: 16 outcomes, 6,000 sequences sampled in one batch, seeded.
  target, target_params = lm("predict", vocab=4, d_model=8, seed=3)
  draft, draft_params = lm("predict", vocab=4, d_model=8, n_layers=1, seed=4)
  prompt = jnp.tile(jnp.array([[1, 2, 3]], jnp.int32), (6000, 1))
  tokens, stats_ = speculative_sample(target, target_params, draft, draft_params, prompt, max_length=2, k=2,
                                      temperature=temperature, top_k=top_k, rng=jax.random.key(0))
  counts = np.zeros((4, 4))
  np.add.at(counts, (np.asarray(tokens[:, 0]), np.asarray(tokens[:, 1])), 1)
  evaluate = lambda seed, layers: lm("eval", vocab=4, d_model=8, n_layers=layers, seed=seed)
  expected = exact_two_token_distribution(evaluate(3, 2)[0], target_params, prompt[:1], temperature, top_k)
  support = expected.ravel() > 0
  assert counts.ravel()[~support].sum() == 0   # nothing outside top_k
  observed = counts.ravel()[support]
  _, p_value = stats.chisquare(observed, expected.ravel()[support] / expected.ravel()[support].sum() * observed.sum())
  assert p_value > 1e-3, (p_value, counts, expected)
  # The same test tells the draft's distribution apart: it has the power to fail.
  drafts = exact_two_token_distribution(evaluate(4, 1)[0], draft_params, prompt[:1], temperature, top_k)
  overlap = support & (drafts.ravel() > 0)
  _, draft_p = stats.chisquare(counts.ravel()[overlap],
                               drafts.ravel()[overlap] / drafts.ravel()[overlap].sum() * counts.ravel()[overlap].sum())
  assert draft_p < 1e-6
  # (6,000 sequences in a batch keep what all of them accepted, here nothing: the residual draws at the first place
  # decide; a draft that is the target, below, has every proposal kept.)
  same, same_stats = speculative_sample(target, target_params, target, target_params, prompt, max_length=2, k=2,
                                        temperature=temperature, top_k=top_k, rng=jax.random.key(1))
  assert same_stats.acceptance_rate == 1.0
  counts = np.zeros((4, 4))
  np.add.at(counts, (np.asarray(same[:, 0]), np.asarray(same[:, 1])), 1)
  observed = counts.ravel()[support]
  _, p_value = stats.chisquare(observed, expected.ravel()[support] / expected.ravel()[support].sum() * observed.sum())
  assert p_value > 1e-3, (p_value, counts, expected)


def test_bad_settings_are_named(models):
  target, target_params, draft, draft_params = models
  with pytest.raises(ValueError, match=r"k: expected a positive number of draft tokens per round, got 0"):
    speculative_sample(target, target_params, draft, draft_params, PROMPT, max_length=4, k=0, temperature=0.0)
  with pytest.raises(ValueError, match=r"target: .*needs max_len >= 69.*speculating 4 tokens ahead"):
    speculative_sample(target, target_params, draft, draft_params, PROMPT, max_length=60, k=4, temperature=0.0)
  with pytest.raises(ValueError, match="needs an rng"):
    speculative_sample(target, target_params, draft, draft_params, PROMPT, max_length=4, temperature=1.0)
  from combinax.models.rnn import RNNLM
  rnn = RNNLM(12, d_model=8, n_layers=1, mode="predict")
  rnn_params, _ = RNNLM(12, d_model=8, n_layers=1).init(jax.random.key(0), PROMPT)
  with pytest.raises(ValueError, match=r"draft: speculative decoding rewinds .* \(Scan: a recurrent carry\) cannot"):
    speculative_sample(target, target_params, rnn, rnn_params, PROMPT, max_length=4, temperature=0.0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_draft_of_another_vocabulary_is_refused_before_decoding_naming_both_sizes(models, temperature):
  # (greedy ran on silently, comparing ids of two vocabularies; sampling failed inside the compiled loop with a
  # broadcasting error naming neither model)
  target, target_params, _, _ = models
  draft, draft_params = lm("predict", vocab=20, d_model=16, n_layers=1, seed=1)
  with pytest.raises(ValueError) as refused:
    speculative_sample(target, target_params, draft, draft_params, PROMPT, max_length=4, temperature=temperature,
                       rng=jax.random.key(0))
  assert str(refused.value) == "the draft predicts 20 tokens and the target 16: a draft must use the target's tokenizer"
