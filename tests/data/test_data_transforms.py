"""Per-example transforms, the shuffle buffer, batching and bucketing."""

import numpy as np
import pytest

from combinax import data
from data_helpers import take


def run(examples, *stages):
  return list(data.Serial(data.FromList(examples), *stages)())


def test_tokenize_chosen_positions_and_detokenize():
  tok = data.CharTokenizer("abc")
  out = run([("ab", "ca", 7)], data.Tokenize(tok, keys=(1,), append_eos=True))
  assert out[0][0] == "ab" and out[0][2] == 7
  np.testing.assert_array_equal(out[0][1], [5, 3, 1])
  assert out[0][1].dtype == np.int32
  every = run([("ab", "ca", 7)], data.Tokenize(tok), data.Detokenize(tok, keys=(0, 1)))
  assert every == [("ab", "ca", 7)]
  with pytest.raises(data.DataError, match="position 2 holds int, not a string"):
    run([("ab", "ca", 7)], data.Tokenize(tok, keys=(2,)))
  with pytest.raises(data.DataError, match="no position 3"):
    run([("ab", "ca", 7)], data.Tokenize(tok, keys=(3,)))
  with pytest.raises(data.DataError, match="expects examples as tuples"):
    list(data.Tokenize(tok)(iter([{"text": "ab"}])))
  with pytest.raises(data.DataError, match=r"choose fields with keys=\(...\); available: \['text'\]"):
    run([{"text": "ab"}], data.Tokenize(tok))


def test_filter_by_length_counts_what_it_drops():
  examples = [(np.arange(n),) for n in (1, 3, 5, 2, 8)]
  stream = data.Serial(data.FromList(examples), data.FilterByLength(max_length=4, min_length=2))()
  assert [len(x) for (x,) in stream] == [3, 2]
  assert stream.get_stats() == {"FilterByLength[1]/dropped": 3}


def test_truncate_pad_and_loss_weights():
  examples = [(np.array([5, 6, 7, 8]), np.array([1, 2])), (np.array([9]), np.array([3, 4, 5]))]
  out = run(examples, data.TruncateToLength(3, keys=(0, 1)), data.PadToLength(3, keys=(0, 1)),
            data.AddLossWeights())
  np.testing.assert_array_equal(out[0][0], [5, 6, 7])
  np.testing.assert_array_equal(out[0][1], [1, 2, 0])
  np.testing.assert_array_equal(out[0][2], [1, 1, 0])
  np.testing.assert_array_equal(out[1][0], [9, 0, 0])
  assert out[1][2].dtype == np.float32
  with pytest.raises(data.DataError, match="longer than length 2; use TruncateToLength"):
    run(examples, data.PadToLength(2))


def test_loss_weights_on_batches():
  batch = (np.array([[1, 2, 0], [3, 0, 0]]),)
  (_, weights), = run([batch], data.AddLossWeights(key=0))
  np.testing.assert_array_equal(weights, [[1, 1, 0], [1, 0, 0]])


def test_map_whole_example_or_positions():
  assert run([(1, 2)], data.Map(lambda e: (e[1], e[0]))) == [(2, 1)]
  assert run([(1, 2)], data.Map(lambda v: v * 10, keys=(1,))) == [(1, 20)]


def test_shuffle_is_a_seeded_permutation():
  examples = [(i,) for i in range(50)]
  a = [x for (x,) in run(examples, data.Shuffle(8, seed=5))]
  b = [x for (x,) in run(examples, data.Shuffle(8, seed=5))]
  c = [x for (x,) in run(examples, data.Shuffle(8, seed=6))]
  assert a == b and a != c and sorted(a) == list(range(50)) and a != list(range(50))
  assert [x for (x,) in run(examples, data.Shuffle(1))] == list(range(50))


def test_batch_pads_to_the_longest_and_keeps_the_remainder():
  examples = [(np.array([1, 2]), 0), (np.array([3, 4, 5]), 1), (np.array([6]), 2)]
  batches = run(examples, data.Batch(2))
  np.testing.assert_array_equal(batches[0][0], [[1, 2, 0], [3, 4, 5]])
  np.testing.assert_array_equal(batches[0][1], [0, 1])
  np.testing.assert_array_equal(batches[1][0], [[6]])
  stream = data.Serial(data.FromList(examples), data.Batch(2, drop_remainder=True))()
  assert len(list(stream)) == 1 and stream.get_stats() == {"Batch[1]/dropped": 1}
  with pytest.raises(data.DataError, match="differ in structure"):
    run([(1, 2), (3,)], data.Batch(2))
  with pytest.raises(data.DataError, match="mixes ranks"):
    run([(np.zeros(2),), (np.zeros((2, 2)),)], data.Batch(2))


