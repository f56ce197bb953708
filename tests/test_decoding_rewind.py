"""Decoding over the layers' rewind contract: what prompt buckets and speculative decoding rewind is whatever state
the model keeps, so an encoder-decoder (its encoder in a `Cache`) shares prompt buckets as a decoder-only LM does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from combinax import decoding
from combinax.models.transformer import Transformer

KW = dict(d_model=16, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, dropout=0.0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_an_encoder_decoder_shares_prompt_buckets_and_decodes_as_without_padding(temperature):
  source = jax.random.randint(jax.random.key(2), (2, 5), 1, 12, jnp.int32)
  params, _ = Transformer(12, **KW, max_len=40).init(jax.random.key(0), (source, source))
  roomy = Transformer(12, **KW, max_len=40, mode="predict")
  assert decoding.rewind_blocker(roomy) is None
  rng = jax.random.key(5)
  before = decoding._sample._cache_size()
  for width in (3, 7):
    prompt = jax.random.randint(jax.random.key(width), (2, width), 1, 12, jnp.int32)
    out = decoding.autoregressive_sample(roomy, params, prompt, max_length=5, temperature=temperature, rng=rng,
                                         inputs=source)
    # A cache with no room for the padding decodes the prompt as it is: the same tokens.
    snug = Transformer(12, **KW, max_len=width + 5 + 1, mode="predict")
    np.testing.assert_array_equal(out, decoding.autoregressive_sample(snug, params, prompt, max_length=5,
                                                                      temperature=temperature, rng=rng,
                                                                      inputs=source))
  assert decoding._sample._cache_size() == before + 3   # one for both padded prompts, one per snug model
