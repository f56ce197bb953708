"""Llama-family decoders (Llama, SmolLM2, ...) from a GGUF file: weights dequantized, tokenizer rebuilt.

The model is `combinax.models.TransformerLM` with Llama's options: RMSNorm before each block, SwiGLU feed-forward,
no biases, grouped-query attention (`n_kv_heads`) and rotary positions. GGUF files (written by llama.cpp's converter)
store the q/k projections with their rows permuted for *interleaved* RoPE, so the model uses
`positions="rotary_interleaved"` and takes the rows as they are: the same function as Hugging Face's half-rotation
layout, with no un-permuting. Quantized tensors (Q4_0, Q4_1, Q8_0, K-quants, ...) are dequantized to float32 by the
`gguf` package, or, with `packed=True`, Q8_0 / Q4_0 / Q4_1 tensors are kept as the file stores them: a
`combinax.quant.QuantizedArray` made of the file's own bytes, which the model's matmuls dequantize as they go (other
types are still dequantized).

combinax's LM starts every sequence with token 0 (`ShiftRight`); for GPT-2-style vocabularies such as SmolLM2's that
is `<|endoftext|>`, the document separator the model was trained with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from combinax import layers as cl, quant
from combinax.data.hf_tokenizers import BPETokenizer, tokenizers_package
from combinax.models.image_prefix import ImagePrefixLM
from combinax.models.transformer import TransformerLM, TransformerOptions
from combinax.paths import unflatten
from combinax.pretrained.families import Imported, PretrainedError, check_params, stack_layers
from combinax.shapes import ShapeDtype

FAMILY = "llama"

# GGUF name (after "blk.N.") -> (combinax path under blocks/, transpose?)
_BLOCK = {
    "attn_norm.weight": ("attention_norm/scale", False),
    "attn_q.weight": ("attention/q/kernel", True),
    "attn_k.weight": ("attention/k/kernel", True),
    "attn_v.weight": ("attention/v/kernel", True),
    "attn_output.weight": ("attention/o/kernel", True),
    "ffn_norm.weight": ("ff_norm/scale", False),
    "ffn_gate.weight": ("ff/gate/kernel", True),
    "ffn_up.weight": ("ff/up/kernel", True),
    "ffn_down.weight": ("ff/down/kernel", True),
}
_TOP = {"token_embd.weight": ("embed/embedding", False), "output_norm.weight": ("final_norm/scale", False),
        "output.weight": ("logits/kernel", True)}
_CONTROL = 3  # GGUF token type of special tokens such as <|im_start|>


def _gguf():
  try:
    import gguf
  except ImportError:
    raise ImportError("reading GGUF files needs the gguf package: pip install 'combinax[pretrained]'") from None
  return gguf


def options_from_config(config: dict, *, max_len: int | None = None, dropout: float = 0.0, scan_layers: bool = True,
                        remat: bool | str = False) -> TransformerOptions:
  """The blocks a GGUF file's `llama.*` metadata describes (`max_len`: the KV cache's positions when decoding,
  default the model's context length)."""
  return TransformerOptions(
      d_model=config["d_model"], d_ff=config["d_ff"], n_heads=config["n_heads"], n_kv_heads=config["n_kv_heads"],
      dropout=dropout, max_len=int(max_len or config["context_length"]), ff_activation=cl.Silu,
      positions="rotary_interleaved", rotary_base=config["rope_base"], norm="rms", norm_epsilon=config["rms_epsilon"],
      gated_ff=True, use_bias=False, scan_layers=scan_layers, remat=remat)


def model_from_config(config: dict, *, mode: str = "eval", max_len: int | None = None, dropout: float = 0.0,
                      scan_layers: bool = True, remat: bool = False, n_layers: int | None = None) -> cl.Layer:
  """The decoder-only LM a GGUF file's `llama.*` metadata describes. `max_len` bounds predict mode's KV cache
  (default: the model's context length); `n_layers` builds the same model with fewer (or more) blocks: a student
  of it (`combinax.distill.take_layers` cuts its params)."""
  o = options_from_config(config, max_len=max_len, dropout=dropout, scan_layers=scan_layers, remat=remat)
  return TransformerLM(config["vocab_size"], n_layers=n_layers or config["n_layers"], mode=mode,
                       tie_embeddings=config["tie_embeddings"],
                       **{field.name: getattr(o, field.name) for field in dataclasses.fields(o)})


