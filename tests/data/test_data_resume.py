"""Exact resume: save a pipeline's state after k batches, restore it into a fresh pipeline, get the same batches."""

import json

import numpy as np
import pytest

from combinax import data
from data_helpers import assert_same_items, take

WORDS = ("and the lord said unto moses let my people go that they may serve me in the wilderness behold i send "
         "an angel before thee to keep thee in the way").split()


def sentences(n=97, seed=0):
  rng = np.random.default_rng(seed)
  return [(" ".join(rng.choice(WORDS, rng.integers(1, 14))), int(i % 3)) for i in range(n)]


TOK = data.CharTokenizer.train(WORDS + [" "])


def lm_pipeline(seed=0, prefetch=False):
  return data.Serial(
      data.FromList(sentences(), shuffle=True, seed=seed, repeat=True),
      data.Tokenize(TOK, keys=(0,), append_eos=True),
      data.Shuffle(buffer_size=16, seed=seed),
      data.PackLM(length=24),
      data.Batch(4),
      *([data.Prefetch(3)] if prefetch else []))


def bucket_pipeline(seed=0, prefetch=False):
  return data.Serial(
      data.FromList(sentences(), shuffle=True, seed=seed, repeat=False),
      data.Tokenize(TOK, keys=(0,)),
      data.Shuffle(buffer_size=10, seed=seed + 1),
      data.FilterByLength(max_length=60, min_length=3),
      data.BucketByLength([16, 32, 48], [4, 3, 2], drop_long=True),
      data.AddLossWeights(key=0),
      *([data.Prefetch(2)] if prefetch else []))


def mlm_pipeline(seed=0, prefetch=False):
  return data.Serial(
      data.FromList(sentences(), repeat=True),
      data.Tokenize(TOK, keys=(0,)),
      data.TruncateToLength(64, keys=(0,)),
      data.PadToLength(64, keys=(0,)),
      data.MLM(TOK.vocab_size, mask_id=2, seed=seed, special_ids=(0, 1)),
      data.Batch(5),
      *([data.Prefetch(2)] if prefetch else []))


def resume_after(make, k, n=None, through_json=True):
  """(batches k.. of an uninterrupted run, the same batches from a fresh pipeline restored after k)."""
  stream = make()()
  take(stream, k)
  state = stream.get_state()
  if through_json:
    text = data.dumps_state(state)
    json.loads(text)
    state = data.loads_state(text)
  expected = take(make()(), k + n)[k:] if n is not None else list(make()())[k:]
  resumed = make()()
  resumed.set_state(state)
  got = take(resumed, n) if n is not None else list(resumed)
  after_save = take(stream, n) if n is not None else list(stream)   # saving does not disturb the first stream
  stream.close()
  resumed.close()
  return expected, got, after_save


@pytest.mark.parametrize("k", [0, 1, 7, 30])
@pytest.mark.parametrize("prefetch", [False, True])
def test_lm_packing_with_shuffle_resumes_exactly(k, prefetch):
  expected, got, after = resume_after(lambda: lm_pipeline(prefetch=prefetch), k, n=12)
  assert_same_items(got, expected)
  assert_same_items(after, expected)


@pytest.mark.parametrize("k", [0, 2, 5, 9])
@pytest.mark.parametrize("prefetch", [False, True])
def test_bucketing_with_shuffle_and_filter_resumes_exactly(k, prefetch):
  expected, got, after = resume_after(lambda: bucket_pipeline(prefetch=prefetch), k)
  assert len(expected) > 3 and len(got) == len(expected)
  assert_same_items(got, expected)
  assert_same_items(after, expected)


def test_counters_resume_too():
  stream = bucket_pipeline()()
  list(stream)
  total = stream.get_stats()
  first = bucket_pipeline()()
  take(first, 4)
  resumed = bucket_pipeline()()
  resumed.set_state(data.loads_state(data.dumps_state(first.get_state())))
  list(resumed)
  assert resumed.get_stats() == total
  assert total["FilterByLength[3]/dropped"] > 0


@pytest.mark.parametrize("prefetch", [False, True])
def test_mlm_masks_resume_exactly(prefetch):
  expected, got, after = resume_after(lambda: mlm_pipeline(prefetch=prefetch), 6, n=5)
  assert_same_items(got, expected)


def test_source_epochs_resume_across_the_epoch_boundary():
  make = lambda: data.Serial(data.FromList([(i,) for i in range(10)], shuffle=True, seed=9, repeat=True))
  expected, got, _ = resume_after(make, 8, n=15)
  assert_same_items(got, expected)


