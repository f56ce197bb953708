"""A bundled sentence encoder that embeds chunks and queries in batches under `jit`, each batch split over all
devices (the `data` axis), its params replicated.

>>> encoder = Encoder("all-minilm-l6-v2")             # doctest: +SKIP
>>> encoder.embed_texts(["Who built the ark?"]).shape  # doctest: +SKIP
(1, 384)

Texts are tokenised with the encoder's own tokenizer (`[CLS] ... [SEP]`) and padded to a few fixed lengths, so a
knowledge base's build compiles once and a search at most once per length bucket. Embeddings are L2-normalised,
so an inner product is a cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from combinax import pretrained
from combinax.paths import leaves_with_paths
from combinax.sharding import batch_sharding, make_mesh
from combinax.store import integrity


class EncoderError(ValueError):
  """An input the encoder cannot take (a query longer than its window, an encoder without sentence embeddings)."""


class Encoder:
  """`name`'s sentence embeddings of token ids or texts, `batch_size` rows at a time (rounded up to a multiple of
  the device count), on every device."""

  def __init__(self, name: str = "all-minilm-l6-v2", *, batch_size: int = 64):
    model, params, tokenizer = pretrained.load(name)   # the family's default output: normalised embeddings
    if not hasattr(tokenizer, "encode_with_offsets") or getattr(tokenizer, "cls_id", None) is None:   # not BERT's
      raise EncoderError(f"encoder {name!r}: its tokenizer ({type(tokenizer).__name__}) is not a sentence "
                         "encoder's WordPiece; a knowledge base needs one (e.g. all-minilm-l6-v2)")
    self.name = name
    self.tokenizer = tokenizer
    self.window = int(pretrained.config(name)["max_position_embeddings"])   # tokens, with [CLS] and [SEP]
    self.mesh = make_mesh()
    devices = self.mesh.shape["data"]
    self.batch_size = -(-batch_size // devices) * devices
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
    self._embed = jax.jit(lambda p, ids: model.apply(p, {}, ids)[0], out_shardings=NamedSharding(self.mesh, P()))
    self.dim = int(jax.eval_shape(self._embed, self.params, jax.ShapeDtypeStruct((1, 8), jnp.int32)).shape[-1])
    self.fingerprint = self._fingerprint(params)

  def _fingerprint(self, params) -> dict:
    """What makes two encoders' vectors comparable: the name, the weights' checksums, the tokenizer's vocabulary."""
    leaves = leaves_with_paths(params)
    weights = hashlib.sha256(json.dumps([[path, sums] for (path, _), sums in zip(
        leaves, integrity.checksums([leaf for _, leaf in leaves]))]).encode()).hexdigest()
    vocabulary = hashlib.sha256(self.tokenizer.to_json().encode("utf-8")).hexdigest()
    return {"name": self.name, "weights": weights, "tokenizer": vocabulary, "dim": self.dim}

  def with_specials(self, ids: np.ndarray) -> np.ndarray:
    return np.concatenate([[self.tokenizer.cls_id], np.asarray(ids, np.int32), [self.tokenizer.eos_id]])

  def embed_ids(self, rows: Sequence[np.ndarray], *, length: int | None = None,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(len(rows), dim) float32 embeddings of token-id rows that already hold their special tokens, padded to
    `length` (default: the longest row, rounded up to a power of two), `batch_size` rows per call."""
    longest = max((len(r) for r in rows), default=1)
    if longest > self.window:
      raise EncoderError(f"encoder {self.name}: an input of {longest} tokens is longer than its window of "
                         f"{self.window} (with [CLS] and [SEP]); shorten it")
    length = length or min(self.window, 1 << max(3, (longest - 1).bit_length()))
    out = np.zeros((len(rows), self.dim), np.float32)
    for begin in range(0, len(rows), self.batch_size):
      batch = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
      part = rows[begin:begin + self.batch_size]
      for i, row in enumerate(part):
        batch[i, :len(row)] = row
      embedded = self._embed(self.params, jax.device_put(batch, batch_sharding(self.mesh)))
      out[begin:begin + len(part)] = np.asarray(embedded)[:len(part)]
      if progress is not None:
        progress(len(part))
    return out

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """(len(texts), dim) embeddings of `texts` (queries): each must fit the window."""
    rows = [self.with_specials(self.tokenizer.encode_with_offsets(text)[0]) for text in texts]
    for text, row in zip(texts, rows):
      if len(row) > self.window:
        raise EncoderError(f"a query of {len(row)} tokens is longer than the window of encoder {self.name} "
                           f"({self.window} tokens with [CLS] and [SEP]): {text[:60]!r}...")
    return self.embed_ids(rows)
