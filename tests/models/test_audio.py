"""models.AudioEncoder: shapes and parameter counts by hand, the convolutions' frames exact, spectrograms of the
wrong shape named, and its frames as an LM's prefix decode as an image's do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import ShapeDtype, decoding
from combinax.models import AudioEncoder, ImagePrefixLM, TransformerOptions

KEY = jax.random.key(0)
SMALL = dict(n_mels=8, d_ff=24, n_layers=3, n_heads=2)


def hand_count(*, d, d_ff, n_layers, n_mels, n_classes, pool, learned_positions=0):
  """Parameters of an AudioEncoder, counted from its definition."""
  convolutions = (3 * n_mels * d + d) + (3 * d * d + d)
  block = 4 * (d * d + d) + 2 * 2 * d + (d * d_ff + d_ff) + (d_ff * d + d)   # attention, two norms, feed-forward
  head = {"cls": d, "mean": 0, "map": d + 4 * (d * d + d) + 2 * d + (d * d_ff + d_ff) + (d_ff * d + d)}[pool]
  return convolutions + learned_positions * d + n_layers * block + 2 * d + head + d * n_classes + n_classes


@pytest.mark.parametrize("pool", ["mean", "cls", "map"])
def test_shapes_and_parameter_count_agree_with_a_hand_count(pool):
  model = AudioEncoder(7, 16, **SMALL, pool=pool)
  signature = ShapeDtype((3, 21, 8))
  params, state = model.init(KEY, signature)
  assert cx.count_params(params) == hand_count(d=16, d_ff=24, n_layers=3, n_mels=8, n_classes=7, pool=pool)
  y, _ = model.apply(params, state, jax.random.normal(jax.random.key(1), signature.shape))
  assert model.output_signature(signature) == ShapeDtype((3, 7)) and y.shape == (3, 7)
  assert params["blocks"]["attention"]["q"]["kernel"].shape == (3, 16, 16)   # one scanned stack
  assert params["conv1"]["kernel"].shape == (3, 8, 16) and params["conv2"]["kernel"].shape == (3, 16, 16)


def test_learned_positions_are_one_per_encoded_frame():
  model = AudioEncoder(7, 16, **SMALL, positions="learned", max_frames=40)
  params, _ = model.init(KEY, ShapeDtype((2, 40, 8)))
  assert params["positions"]["embedding"].shape == (20, 16)
  assert cx.count_params(params) == hand_count(d=16, d_ff=24, n_layers=3, n_mels=8, n_classes=7, pool="mean",
                                               learned_positions=20)


def test_the_second_convolution_halves_the_frames_each_seeing_three_of_the_firsts():
  model = AudioEncoder(None, 16, **SMALL, pool="none")
  assert model.output_signature(ShapeDtype((2, 21, 8))) == ShapeDtype((2, 11, 16))   # ceil(21 / 2)
  # Encoded frame j reads conv1's frames 2j - 1 .. 2j + 1, which read input frames 2j - 2 .. 2j + 2 (SAME padding).
  x = jax.random.normal(jax.random.key(2), (1, 20, 8))
  params, _ = model.init(KEY, x)
  front = jax.jit(lambda x: cx.layers.Serial(*model.sublayers[1:5]).apply(
      {k: params[k] for k in ("conv1", "conv2")}, {}, x)[0])
  moved = np.any(np.abs(np.asarray(front(x.at[:, 9].add(1.0)) - front(x))) > 1e-6, axis=-1)[0]
  assert np.flatnonzero(moved).tolist() == [4, 5]   # frames 2j - 2 <= 9 <= 2j + 2: j = 4, 5


def test_spectrograms_of_another_shape_are_named_with_the_shape_expected():
  model = AudioEncoder(7, 16, **SMALL, max_frames=32)
  params, _ = model.init(KEY, ShapeDtype((2, 32, 8)))
  with pytest.raises(cx.LayerError, match=r"(?s)expected: \(batch, frames <= 32, 8\), float.*actual: +\(2, 32, 40\)"):
    model.apply(params, {}, jnp.zeros((2, 32, 40)))
  with pytest.raises(cx.LayerError, match=r"actual: +\(2, 33, 8\)"):
    model.apply(params, {}, jnp.zeros((2, 33, 8)))
  with pytest.raises(ValueError, match="'none' returns the frames"):
    AudioEncoder(7, 16, **SMALL, pool="none")
  with pytest.raises(ValueError, match="AudioEncoder.positions: expected"):
    AudioEncoder(7, 16, **SMALL, positions="rotary")


def test_an_lm_decodes_after_spoken_frames_as_after_an_image_equal_to_recomputation():
  options = TransformerOptions(d_model=16, d_ff=32, n_heads=2, dropout=0.0, positions="rotary", norm="rms",
                               max_len=64)

  def lm(mode="train"):
    return ImagePrefixLM(AudioEncoder(None, 8, **{**SMALL, "n_layers": 1}, pool="none"), 20, options, n_layers=2,
                         mode=mode)

  frames = jax.random.normal(jax.random.key(3), (2, 12, 8))     # 6 encoded frames before the text
  prompts, ids = jnp.array([2, 3]), jax.random.randint(jax.random.key(4), (2, 6), 3, 20)
  params, _ = lm().init(KEY, (frames, prompts, ids))
  full = lm().apply(params, {}, (frames, prompts, ids))[0]
  decoder = lm("predict")
  state = decoding.init_state(decoder, 2, (frames, prompts))
  step = jax.jit(lambda s, f, t: decoder.apply(params, s, (f, prompts, t)))
  fed = jnp.concatenate([jnp.zeros((2, 1), ids.dtype), ids[:, :-1]], axis=1)
  first, state = step(state, frames, fed[:, :4])    # the frames, start and the longest prompt in one call
  chunks = [first]
  for t in range(4, 6):
    logits, state = step(state, jnp.zeros_like(frames), fed[:, t:t + 1])
    chunks.append(logits)
  np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, atol=2e-5)
