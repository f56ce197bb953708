"""Language-model inputs: (inputs, targets) as one LM sequence, packing a token stream, BERT-style masking.

Every stage here emits `(inputs, targets, weights)` with float32 weights, which is what
`cl.WeightedCategoryCrossEntropy` and the LM models (`TransformerLM` shifts its inputs right inside) take.
"""

from __future__ import annotations

import numpy as np

from combinax.data.base import DataError, Stage, Stream, check_tuple
from combinax.data.transforms import MapStage, pad_to


def _ids(value, stage: str, key: int) -> np.ndarray:
  array = np.asarray(value)
  if array.ndim != 1 or array.dtype.kind not in "iu":
    raise DataError(f"{stage}: position {key} must be a 1-D array of token ids (Tokenize first), got "
                    f"{array.dtype} {array.shape}")
  return array


class ConcatenateToLMInput(MapStage):
  """(inputs, targets) -> (inputs ++ targets, inputs ++ targets, weights): weights are 1 on the targets only.

  With `pad_to_length`, sequences are padded with 0 (weight 0) to that length; longer ones raise a DataError.

  >>> from combinax import data
  >>> stage = data.ConcatenateToLMInput(pad_to_length=5)
  >>> seq, _, weights = stage.map((np.array([7, 8]), np.array([9, 1])))
  >>> seq, weights
  (array([7, 8, 9, 1, 0]), array([0., 0., 1., 1., 0.], dtype=float32))
  """

  def __init__(self, pad_to_length: int | None = None):
    self.pad_to_length = pad_to_length

  def map(self, example):
    check_tuple(example, self.name, (0, 1))
    inputs, targets = _ids(example[0], self.name, 0), _ids(example[1], self.name, 1)
    seq = np.concatenate([inputs, targets])
    weights = np.concatenate([np.zeros(len(inputs), np.float32), np.ones(len(targets), np.float32)])
    if self.pad_to_length is not None:
      if len(seq) > self.pad_to_length:
        raise DataError(f"ConcatenateToLMInput: inputs + targets have {len(seq)} tokens, more than "
                        f"pad_to_length={self.pad_to_length}; filter or truncate before")
      seq, weights = pad_to(seq, self.pad_to_length), pad_to(weights, self.pad_to_length)
    return seq, seq, weights