def image_prefix_model_from_config(config: dict, vision: cl.Layer, *, mode: str = "eval", max_len: int | None = None,
                                   dropout: float = 0.0, scan_layers: bool = True, remat: bool | str = False,
                                   n_layers: int | None = None) -> cl.Layer:
  """The LM with `vision`'s tokens projected before its text (`models.ImagePrefixLM`): its paths are the LM's own,
  so the pretrained checkpoint loads into it, and `image/...`. `max_len` counts the image's tokens too; `n_layers`
  as `model_from_config`'s."""
  o = options_from_config(config, max_len=max_len, dropout=dropout, scan_layers=scan_layers, remat=remat)
  return ImagePrefixLM(vision, config["vocab_size"], o, n_layers=n_layers or config["n_layers"],
                       tie_embeddings=config["tie_embeddings"], mode=mode)


def start_id(config: dict) -> int | None:
  """What `decoding.autoregressive_sample(..., start_id=)` feeds before a prompt so that the model sees exactly
  the context its reference (llama.cpp, transformers) sees: the BOS token if the model's tokenizer adds one, else
  nothing (None). combinax's own LMs are trained after a token 0 instead, which is the sampler's default."""
  return config["bos_id"] if config.get("add_bos") and config.get("bos_id", -1) >= 0 else None


def example_input(config: dict):
  return ShapeDtype((1, 8), jnp.int32)


def _field(reader, key: str, default=None):
  field = reader.fields.get(key)
  if field is None:
    if default is None:
      raise PretrainedError(f"GGUF file: no {key!r} in its metadata")
    return default
  return field.contents()


