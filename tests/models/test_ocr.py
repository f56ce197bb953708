"""models.TextRecognizer (PP-OCRv4's SVTR-LCNet): shapes, parameter count against a hand count, its pools, and the
errors its settings and images get. (Its equality with the pretrained original: tests/pretrained.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax.layers import LayerError
from combinax.models.ocr import LCNET_V3_REC, TextRecognizer, ctc_greedy


def hand_count(n_classes: int) -> int:
  total = 3 * 3 * 3 * 16 + 16                                        # stem
  channels = 16
  for kernel, _, filters, squeeze_excite in LCNET_V3_REC:
    total += kernel * kernel * channels + channels + 4               # depthwise conv and its two affines
    if squeeze_excite:
      total += 2 * channels * (channels // 4) + channels // 4 + channels
    total += channels * filters + filters + 4                        # pointwise conv and its two affines
    channels = filters
  block = 4 * (120 * 120 + 120) + (120 * 240 + 240) + (240 * 120 + 120) + 2 * 2 * 120
  total += 3 * 480 * 60 + 60 + 60 * 120 + 120 + 2 * block + 2 * 120 + 120 * 480 + 480   # the mixer
  total += 3 * 960 * 60 + 60 + 60 * 120 + 120                        # fuse, project
  return total + 120 * n_classes + n_classes                         # the CTC head


def test_text_recognizer_shapes_and_parameter_count_match_a_hand_count():
  model = TextRecognizer(6625)
  for width in (64, 320):
    assert model.output_signature(cx.ShapeDtype((2, 48, width, 3))) == cx.ShapeDtype((2, width // 8, 6625))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), cx.ShapeDtype((1, 48, 64, 3)))[0])
  assert cx.count_params(params) == hand_count(6625) == 2_687_653
  x = jax.random.uniform(jax.random.key(1), (2, 48, 32, 3))
  params, state = model.init(jax.random.key(0), x)
  logits, _ = model.apply(params, state, x)
  assert logits.shape == (2, 4, 6625) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("pool, shape", [("none", (2, 8, 120)), ("mean", (2, 120)), ("map", (2, 120))])
def test_text_recognizer_features_pool_as_a_vision_tower(pool, shape):
  model = TextRecognizer(None, pool=pool)
  assert model.output_signature(cx.ShapeDtype((2, 48, 64, 3))) == cx.ShapeDtype(shape)
  paths = cx.paths(jax.eval_shape(lambda: model.init(jax.random.key(0), cx.ShapeDtype((1, 48, 64, 3)))[0]))
  assert not any(p.startswith("head/") for p in paths)
  assert any(p.startswith("map/") for p in paths) == (pool == "map")


def test_text_recognizer_refuses_a_pooled_ctc_head_and_other_lines():
  with pytest.raises(ValueError, match="TextRecognizer.pool: expected 'none', or 'mean' / 'map' with n_classes=None"):
    TextRecognizer(10, pool="mean")
  with pytest.raises(ValueError, match="got pool='cls'"):
    TextRecognizer(None, pool="cls")
  with pytest.raises(LayerError, match=r"(?s)\(batch, 48, width, 3\) \(sides multiples of 8\).*\(1, 48, 60, 3\)"):
    TextRecognizer(10).init(jax.random.key(0), cx.ShapeDtype((1, 48, 60, 3)))


def test_ctc_greedy_merges_repeats_and_drops_blanks():
  best = np.array([[0, 3, 3, 0, 3, 1, 1, 0], [2, 2, 2, 2, 0, 0, 0, 0]])
  logits = jax.nn.one_hot(best, 4)
  assert ctc_greedy(logits) == [[3, 3, 1], [2]]