def test_batch_of_2d_examples_and_strings():
  (x, s), = run([(np.ones((2, 3)), "a"), (np.ones((1, 4)), "bc")], data.Batch(2))
  assert x.shape == (2, 2, 4) and x[1, 1].sum() == 0 and x[1, 0].sum() == 4
  assert s.tolist() == ["a", "bc"]


def lengths_example(*lengths):
  return [(np.full(n, n, np.int32),) for n in lengths]


def test_bucket_by_length_groups_and_pads_to_the_boundary():
  examples = lengths_example(3, 7, 2, 9, 4, 1, 12, 8)
  batches = run(examples, data.BucketByLength([4, 8, 16], [2, 2, 1]))
  assert [b[0].shape for b in batches] == [(2, 4), (1, 16), (2, 4), (1, 16), (2, 8)]
  assert [sorted(set(b[0].ravel()) - {0}) for b in batches] == [[2, 3], [9], [1, 4], [12], [7, 8]]
  unpadded = run(examples, data.BucketByLength([4, 8, 16], [2, 2, 1], pad_to_boundary=False))
  assert [b[0].shape for b in unpadded] == [(2, 3), (1, 9), (2, 4), (1, 12), (2, 8)]


def test_bucket_too_long_raises_unless_dropping_is_asked_for():
  examples = lengths_example(3, 20, 2)
  with pytest.raises(data.DataError, match=r"length 20 .* longer than every bucket \(largest boundary 8\).*"
                                           r"drop_long=True"):
    run(examples, data.BucketByLength([4, 8], [2, 2]))
  stream = data.Serial(data.FromList(examples), data.BucketByLength([4, 8], [2, 2], drop_long=True))()
  assert [b[0].shape for b in stream] == [(2, 4)]
  assert stream.get_stats() == {"BucketByLength[1]/dropped_long": 1, "BucketByLength[1]/dropped_remainder": 0}


def test_bucket_length_from_several_positions_pads_all():
  examples = [(np.arange(2), np.arange(6)), (np.arange(3), np.arange(1))]
  batches = run(examples, data.BucketByLength([4, 8], [2, 2], length_keys=(0, 1)))
  assert [(a.shape, b.shape) for a, b in batches] == [((1, 4), (1, 4)), ((1, 8), (1, 8))]   # flushed at the end
  np.testing.assert_array_equal(batches[1][1], [[0, 1, 2, 3, 4, 5, 0, 0]])
  stream = data.Serial(data.FromList(examples),
                       data.BucketByLength([4, 8], [2, 2], length_keys=(0, 1), drop_remainder=True))()
  assert list(stream) == [] and stream.get_stats()["BucketByLength[1]/dropped_remainder"] == 2


def test_bucket_argument_errors():
  with pytest.raises(data.DataError, match="increasing"):
    data.BucketByLength([8, 4], [1, 1])
  with pytest.raises(data.DataError, match="one batch size >= 1 per boundary"):
    data.BucketByLength([4, 8], [1, 1, 1])


def test_stream_is_a_plain_iterator():
  stream = data.Serial(data.FromList([(1,), (2,)]))()
  assert iter(stream) is stream and take(stream, 2) == [(1,), (2,)]
  with pytest.raises(StopIteration):
    next(stream)


def test_stages_take_gin_bindings():
  import gin
  gin.clear_config()
  try:
    gin.parse_config(["combinax.data.Shuffle.buffer_size = 3", "combinax.data.Batch.batch_size = 2",
                      "combinax.data.TSV.header = False"])
    assert data.Shuffle(seed=1).buffer_size == 3 and data.Batch().batch_size == 2
    assert data.TSV("x.tsv", columns=(0,)).header is False and data.CSV("x.csv", columns=("a",)).header is True
  finally:
    gin.clear_config()
