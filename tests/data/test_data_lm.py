"""Language-model stages: (inputs, targets) as one sequence, packing that loses no token, BERT-style masking."""

import numpy as np
import pytest

from combinax import data


def run(examples, *stages):
  return list(data.Serial(data.FromList(examples), *stages)())


def test_concatenate_to_lm_input():
  (seq, tgt, w), = run([(np.array([4, 5]), np.array([6]))], data.ConcatenateToLMInput())
  np.testing.assert_array_equal(seq, [4, 5, 6])
  np.testing.assert_array_equal(tgt, seq)
  np.testing.assert_array_equal(w, [0, 0, 1])
  with pytest.raises(data.DataError, match="3 tokens, more than pad_to_length=2"):
    run([(np.array([4, 5]), np.array([6]))], data.ConcatenateToLMInput(pad_to_length=2))
  with pytest.raises(data.DataError, match="1-D array of token ids"):
    run([("text", np.array([6]))], data.ConcatenateToLMInput())


@pytest.mark.parametrize("eos_id", [None, 1])
def test_packing_loses_no_token(eos_id):
  rng = np.random.default_rng(0)
  examples = [(rng.integers(2, 50, rng.integers(0, 40)).astype(np.int32),) for _ in range(60)]
  packed = run(examples, data.PackLM(16, eos_id=eos_id))
  expected = np.concatenate([np.append(x, [eos_id]) if eos_id is not None else x for (x,) in examples])
  assert all(seq.shape == (16,) and seq.dtype == np.int32 for seq, _, _ in packed)
  got = np.concatenate([seq[w > 0] for seq, _, w in packed])
  np.testing.assert_array_equal(got, expected)
  assert all(w.all() for _, _, w in packed[:-1])       # only the last window has padding
  assert len(packed) == -(-len(expected) // 16)
  for seq, tgt, _ in packed:
    assert tgt is seq or np.array_equal(tgt, seq)


def test_packed_lm_batches_feed_a_transformer_lm_shape():
  examples = [(np.arange(2, 2 + n, dtype=np.int32),) for n in (5, 9, 3, 30, 7, 11)]
  batches = run(examples, data.PackLM(8, eos_id=1), data.Batch(4, drop_remainder=True))
  assert [tuple(a.shape for a in b) for b in batches] == [((4, 8), (4, 8), (4, 8))] * 2
  assert batches[0][0].dtype == np.int32 and batches[0][2].dtype == np.float32


def test_mlm_masks_80_10_10_and_never_special_ids():
  vocab, mask_id = 100, 4
  specials = (0, 1, 2, 3)
  rng = np.random.default_rng(1)
  examples = [(np.concatenate([[2], rng.integers(5, vocab, 60), [3], [0] * 5]).astype(np.int32),)
              for _ in range(300)]
  out = run(examples, data.MLM(vocab, mask_id, rate=0.15, seed=0, special_ids=specials))
  chosen = masked_count = random_count = kept = 0
  for (orig,), (masked, target, weights) in zip(examples, out):
    np.testing.assert_array_equal(target, orig)
    assert weights.dtype == np.float32
    sel = weights > 0
    assert not np.isin(orig[sel], specials).any()                # specials never chosen
    np.testing.assert_array_equal(masked[~sel], orig[~sel])      # others untouched
    assert sel.sum() == 9                                         # round(60 * 0.15)
    chosen += sel.sum()
    masked_count += (masked[sel] == mask_id).sum()
    changed = (masked[sel] != mask_id) & (masked[sel] != orig[sel])
    random_count += changed.sum()
    kept += (masked[sel] == orig[sel]).sum()
    assert not np.isin(masked[sel][changed], specials + (mask_id,)).any()
  assert abs(masked_count / chosen - 0.8) < 0.03
  assert abs((chosen - masked_count) / chosen - 0.2) < 0.03     # random + kept (a random id may equal the original)
  assert 0.07 < random_count / chosen < 0.13 and 0.07 < kept / chosen < 0.13


def test_mlm_is_seeded_and_keeps_other_positions():
  examples = [(np.arange(5, 25, dtype=np.int32), 7)]
  a = run(examples, data.MLM(30, 4, seed=3))
  b = run(examples, data.MLM(30, 4, seed=3))
  c = run(examples, data.MLM(30, 4, seed=4))
  assert np.array_equal(a[0][0], b[0][0]) and not np.array_equal(a[0][2], c[0][2])
  assert a[0][3] == 7
