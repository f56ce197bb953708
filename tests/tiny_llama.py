"""A bundled LM for the tests that need one but not SmolLM2's 135 M weights: a 2-layer Llama of width 32 written as a
GGUF file with llama.cpp's blocks (Q4_1 kernels, a Q8_0 token table, float32 norms, as SmolLM2's file has them),
registered under `NAME` for one test (`register`)."""

from pathlib import Path

import numpy as np

from combinax.pretrained import registry

NAME = "tiny-llama"
TOKENS = ["<|endoftext|>", "a", "b", "ab", "Ġ", "<|im_end|>"]


def tensor_shapes(n_layers: int, width: int, n_tokens: int) -> dict[str, tuple]:
  """{name: shape} of a Llama GGUF's tensors, (rows, columns) as llama.cpp stores them (a kernel's rows are its
  outputs): 2 heads of width / 2 sharing one key/value head, a feed-forward twice the width."""
  tensors = {"token_embd.weight": (n_tokens, width), "output_norm.weight": (width,)}
  for i in range(n_layers):
    tensors.update({f"blk.{i}.attn_norm.weight": (width,), f"blk.{i}.attn_q.weight": (width, width),
                    f"blk.{i}.attn_k.weight": (width // 2, width), f"blk.{i}.attn_v.weight": (width // 2, width),
                    f"blk.{i}.attn_output.weight": (width, width), f"blk.{i}.ffn_norm.weight": (width,),
                    f"blk.{i}.ffn_gate.weight": (2 * width, width), f"blk.{i}.ffn_up.weight": (2 * width, width),
                    f"blk.{i}.ffn_down.weight": (width, 2 * width)})
  return tensors


def write_gguf(path: Path, *, n_layers: int = 2) -> Path:
  """A Llama GGUF file of width 32 (one 32-element block per row), 2 heads sharing one key/value head."""
  import gguf
  rng = np.random.default_rng(0)
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(n_layers)
  writer.add_context_length(64)
  writer.add_embedding_length(32)
  writer.add_feed_forward_length(64)
  writer.add_head_count(2)
  writer.add_head_count_kv(1)
  writer.add_rope_freq_base(10000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(len(TOKENS))
  writer.add_tokenizer_model("gpt2")
  writer.add_token_list(TOKENS)
  writer.add_token_merges(["a b"])
  writer.add_token_types([3, 1, 1, 1, 1, 3])
  writer.add_eos_token_id(5)
  tensors = tensor_shapes(n_layers, 32, len(TOKENS))
  for name, shape in tensors.items():
    value = rng.normal(size=shape).astype(np.float32)
    if len(shape) == 1:
      writer.add_tensor(name, np.abs(value))
      continue
    kind = gguf.GGMLQuantizationType.Q8_0 if name == "token_embd.weight" else gguf.GGMLQuantizationType.Q4_1
    writer.add_tensor(name, gguf.quants.quantize(value, kind), raw_dtype=kind)   # (its shape: from the bytes)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def register(monkeypatch, folder: Path) -> str:
  """Registers the tiny LM as the bundled model `NAME` (its "package" installed at `folder`) and points
  COMBINAX_CACHE at `folder/cache`, for one test; returns its name."""
  gguf_file = write_gguf(folder / "tiny.gguf")
  monkeypatch.setitem(registry.ENTRIES, NAME, registry.Entry(
      NAME, "llama", "tiny-llama-weights", "0.0.1", "tiny_llama_weights", "tiny.gguf", "MIT",
      "a test's 2-layer Llama, d 32"))
  installed = registry.source_files
  monkeypatch.setattr(registry, "source_files", lambda name: gguf_file if name == NAME else installed(name))
  monkeypatch.setenv("COMBINAX_CACHE", str(folder / "cache"))
  return NAME
