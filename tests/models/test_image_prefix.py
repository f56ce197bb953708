"""models.ImagePrefixLM: a TransformerLM's paths with the image's added, and prefix-LM attention over image and
prompt: each text position sees the whole prefix, and only the past after it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import decoding
from combinax.models import ImagePrefixLM, TransformerLM, TransformerOptions, ViT

KEY = jax.random.key(0)
LM = dict(d_model=16, d_ff=32, n_heads=2, dropout=0.0, positions="rotary", norm="rms", gated_ff=True, max_len=64)


def model(**kw):
  vision = ViT(None, 8, patch_size=4, d_ff=16, n_layers=1, n_heads=2, pool="none")
  return ImagePrefixLM(vision, 20, TransformerOptions(**LM), n_layers=2, tie_embeddings=True, **kw)


def inputs(seed=1):
  images = jax.random.normal(jax.random.key(seed), (2, 8, 8, 3))
  ids = jax.random.randint(jax.random.key(seed + 1), (2, 6), 3, 20)
  return images, jnp.array([2, 4]), ids


def test_the_lms_params_are_a_transformer_lms_so_its_checkpoint_loads_and_the_image_adds_its_own():
  params, _ = model().init(KEY, inputs())
  lm_params, _ = TransformerLM(20, n_layers=2, tie_embeddings=True, **LM).init(KEY, inputs()[2])
  ours = {p: v.shape for p, v in cx.leaves_with_paths(params) if not p.startswith("image/")}
  assert ours == {p: v.shape for p, v in cx.leaves_with_paths(lm_params)}
  assert "image/projector/kernel" in cx.paths(params) and params["image"]["projector"]["kernel"].shape == (8, 16)
  logits, _ = model().apply({**lm_params, "image": params["image"]}, {}, inputs())
  assert logits.shape == (2, 6, 20)


def test_each_text_position_sees_the_image_and_the_whole_prompt_and_only_the_past_after_it():
  m = model()
  images, prompts, ids = inputs()
  params, _ = m.init(KEY, (images, prompts, ids))
  run = jax.jit(lambda i, t: m.apply(params, {}, (i, prompts, t))[0])
  base = run(images, ids)
  # Position t reads token t - 1 (shifted right). Sequence 1's prompt is 4 tokens: its positions 0..4 see all of
  # them, so changing prompt token 3 changes position 0 too; sequence 0's prompt is 2 tokens.
  changed = run(images, ids.at[:, 3].set(1))
  moved = np.any(np.abs(np.asarray(changed - base)) > 1e-6, axis=-1)    # (batch, positions)
  assert moved[1].tolist() == [True] * 6                                 # token 3 is in sequence 1's prompt
  assert moved[0].tolist() == [False] * 4 + [True] * 2                   # an answer token: only later positions
  after_image = run(images.at[:, :4, :4].set(0.0), ids)
  assert np.all(np.any(np.abs(np.asarray(after_image - base)) > 1e-6, axis=-1))   # the image reaches every position


def test_bad_prompt_lengths_are_named():
  images, _, ids = inputs()
  m = model()
  params, _ = m.init(KEY, inputs())
  with pytest.raises(cx.LayerError, match=r"prompt length, int \(2,\)"):
    m.apply(params, {}, (images, jnp.array([[2], [4]]), ids))


def test_decoding_with_the_image_filled_once_equals_recomputing_the_whole_sequence():
  images, prompts, ids = inputs()
  params, _ = model().init(KEY, inputs())
  full = model().apply(params, {}, (images, prompts, ids))[0]
  decoder = model(mode="predict")
  state = decoding.init_state(decoder, 2, (images, prompts))
  step = jax.jit(lambda s, i, t: decoder.apply(params, s, (i, prompts, t)))
  fed = jnp.concatenate([jnp.zeros((2, 1), ids.dtype), ids[:, :-1]], axis=1)   # shifted right, as in training
  first, state = step(state, images, fed[:, :5])   # image, start, the longest prompt (4) in one call
  chunks = [first]
  for t in range(5, 6):   # then a token per call; a different image now would change nothing: it is cached
    logits, state = step(state, jnp.zeros_like(images), fed[:, t:t + 1])
    chunks.append(logits)
  np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, atol=2e-5)


def test_greedy_decoding_equals_greedy_recomputation_and_the_prompt_is_the_prefix():
  images, _, ids = inputs()
  params, _ = model().init(KEY, inputs())
  prompt = ids[:, :3]
  lengths = jnp.array([3, 3])
  got = decoding.autoregressive_sample(model(mode="predict"), params, prompt, max_length=5, temperature=0,
                                       inputs=(images, lengths))
  seq = prompt
  for _ in range(5):   # the whole sequence again at each step, in training's mode (position t predicts token t)
    logits = model().apply(params, {}, (images, lengths, jnp.pad(seq, ((0, 0), (0, 1)))))[0]
    seq = jnp.concatenate([seq, jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(seq.dtype)], axis=1)
  assert got.tolist() == seq[:, 3:].tolist()


def test_decoding_names_the_inputs_it_needs_and_refuses_to_rewind_the_image():
  images, lengths, ids = inputs()
  params, _ = model().init(KEY, inputs())
  with pytest.raises(ValueError, match=r"needs inputs= a tuple of the 2 inputs before its ids; got 1"):
    decoding.autoregressive_sample(model(mode="predict"), params, ids, max_length=2, temperature=0, inputs=images)
  assert decoding.rewind_blocker(model(mode="predict")).name == "Prefill"
  with pytest.raises(ValueError, match=r"prompts must be of one length in a batch; got prompt_lengths \[3, 2\]"):
    decoding.autoregressive_sample(model(mode="predict"), params, ids[:, :3], max_length=2, temperature=0,
                                   inputs=(images, jnp.array([3, 3])), prompt_lengths=[3, 2])
  # The image's 4 tokens take cache positions too: 64 hold them, the start token, 3 prompt tokens and 57 more
  # (the last one is never fed), not 58.
  decoding.autoregressive_sample(model(mode="predict"), params, ids[:, :3], max_length=57, temperature=0,
                                 inputs=(images, jnp.array([3, 3])))
  with pytest.raises(ValueError, match="needs max_len >= 65"):
    decoding.autoregressive_sample(model(mode="predict"), params, ids[:, :3], max_length=58, temperature=0,
                                   inputs=(images, jnp.array([3, 3])))