def test_same_seed_same_batches_other_seed_other_batches():
  a, b, c = (take(lm_pipeline(seed=s)(), 5) for s in (0, 0, 1))
  assert_same_items(a, b)
  assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_state_is_small_and_readable():
  stream = lm_pipeline()()
  take(stream, 3)
  state = stream.get_state()
  assert [s["stage"] for s in state] == ["FromList", "Tokenize", "Shuffle", "PackLM", "Batch"]
  assert state[0]["state"] == {"epoch": 0, "index": state[0]["state"]["index"], "size": 97, "shard": None}
  assert len(state[2]["state"]["buffer"]) == 16
  assert state[1]["state"] is None


def test_restoring_into_another_pipeline_is_an_error():
  stream = lm_pipeline()()
  take(stream, 2)
  state = stream.get_state()
  with pytest.raises(data.DataError, match="does not match the pipeline: stage Shuffle was given the state "
                                           "of 'PackLM'"):
    data.Serial(*lm_pipeline().stages[:-2], data.Batch(4))().set_state(state)
  with pytest.raises(data.DataError, match="stage FromList was given the state of 'Batch'"):
    data.FromList([(1,)])().set_state(state)
  small = data.Serial(data.FromList([(1,)]), data.Batch(1))
  small_state = small().get_state()
  with pytest.raises(data.DataError, match="pipeline state has 2 stages, but this pipeline ends its chain at "
                                           "FromList"):
    small().set_state(small_state[:1] + small_state)
  other_size = data.Serial(data.FromList(sentences(50), shuffle=True, repeat=True), *lm_pipeline().stages[1:])()
  with pytest.raises(data.DataError, match="the data changed since the state was saved"):
    other_size.set_state(state)


def test_prefetch_restores_only_before_it_starts():
  stream = lm_pipeline(prefetch=True)()
  take(stream, 2)
  with pytest.raises(data.DataError, match="before taking any item"):
    stream.set_state(stream.get_state())
  stream.close()


def test_prefetch_passes_errors_and_non_resumable_stages():
  def broken(stream):
    for i, example in enumerate(stream):
      if i == 3:
        raise RuntimeError("bad example 3")
      yield example

  stream = data.Serial(data.FromList([(i,) for i in range(10)]), broken, data.Prefetch(2))()
  assert take(stream, 3) == [(0,), (1,), (2,)]
  with pytest.raises(RuntimeError, match="bad example 3"):
    next(stream)
  with pytest.raises(data.DataError, match="cannot be saved"):
    stream.get_state()
  with pytest.raises(StopIteration):
    next(stream)


def test_real_imdb_corpus_bucketed_resumes_exactly():
  corpora = pytest.importorskip("combinax.data.corpora")
  try:
    corpora.load("imdb_sentiment", "test")
  except (OSError, KeyError, ValueError) as e:
    pytest.skip(f"the imdb_sentiment corpus is not usable yet: {e}")
  tok = data.CharTokenizer("abcdefghijklmnopqrstuvwxyz .,!?'")

  def make():
    return data.Serial(
        data.Corpus("imdb_sentiment", keys=("text", "label"), split="test", shuffle=True, seed=0),
        data.Map(str.lower, keys=0),
        data.Tokenize(tok, keys=(0,)),
        data.TruncateToLength(512),
        data.Shuffle(64, seed=0),
        data.BucketByLength([128, 256, 512], [16, 8, 4]))

  expected, got, _ = resume_after(make, 5, n=10)
  assert_same_items(got, expected)
  assert {b[0].shape[1] for b in expected} <= {128, 256, 512}
  assert all(set(np.unique(b[1])) <= {0, 1} for b in expected)


def test_prefetch_thread_stops_when_closed_or_dropped():
  import gc
  import threading
  import time

  def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "combinax-prefetch" and t.is_alive()]

  before = len(prefetch_threads())
  closed, dropped = lm_pipeline(prefetch=True)(), lm_pipeline(prefetch=True)()
  next(closed), next(dropped)
  assert len(prefetch_threads()) == before + 2
  closed.close()
  with pytest.raises(StopIteration):
    next(closed)
  del dropped
  gc.collect()
  deadline = time.time() + 5
  while len(prefetch_threads()) > before and time.time() < deadline:
    time.sleep(0.05)
  assert len(prefetch_threads()) == before


def test_state_round_trip_keeps_numpy_scalars_scalar():
  from combinax import data
  state = {"buffer": [(np.arange(2, dtype=np.float32), np.int32(1), np.float64(2.5))]}
  back = data.loads_state(data.dumps_state(state))["buffer"][0]
  assert isinstance(back[1], np.int32) and np.ndim(back[1]) == 0 and back[1] == 1
  assert isinstance(back[2], np.float64) and back[2] == 2.5
  np.testing.assert_array_equal(back[0], np.arange(2, dtype=np.float32))
