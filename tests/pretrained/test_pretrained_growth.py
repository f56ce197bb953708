"""Growing the bundled all-MiniLM-L6-v2 (post-norm BERT, 6 layers, d 384): wider with its function kept, and deeper
and wider with a trained operator, then fine-tuned by the shipped sentiment recipe."""

from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from combinax import data as cx_data
from combinax import growth
from combinax import layers as cl
from combinax.pretrained import bert
from combinax.store import checkpoints
from combinax.cli import frame as cli
from combinax.train.trainer import Trainer

from conftest import files_of

pytest.importorskip("safetensors")
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "finetune_minilm_sentiment.gin"


@pytest.fixture(scope="module")
def minilm():
  return bert.import_files(files_of("all-minilm-l6-v2"))


def with_head(model, imported):
  """The imported encoder's params under a new (random) 2-class head."""
  fresh, _ = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))
  return {**fresh, **imported.params}


def larger(config, d_model, n_layers):
  return bert.model_from_config({**config, "hidden_size": d_model, "num_attention_heads": d_model // 32,
                                 "intermediate_size": 4 * d_model, "num_hidden_layers": n_layers}, n_classes=2)


def test_minilm_grown_twice_as_wide_gives_the_same_logits(minilm):
  small = bert.model_from_config(minilm.config, n_classes=2)
  large = larger(minilm.config, 768, 6)                       # 12 heads of 32 -> 24; LayerNorm keeps its statistics
  params = with_head(small, minilm)
  plan = growth.make_plan(small, params, large)
  grown = growth.expand(plan, growth.init_operator(jax.random.key(0), plan, growth.METHODS["net2net"]), params)
  encoded = [minilm.tokenizer.encode(text) for text in ("growth keeps what a model has learned", "and a second")]
  ids = jnp.asarray(np.stack([np.pad(e, (0, 12 - len(e))) for e in encoded]))      # padded with 0: masked
  np.testing.assert_allclose(jax.jit(large.apply)(grown, {}, ids)[0], jax.jit(small.apply)(params, {}, ids)[0],
                             atol=1e-4)


@pytest.mark.isolated(devices=1)   # on 8 devices it peaked at 10.4 GB (8 replicas of the grown model and its grads)
def test_minilm_grows_deeper_and_wider_and_fine_tunes_with_the_sentiment_recipe(minilm, pretrained_cache, tmp_path):
  small = bert.model_from_config(minilm.config, n_classes=2)
  large = larger(minilm.config, 512, 8)
  batches = cx_data.classification_pipeline(split="train", tokenizer=minilm.tokenizer, max_length=16, batch_size=8)
  params = growth.grow(small, with_head(small, minilm), large, batches(), steps=2, loss_layer=cl.CategoryCrossEntropy())
  assert params["blocks"]["attention"]["q"]["kernel"].shape == (8, 512, 512)
  checkpoints.save(tmp_path / "grown", 0, {"params": params, "state": {}})
  gin.clear_config()
  try:
    cli.parse_config([str(RECIPE)], ["LENGTH = 16", "train/classification_pipeline.batch_size = 8",
                                     "eval/classification_pipeline.batch_size = 8", "EvalTask.n_batches = 1"])
    trainer = Trainer(model=large, init_checkpoint=str(tmp_path / "grown"), output_dir=str(tmp_path / "run"),
                      steps=2, checkpoint_every=2, log_every=1, progress=False)
    state = trainer.run()
  finally:
    gin.clear_config()
  assert np.isfinite(float(trainer.evaluate(state.params, state.state)["loss"]))
  # The recipe freezes the word embeddings: the fine-tuned model still has the grown ones, bit for bit.
  np.testing.assert_array_equal(state.params["embed"]["embedding"], params["embed"]["embedding"])
  assert checkpoints.latest(tmp_path / "run").name == "step_00000002"