def read_config(reader) -> dict:
  """The model's hyperparameters from the GGUF metadata (architecture `llama`)."""
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise PretrainedError(f"GGUF file: architecture {arch!r} is not supported (llama)")
  names = {t.name for t in reader.tensors}
  d_model, n_heads = int(_field(reader, "llama.embedding_length")), int(_field(reader, "llama.attention.head_count"))
  rope_dims = int(_field(reader, "llama.rope.dimension_count", d_model // n_heads))
  if rope_dims != d_model // n_heads:
    raise PretrainedError(f"GGUF file: rotary dimension {rope_dims} != head size {d_model // n_heads} (partial "
                          "rotary is not supported)")
  tokens = _field(reader, "tokenizer.ggml.tokens")
  return {
      "vocab_size": int(_field(reader, "llama.vocab_size", len(tokens))),
      "d_model": d_model, "n_heads": n_heads,
      "d_ff": int(_field(reader, "llama.feed_forward_length")),
      "n_layers": int(_field(reader, "llama.block_count")),
      "n_kv_heads": int(_field(reader, "llama.attention.head_count_kv", n_heads)),
      "context_length": int(_field(reader, "llama.context_length")),
      "rope_base": float(_field(reader, "llama.rope.freq_base", 10000.0)),
      "rms_epsilon": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
      "tie_embeddings": "output.weight" not in names,
      "bos_id": int(_field(reader, "tokenizer.ggml.bos_token_id", -1)),
      # Whether the model's tokenizer puts bos_id before a text (SmolLM2's does not): see start_id.
      "add_bos": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
      "eos_id": int(_field(reader, "tokenizer.ggml.eos_token_id", -1)),
      "name": str(_field(reader, "general.name", "llama")),
  }


def read_params(reader, config: dict, *, packed: bool = False) -> dict:
  """Every tensor dequantized to float32 (or, `packed`, its Q8_0 / Q4_0 / Q4_1 blocks kept as `QuantizedArray`s)
  and placed at its combinax path (block tensors stacked by layer)."""
  gguf = _gguf()
  kept = {gguf.GGMLQuantizationType.Q8_0: "int8", gguf.GGMLQuantizationType.Q4_0: "q4",
          gguf.GGMLQuantizationType.Q4_1: "q4_1"} if packed else {}
  n_layers = config["n_layers"]
  flat, blocks = {}, {}

  def value(tensor, transpose: bool):
    if tensor.tensor_type in kept and len(tensor.shape) == 2:
      # The file's (rows, k) matrix in blocks along k: a Dense kernel is its transpose (k grouped, axis -2), an
      # embedding table is the matrix itself (grouped along d, axis -1).
      return quant.from_gguf_blocks(tensor.data, kept[tensor.tensor_type], axis=-2 if transpose else -1)
    array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
    array = array.reshape([int(d) for d in reversed(tensor.shape)])  # GGUF lists dims fastest first
    return array.T if transpose else array

  for tensor in reader.tensors:
    if tensor.name.startswith("blk."):
      index, rest = tensor.name[len("blk."):].split(".", 1)
      if rest not in _BLOCK:
        raise PretrainedError(f"GGUF file: unknown tensor {tensor.name!r}")
      path, transpose = _BLOCK[rest]
      blocks.setdefault(path, {})[int(index)] = value(tensor, transpose)
    elif tensor.name in _TOP:
      path, transpose = _TOP[tensor.name]
      flat[path] = value(tensor, transpose)
    elif tensor.name != "rope_freqs.weight":
      raise PretrainedError(f"GGUF file: unknown tensor {tensor.name!r}")
  flat.update(stack_layers(blocks, n_layers, "GGUF file"))
  return unflatten(flat)


def read_tokenizer(reader, config: dict) -> BPETokenizer:
  """The byte-level BPE tokenizer stored in the file (`tokenizer.ggml.model == "gpt2"`), special tokens kept whole."""
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise PretrainedError(f"GGUF file: tokenizer {kind!r} is not supported (gpt2 byte-level BPE)")
  tk = tokenizers_package()
  tokens = list(_field(reader, "tokenizer.ggml.tokens"))
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
  types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
  tokenizer = tk.Tokenizer(tk.models.BPE({t: i for i, t in enumerate(tokens)}, merges))
  byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
  if _field(reader, "tokenizer.ggml.pre", "gpt2") == "smollm":  # SmolLM splits numbers into single digits
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([tk.pre_tokenizers.Digits(individual_digits=True),
                                                          byte_level])
  else:
    tokenizer.pre_tokenizer = byte_level
  tokenizer.decoder = tk.decoders.ByteLevel()
  tokenizer.add_special_tokens([tk.AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == _CONTROL])
  out = BPETokenizer(tokenizer)
  configure_tokenizer(out, config)
  return out


def configure_tokenizer(tokenizer, config: dict) -> None:
  """Pad with token 0 (the LM's start token) and end at the file's EOS."""
  tokenizer.pad_id = 0
  if config.get("eos_id", -1) >= 0:
    tokenizer.eos_id = config["eos_id"]


def import_files(path, *, packed: bool = False) -> Imported:
  """A Llama-family model from a `.gguf` file (or a folder holding exactly one); `packed` keeps its Q8_0 / Q4_0 /
  Q4_1 tensors packed (see `read_params`)."""
  path = Path(path)
  if path.is_dir():
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
      raise PretrainedError(f"{path}: expected one .gguf file, found {[p.name for p in found]}")
    path = found[0]
  if not path.exists():
    raise PretrainedError(f"{path}: no such GGUF file")
  try:
    reader = _gguf().GGUFReader(str(path))
  except (ValueError, OSError) as e:
    raise PretrainedError(f"{path}: not a readable GGUF file ({e})") from None
  config = read_config(reader)
  params = read_params(reader, config, packed=packed)
  check_params(params, model_from_config(config), example_input(config), path)
  return Imported(config, params, read_tokenizer(reader, config))
