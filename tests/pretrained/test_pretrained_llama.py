"""Llama-family GGUF import: SmolLM2-135M equals transformers' Llama on the same file; greedy decoding is sensible."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import decoding
from combinax.paths import leaves_with_paths
from combinax.pretrained import llama
from combinax.pretrained.families import PretrainedError

import tiny_llama
from conftest import files_of, reference

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2():
  return llama.import_files(files_of("smollm2-135m-instruct"))


def _logits(imported, ids, dtype):
  model = llama.model_from_config(imported.config)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), imported.params)
  shifted = jnp.asarray(np.append(ids[1:], 0))[None]  # our LM puts token 0 in front of its inputs itself
  logits, _ = jax.jit(model.apply)(params, {}, shifted)
  return np.asarray(logits[0], np.float64)


def test_smollm2_tokenizer_and_config(smollm2):
  ref = reference("smollm2")
  tok = smollm2.tokenizer
  np.testing.assert_array_equal(tok.encode(str(ref["prompt"])), ref["ids"][1:])
  np.testing.assert_array_equal(tok.encode(str(ref["chat"])), ref["chat_ids"][1:])  # <|im_start|> kept whole
  assert list(tok.encode("12")) == [33, 34]  # SmolLM's pre-tokenizer: one digit per token
  assert tok.decode(tok.encode("Héllo, wörld!")) == "Héllo, wörld!"
  assert (tok.pad_id, tok.eos_id) == (0, 2)
  config = smollm2.config
  assert (config["n_layers"], config["d_model"], config["n_heads"], config["n_kv_heads"]) == (30, 576, 9, 3)
  assert config["tie_embeddings"] and config["rope_base"] == 1e5
  assert cx.count_params(smollm2.params) == 134_515_008


def test_smollm2_logits_equal_transformers_llama(smollm2):
  ref = reference("smollm2")
  with jax.enable_x64(True):  # float64 on both sides: the mapping itself, free of rounding
    exact = _logits(smollm2, ref["ids"], jnp.float64)[:, ref["columns"]]
  assert np.abs(exact - ref["logits64"]).max() <= 1e-4
  ours = _logits(smollm2, ref["ids"], jnp.float32)
  # float32: rounding over 30 layers; the reference's own float32 run is ~7e-5 from its float64 one.
  assert np.abs(ours[:, ref["columns"]] - ref["logits64"]).max() <= 3e-4
  np.testing.assert_array_equal(ours.argmax(-1), ref["argmax"])


def test_smollm2_greedy_answer(smollm2):
  ref = reference("smollm2")
  model = llama.model_from_config(smollm2.config, mode="predict", max_len=48)
  out = decoding.autoregressive_sample(model, smollm2.params, ref["chat_ids"][None, 1:], max_length=12,
                                       temperature=0.0, eos_id=smollm2.tokenizer.eos_id)
  n = len(ref["greedy"])
  np.testing.assert_array_equal(np.asarray(out[0, :n]), ref["greedy"])
  assert smollm2.tokenizer.decode(out[0]) == "The capital of France is Paris."


def test_smollm2_decodes_from_the_context_its_own_tokenizer_gives_as_its_reference_does(smollm2):
  # SmolLM2's tokenizer adds no BOS; transformers and llama.cpp feed its ids as they are, and so does the sampler
  # with start_id=None (its default, token 0 in front, moved the prompt's logits by up to 19.7).
  ref = reference("smollm2_plain")
  assert not smollm2.config["add_bos"] and llama.start_id(smollm2.config) is None
  np.testing.assert_array_equal(smollm2.tokenizer.encode(str(reference("smollm2")["prompt"])), ref["ids"])
  decoder = llama.model_from_config(smollm2.config, mode="predict", max_len=48)
  _, state = decoder.init(jax.random.key(0), cx.ShapeDtype((1, 1), jnp.int32))
  logits, _ = jax.jit(decoder.apply)(smollm2.params, state, jnp.asarray(ref["ids"])[None])   # the prefill
  assert np.abs(np.asarray(logits[0], np.float64)[:, ref["columns"]] - ref["logits64"]).max() <= 3e-4
  out = decoding.autoregressive_sample(decoder, smollm2.params, ref["chat_ids"][None], max_length=12,
                                       temperature=0.0, eos_id=smollm2.tokenizer.eos_id,
                                       start_id=llama.start_id(smollm2.config))
  np.testing.assert_array_equal(np.asarray(out[0, :len(ref["greedy"])]), ref["greedy"])


def _tiny_gguf(path, arch="llama", skip=None, n_layers=2):
  rng = np.random.default_rng(0)
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(n_layers)
  writer.add_context_length(32)
  writer.add_embedding_length(8)
  writer.add_feed_forward_length(16)
  writer.add_head_count(2)
  writer.add_head_count_kv(1)
  writer.add_rope_freq_base(10000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(6)
  writer.add_tokenizer_model("gpt2")
  writer.add_token_list(["<|endoftext|>", "a", "b", "ab", "Ġ", "<|im_end|>"])
  writer.add_token_merges(["a b"])
  writer.add_token_types([3, 1, 1, 1, 1, 3])
  writer.add_eos_token_id(5)
  tensors = tiny_llama.tensor_shapes(n_layers, 8, 6)
  arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in tensors.items() if k != skip}
  for name, value in arrays.items():
    writer.add_tensor(name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return arrays


def test_import_of_a_users_gguf_places_every_tensor(tmp_path):
  arrays = _tiny_gguf(tmp_path / "tiny.gguf")
  imported = llama.import_files(tmp_path)  # a folder with one .gguf
  p = imported.params
  np.testing.assert_array_equal(p["embed"]["embedding"], arrays["token_embd.weight"])
  np.testing.assert_array_equal(p["blocks"]["attention"]["k"]["kernel"][1], arrays["blk.1.attn_k.weight"].T)
  np.testing.assert_array_equal(p["blocks"]["ff"]["down"]["kernel"][0], arrays["blk.0.ffn_down.weight"].T)
  assert imported.config["tie_embeddings"] and imported.config["n_kv_heads"] == 1
  assert list(imported.tokenizer.encode("ab a<|im_end|>")) == [3, 4, 1, 5]
  model = llama.model_from_config(imported.config)
  assert model.output_signature(cx.ShapeDtype((2, 5), jnp.int32)) == cx.ShapeDtype((2, 5, 6))


def test_import_errors_name_the_problem(tmp_path):
  _tiny_gguf(tmp_path / "a.gguf", skip="blk.1.ffn_up.weight")
  with pytest.raises(PretrainedError, match=r"blocks/ff/up/kernel has layers \[0\]"):
    llama.import_files(tmp_path / "a.gguf")
  _tiny_gguf(tmp_path / "b.gguf", arch="gpt2")
  with pytest.raises(PretrainedError, match="architecture 'gpt2' is not supported"):
    llama.import_files(tmp_path / "b.gguf")
  with pytest.raises(PretrainedError, match="expected one .gguf file"):
    llama.import_files(tmp_path)
  (tmp_path / "c.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(PretrainedError, match="not a readable GGUF file"):
    llama.import_files(tmp_path / "c.gguf")


def test_smollm2_packed_keeps_the_files_own_blocks_and_computes_the_dequantized_model(smollm2):
  from combinax import quant
  packed = llama.import_files(files_of("smollm2-135m-instruct"), packed=True)
  q = packed.params["blocks"]["attention"]["q"]["kernel"]
  assert isinstance(q, quant.QuantizedArray) and (q.kind, q.axis, q.shape) == ("q4_1", -2, (30, 576, 576))
  table = packed.params["embed"]["embedding"]
  assert (table.kind, table.axis, table.shape) == ("int8", -1, (49152, 576))   # the file's Q8_0 token table
  reader = gguf.GGUFReader(str(files_of("smollm2-135m-instruct")))
  raw = {t.name: t.data for t in reader.tensors}["blk.7.attn_q.weight"]   # (576 rows, 18 blocks of 20 bytes)
  blocks = raw.reshape(576, 18, 20)
  np.testing.assert_array_equal(q.values[7], blocks[..., 4:])            # the file's bytes, not recomputed
  np.testing.assert_array_equal(q.scale[7].view(np.uint8).reshape(576, 18, 2), blocks[..., :2])
  # Dequantized, they are exactly the float import (which gguf.quants dequantized at load).
  dequantized = dict(leaves_with_paths(quant.dequantize(packed.params)))
  for path, b in leaves_with_paths(smollm2.params):
    np.testing.assert_array_equal(np.asarray(dequantized.pop(path)), np.asarray(b), err_msg=path)
  assert not dequantized
  assert quant.nbytes(packed.params) < 0.19 * quant.nbytes(smollm2.params)
  ids = jnp.asarray(reference("smollm2")["ids"][None, 1:])
  model = llama.model_from_config(packed.config)
  apply = jax.jit(model.apply)
  packed_logits, plain_logits = apply(packed.params, {}, ids)[0], apply(smollm2.params, {}, ids)[0]
  # The same weights, summed in another order (in groups, per nibble): float32 rounding only.
  assert float(jnp.abs(packed_logits - plain_logits).max()) < 2e-3
  np.testing.assert_array_equal(packed_logits.argmax(-1), plain_logits.argmax(-1))


def test_load_packed_reads_the_packages_gguf_and_refuses_families_without_packed_weights():
  from combinax import pretrained, quant
  model, params, tokenizer = pretrained.load("smollm2-135m-instruct", packed=True, mode="predict", max_len=24)
  assert isinstance(params["blocks"]["ff"]["up"]["kernel"], quant.QuantizedArray)
  prompt = np.asarray(tokenizer.encode("The capital of France is"), np.int32)[None]
  out = decoding.autoregressive_sample(model, params, prompt, max_length=2, temperature=0.0, start_id=None)
  assert tokenizer.decode(out[0]) == " Paris."
  with pytest.raises(PretrainedError, match="its files hold no packed quantized weights; load it with packed=False"):
    pretrained.load("all-minilm-l6-v2", packed=True)
