"""BERT-family import: all-MiniLM-L6-v2 equals sentence-transformers; the importer checks what it reads."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax.pretrained import bert
from combinax.pretrained.families import PretrainedError

from conftest import files_of, reference

pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def minilm():
  return bert.import_files(files_of("all-minilm-l6-v2"))


def test_minilm_sentence_embeddings_equal_sentence_transformers(minilm):
  ref = reference("minilm")
  ids = [minilm.tokenizer.encode(str(s)) for s in ref["sentences"]]
  width = ref["ids"].shape[1]
  padded = np.stack([np.pad(i, (0, width - len(i))) for i in ids])
  np.testing.assert_array_equal(padded, ref["ids"])             # the same WordPiece ids, [CLS] ... [SEP]
  model = bert.model_from_config(minilm.config)
  embeddings, _ = jax.jit(model.apply)(minilm.params, {}, jnp.asarray(padded))
  assert np.abs(np.asarray(embeddings) - ref["embeddings"]).max() <= 1e-5
  np.testing.assert_allclose(np.linalg.norm(np.asarray(embeddings), axis=-1), 1.0, atol=1e-6)


def test_minilm_is_a_plain_transformer_encoder(minilm):
  assert minilm.config["num_hidden_layers"] == 6 and cx.count_params(minilm.params) == 22_565_376  # 22.7M less the unused pooler
  paths = cx.paths(minilm.params)
  assert "blocks/attention/q/kernel" in paths and "embed/embedding" in paths
  assert minilm.params["blocks"]["attention"]["q"]["kernel"].shape == (6, 384, 384)
  sequence = bert.model_from_config(minilm.config, output="sequence")
  assert sequence.output_signature(cx.ShapeDtype((2, 7), jnp.int32)) == cx.ShapeDtype((2, 7, 384))
  head = bert.model_from_config(minilm.config, n_classes=3, pool="cls")
  assert head.output_signature(cx.ShapeDtype((2, 7), jnp.int32)) == cx.ShapeDtype((2, 3))


def _tiny_bert(folder, config_changes=None, drop=None, reshape=None, prefix=""):
  """A random 2-layer BERT in Hugging Face's file layout."""
  from safetensors.numpy import save_file
  config = {"model_type": "bert", "vocab_size": 20, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 12, "type_vocab_size": 2,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0, **(config_changes or {})}
  rng = np.random.default_rng(0)
  shapes = {"embeddings.word_embeddings.weight": (20, 8), "embeddings.position_embeddings.weight": (12, 8),
            "embeddings.token_type_embeddings.weight": (2, 8), "embeddings.LayerNorm.weight": (8,),
            "embeddings.LayerNorm.bias": (8,), "pooler.dense.weight": (8, 8), "pooler.dense.bias": (8,)}
  for i in range(2):
    for name in ("query", "key", "value"):
      shapes[f"encoder.layer.{i}.attention.self.{name}.weight"] = (8, 8)
      shapes[f"encoder.layer.{i}.attention.self.{name}.bias"] = (8,)
    shapes.update({f"encoder.layer.{i}.attention.output.dense.weight": (8, 8),
                   f"encoder.layer.{i}.attention.output.dense.bias": (8,),
                   f"encoder.layer.{i}.attention.output.LayerNorm.weight": (8,),
                   f"encoder.layer.{i}.attention.output.LayerNorm.bias": (8,),
                   f"encoder.layer.{i}.intermediate.dense.weight": (16, 8),
                   f"encoder.layer.{i}.intermediate.dense.bias": (16,),
                   f"encoder.layer.{i}.output.dense.weight": (8, 16), f"encoder.layer.{i}.output.dense.bias": (8,),
                   f"encoder.layer.{i}.output.LayerNorm.weight": (8,), f"encoder.layer.{i}.output.LayerNorm.bias": (8,)})
  shapes.update(reshape or {})
  tensors = {prefix + k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items() if k != drop}
  folder.mkdir(exist_ok=True)
  save_file(tensors, str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps(config))
  (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                              [f"w{i}" for i in range(15)]))
  return tensors


def _numpy_bert(t, ids, prefix=""):
  """BERT's forward pass written out in numpy (post-LayerNorm, exact GELU), for the importer's mapping."""
  from math import erf
  gelu = np.vectorize(lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))))

  def norm(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * t[prefix + name + ".weight"] + t[prefix + name + ".bias"]

  def dense(x, name):
    return x @ t[prefix + name + ".weight"].T + t[prefix + name + ".bias"]

  e = prefix + "embeddings."
  x = t[e + "word_embeddings.weight"][ids] + t[e + "position_embeddings.weight"][:ids.shape[1]] + \
      t[e + "token_type_embeddings.weight"][0]
  x = norm(x, "embeddings.LayerNorm")
  mask = ids != 0
  for i in range(2):
    layer = f"encoder.layer.{i}."
    q, k, v = (dense(x, layer + f"attention.self.{n}").reshape(*ids.shape, 2, 4) for n in ("query", "key", "value"))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0 + np.where(mask, 0, -1e9)[:, None, None, :]
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*ids.shape, 8)
    x = norm(x + dense(attended, layer + "attention.output.dense"), layer + "attention.output.LayerNorm")
    x = norm(x + dense(gelu(dense(x, layer + "intermediate.dense")), layer + "output.dense"), layer + "output.LayerNorm")
  pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_import_maps_every_tensor_of_a_users_bert(tmp_path, prefix):
  tensors = _tiny_bert(tmp_path / "m", prefix=prefix)
  imported = bert.import_files(tmp_path / "m")
  ids = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
  ours, _ = bert.model_from_config(imported.config).apply(imported.params, {}, jnp.asarray(ids))
  np.testing.assert_allclose(np.asarray(ours), _numpy_bert(tensors, ids, prefix), atol=1e-5)
  assert list(imported.tokenizer.encode("w3 w4")) == [2, 8, 9, 3]


def test_import_errors_name_the_problem(tmp_path):
  with pytest.raises(PretrainedError, match="no config.json"):
    bert.import_files(tmp_path)
  _tiny_bert(tmp_path / "a", drop="encoder.layer.1.output.dense.bias")
  with pytest.raises(PretrainedError, match=r"blocks/ff/out/bias has layers \[0\]"):
    bert.import_files(tmp_path / "a")
  _tiny_bert(tmp_path / "b", reshape={"embeddings.token_type_embeddings.weight": (3, 8)})
  with pytest.raises(PretrainedError, match=r"token_type_embed/embedding: shape \(3, 8\), the model wants \(2, 8\)"):
    bert.import_files(tmp_path / "b")
  _tiny_bert(tmp_path / "c", config_changes={"hidden_act": "swish"})
  with pytest.raises(PretrainedError, match="hidden_act 'swish'"):
    bert.import_files(tmp_path / "c")
  _tiny_bert(tmp_path / "d", config_changes={"model_type": "roberta"})
  with pytest.raises(PretrainedError, match="model_type 'roberta'"):
    bert.import_files(tmp_path / "d")
