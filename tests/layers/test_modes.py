"""One rule for modes, over every layer and model: `apply(train=...)` alone turns dropout and batch statistics on;
"train" and "eval" build the same model; "predict" exists only where something keeps decoding state, and everything
else refuses it with a clear error."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import layers as cl
from combinax import models
from combinax.layers.base import MODES

from catalogue import CATALOGUE, make_inputs

KEYS = (jax.random.key(1), jax.random.key(2))


def drops(layer) -> bool:
  """Whether anything in `layer` drops out (a Dropout, or attention dropout) when trained."""
  return any((isinstance(l, cl.Dropout) and l.rate > 0)
             or (isinstance(l, (cl.DotProductAttention, cl.ChunkedAttention)) and l.dropout > 0)
             for l in cl.walk(layer))


def outputs(layer, params, state, x, **kwargs):
  return jax.tree_util.tree_leaves(layer.apply(params, state, x, **kwargs))


def same(a, b) -> bool:
  return all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_layer_is_random_only_when_training_and_only_if_it_drops(name):
  factory, sig = CATALOGUE[name]
  layer = factory()
  params, state = layer.init(jax.random.key(0), sig)
  x = make_inputs(sig)
  evaluated = outputs(layer, params, state, x)
  assert same(evaluated, outputs(layer, params, state, x, rng=KEYS[0])), "train=False must ignore the rng"
  trained = [outputs(layer, params, state, x, rng=key, train=True) for key in KEYS]
  if name != "Cond_false":   # its input takes the Dense branch, not the Dropout one
    assert same(*trained) != drops(layer)


S = cx.ShapeDtype
IDS = S((2, 6), jnp.int32)
# Every model in `combinax.models` that takes a mode, small, with the input it reads and whether it decodes.
MODELS = {
    "MLP": (lambda mode: models.MLP((8, 3), mode=mode), S((2, 4, 4)), False),
    "ResNet": (lambda mode: models.ResNet((1, 1), d_hidden=4, n_output_classes=3, mode=mode), S((2, 8, 8, 1)), False),
    "Resnet50": (lambda mode: models.Resnet50(d_hidden=1, n_output_classes=3, mode=mode), S((1, 32, 32, 3)), False),
    "WideResnet": (lambda mode: models.WideResnet(n_blocks=1, mode=mode), S((1, 32, 32, 3)), False),
    "DigitsCNN": (lambda mode: models.DigitsCNN(mode=mode), S((2, 8, 8, 1)), False),
    "ImagePrefixLM": (lambda mode: models.ImagePrefixLM(
        models.ViT(None, 8, patch_size=2, d_ff=16, n_layers=1, n_heads=2, pool="none"), 12,
        models.TransformerOptions(8, 16, 2, max_len=32, dropout=0.5), n_layers=1, mode=mode),
        (S((2, 4, 4, 1)), S((2,), jnp.int32), IDS), True),
    "ViT": (lambda mode: models.ViT(None, 8, patch_size=2, d_ff=16, n_layers=1, n_heads=2, dropout=0.5, mode=mode),
            S((2, 4, 4, 1)), False),   # (features: the zero-initialised head would hide dropout)
    "AudioEncoder": (lambda mode: models.AudioEncoder(None, 8, n_mels=4, d_ff=16, n_layers=1, n_heads=2, dropout=0.5,
                                                      mode=mode), S((2, 6, 4)), False),
    # Three strided blocks of 8 channels: 48-pixel lines down to the 3 rows the recogniser pools.
    "TextRecognizer": (lambda mode: models.TextRecognizer(
        10, blocks=((3, (2, 1), 8, False), (3, (2, 1), 8, True), (3, (2, 1), 8, False)), mode=mode),
        S((1, 48, 16, 3)), False),
    "LoRAModel": (lambda mode: models.LoRAModel(lambda mode: models.TransformerLM(12, 8, 16, n_layers=1, n_heads=2,
                                                                                  max_len=8, mode=mode),
                                                targets="blocks/ff/*/kernel", rank=2, mode=mode), IDS, True),
    "TextGenRNN": (lambda mode: models.TextGenRNN(12, 4, 8, mode=mode), IDS, False),
    "TransformerEncoder": (lambda mode: models.TransformerEncoder(12, 3, 8, d_ff=16, n_layers=1, n_heads=2,
                                                                  mode=mode), IDS, False),
    "RNNLM": (lambda mode: models.RNNLM(12, d_model=8, dropout=0.5, mode=mode), IDS, True),
    "GRULM": (lambda mode: models.GRULM(12, d_model=8, mode=mode), IDS, True),
    "LSTMSeq2SeqAttn": (lambda mode: models.LSTMSeq2SeqAttn(12, 12, d_model=8, n_encoder_layers=1, n_decoder_layers=1,
                                                            attention_dropout=0.2, mode=mode), (IDS, IDS), True),
    "TransformerLM": (lambda mode: models.TransformerLM(12, 8, 16, n_layers=2, n_heads=2, max_len=8, mode=mode),
                      IDS, True),
    "TransformerDecoder": (lambda mode: models.TransformerDecoder(models.TransformerOptions(8, 16, 2, max_len=8), 1,
                                                                  embedding=cl.Embedding(12, 8), mode=mode), IDS, True),
    "Transformer": (lambda mode: models.Transformer(12, None, 8, d_ff=16, n_encoder_layers=1, n_decoder_layers=1,
                                                    n_heads=2, max_len=8, mode=mode), (IDS, IDS), True),
    "DecoderBlock": (lambda mode: models.DecoderBlock(models.TransformerOptions(8, 16, 2, max_len=8), mode=mode),
                     S((2, 6, 8)), True),
}


def test_the_table_covers_every_model_that_takes_a_mode():
  takes_mode = {name for name in dir(models) if name[0].isupper() and callable(getattr(models, name)) and
                "mode" in inspect.signature(getattr(models, name)).parameters}
  assert takes_mode == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_follows_the_rule_in_every_mode(name):
  make, sig, decodes = MODELS[name]
  x = make_inputs(sig)
  params, state = make("train").init(jax.random.key(0), sig)
  results = {}
  for mode in MODES:
    if mode == "predict" and not decodes:
      with pytest.raises(cx.LayerError, match="no 'predict' mode"):
        make(mode)
      continue
    model = make(mode)
    assert model.decodes == (mode == "predict")
    _, mode_state = model.init(jax.random.key(0), sig)          # predict: fresh decoding state (the params agree)
    evaluated = outputs(model, params, mode_state, x)
    assert same(evaluated, outputs(model, params, mode_state, x, rng=KEYS[0]))
    trained = [outputs(model, params, mode_state, x, rng=key, train=True) for key in KEYS]
    assert same(*trained) != drops(model), "dropout must be active iff train=True, in every mode"
    results[mode] = evaluated, trained[0]
  # "train" and "eval" build the same model: the same outputs, trained or not. (That predict mode continues what
  # evaluation computes is tested per model: test_transformer.py, test_rnn_models.py.)
  assert same(results["eval"][0], results["train"][0]) and same(results["eval"][1], results["train"][1])
  with pytest.raises(cx.LayerError, match="unknown mode"):
    make("decode")


def test_batch_statistics_follow_train_in_every_mode():
  for mode in ("train", "eval"):
    model = models.DigitsCNN(mode=mode)
    resnet = models.ResNet((1,), d_hidden=4, mode=mode)
    params, state = resnet.init(jax.random.key(0), S((2, 8, 8, 1)))
    x = make_inputs(S((2, 8, 8, 1)))
    _, kept = resnet.apply(params, state, x)
    _, updated = resnet.apply(params, state, x, train=True)
    assert same(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(state))
    assert not same(jax.tree_util.tree_leaves(updated), jax.tree_util.tree_leaves(state))
    assert not model.decodes


def test_only_causal_attention_keeps_a_decoding_cache():
  with pytest.raises(cx.LayerError, match="only causal attention keeps a decoding cache"):
    cl.DotProductAttention(2, causal=False, mode="predict")
  assert cl.CausalAttention(8, 2, mode="predict").decodes and not cl.CausalAttention(8, 2).decodes
  with pytest.raises(TypeError, match="mode"):
    cl.Attention(8, 2, mode="predict")    # attention on a whole sequence has no mode at all