class _PackStream(Stream):

  def __init__(self, stage, upstream):
    super().__init__(stage, upstream)
    self._pieces: list[np.ndarray] = []
    self._count = 0
    self._exhausted = False
    self._dtype = np.dtype(np.int32)

  def next(self):
    stage = self.stage
    while self._count < stage.length and not self._exhausted:
      try:
        example = next(self.upstream)
      except StopIteration:
        self._exhausted = True
        break
      ids = _ids(check_tuple(example, stage.name, (stage.key,))[stage.key], stage.name, stage.key)
      self._dtype = ids.dtype
      self._pieces.append(ids)
      self._count += len(ids)
      if stage.eos_id is not None:
        self._pieces.append(np.array([stage.eos_id], ids.dtype))
        self._count += 1
    if self._count == 0:
      raise StopIteration
    tokens = np.concatenate(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
    chunk, rest = tokens[:stage.length], tokens[stage.length:]
    self._pieces, self._count = ([rest] if len(rest) else []), len(rest)
    weights = np.ones(len(chunk), np.float32)
    if len(chunk) < stage.length:   # the very end of the stream: pad, with weight 0
      chunk, weights = pad_to(chunk, stage.length, stage.pad_id), pad_to(weights, stage.length)
    return chunk, chunk, weights

  def state(self):
    carry = np.concatenate(self._pieces) if self._pieces else np.zeros(0, self._dtype)
    return {"carry": carry, "exhausted": self._exhausted}

  def restore(self, state):
    carry = np.asarray(state["carry"])
    self._pieces, self._count = ([carry] if len(carry) else []), len(carry)
    self._dtype = carry.dtype
    self._exhausted = bool(state["exhausted"])


class PackLM(Stage):
  """Packs token ids of many examples into LM sequences of exactly `length`: (tokens, tokens, weights).

  The ids at position `key` of each example are concatenated (with `eos_id` after each, when given) and cut
  into consecutive windows; an example may span two windows, so no token is lost. Only the last window of a
  finite stream is padded with `pad_id` (weight 0). Leftover tokens are part of the pipeline state.

  >>> from combinax import data
  >>> examples = [(np.array([5, 6, 7]),), (np.array([8]),), (np.array([9, 10]),)]
  >>> [seq.tolist() for seq, _, _ in data.Serial(data.FromList(examples), data.PackLM(4, eos_id=1))()]
  [[5, 6, 7, 1], [8, 1, 9, 10], [1, 0, 0, 0]]
  """

  def __init__(self, length: int, eos_id: int | None = None, key: int = 0, pad_id: int = 0):
    if length < 1:
      raise DataError(f"PackLM: length must be >= 1, got {length}")
    self.length = length
    self.eos_id = eos_id
    self.key = key
    self.pad_id = pad_id

  def stream(self, upstream):
    return _PackStream(self, upstream)


class _MLMStream(Stream):

  def __init__(self, stage, upstream):
    super().__init__(stage, upstream)
    self._rng = np.random.Generator(np.random.PCG64(stage.seed))
    self._replacements = np.setdiff1d(np.arange(stage.vocab_size), np.asarray(stage.special_ids, np.int64))

  def next(self):
    stage = self.stage
    example = check_tuple(next(self.upstream), stage.name, (stage.key,))
    ids = _ids(example[stage.key], stage.name, stage.key)
    candidates = np.flatnonzero(~np.isin(ids, stage.special_ids))
    weights = np.zeros(len(ids), np.float32)
    masked = ids.copy()
    if len(candidates):
      n = max(1, int(round(len(candidates) * stage.rate)))
      chosen = np.sort(self._rng.choice(candidates, n, replace=False))
      u = self._rng.random(n)
      to_mask = chosen[u < 0.8]
      to_random = chosen[(u >= 0.8) & (u < 0.9)]
      masked[to_mask] = stage.mask_id
      masked[to_random] = self._rng.choice(self._replacements, len(to_random))
      weights[chosen] = 1.0
    return (masked, ids, weights) + tuple(v for k, v in enumerate(example) if k != stage.key % len(example))

  def state(self):
    return {"rng": self._rng.bit_generator.state}

  def restore(self, state):
    self._rng.bit_generator.state = state["rng"]


class MLM(Stage):
  """BERT-style masking of the ids at position `key`: (masked, original, weights, *other positions).

  `rate` of the non-special positions (at least one) are chosen; of those 80% become `mask_id`, 10% a random id
  (never one of `special_ids`) and 10% stay. Weights are 1 on the chosen positions. Seeded and resumable.

  >>> from combinax import data
  >>> ids = np.array([2, 10, 11, 12, 13, 3])
  >>> masked, original, weights = next(data.Serial(
  ...     data.FromList([(ids,)]), data.MLM(vocab_size=20, mask_id=4, special_ids=(0, 2, 3, 4), rate=0.5))())
  >>> int(weights.sum()), bool(np.all(original == ids)), int(weights[0] + weights[-1])
  (2, True, 0)
  """

  def __init__(self, vocab_size: int, mask_id: int, rate: float = 0.15, seed: int = 0, key: int = 0,
               special_ids=(0, 1)):
    if not 0.0 < rate <= 1.0:
      raise DataError(f"MLM: rate must be in (0, 1], got {rate}")
    self.vocab_size = vocab_size
    self.mask_id = mask_id
    self.rate = rate
    self.seed = seed
    self.key = key
    self.special_ids = tuple(sorted(set(special_ids) | {mask_id}))

  def stream(self, upstream):
    return _MLMStream(self, upstream)
