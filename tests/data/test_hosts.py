"""Data on several hosts: every host reads the global order and keeps its rows of each global batch, so the batches
and the saved position are the same on any number of hosts; a source given its own shard is read per host, as
before; `SimulatedHosts` makes a multi-host job's global batches on one process."""

import numpy as np
import pytest

from combinax import data


def numbers(n=20, **options):
  return data.FromList([(np.int32(i),) for i in range(n)], **options)


def batches(stream, n):
  return [[a.tolist() for a in next(stream)] for _ in range(n)]


def text_pipeline(batch_size=8):
  """A realistic LM pipeline: shuffled lines, tokenised, shuffled in a buffer, packed into windows, batched."""
  lines = [(" ".join(["word"] * (i % 7 + 1)) + f" line {i}",) for i in range(60)]
  tokenizer = data.CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 ")
  return data.Serial(data.FromList(lines, shuffle=True, seed=2, repeat=True), data.Tokenize(tokenizer),
                     data.Shuffle(buffer_size=16, seed=7), data.PackLM(length=12, eos_id=tokenizer.eos_id),
                     data.Batch(batch_size))


def test_every_host_keeps_its_rows_of_the_one_host_batch():
  pipeline = data.Serial(numbers(40, shuffle=True, seed=3, repeat=True), data.Batch(8))
  one = batches(pipeline(), 6)
  for count in (2, 4, 8):
    rows = []
    for host in range(count):
      with data.as_host(host, count):
        rows.append(batches(pipeline(), 6))
    assert [sum((r[b][0] for r in rows), []) for b in range(6)] == [b[0] for b in one], count
  assert data.current_host() == (0, 1)   # outside as_host: this process, the only one


def test_a_shuffled_packed_lm_pipeline_gives_the_same_global_batches_on_1_2_and_4_hosts():
  pipeline = text_pipeline()
  one = batches(pipeline(), 12)
  for hosts in (2, 4):
    assert batches(data.SimulatedHosts(pipeline, hosts=hosts)(), 12) == one, hosts


def test_a_position_saved_on_two_hosts_resumes_on_one_or_four_at_the_same_batch():
  pipeline = text_pipeline()
  one = batches(pipeline(), 10)
  with data.as_host(1, 2):
    stream = pipeline()
    batches(stream, 4)
    saved = data.dumps_state(stream.get_state())
  resumed = pipeline()
  resumed.set_state(data.loads_state(saved))
  assert batches(resumed, 6) == one[4:]
  quarters = []
  for host in range(4):
    with data.as_host(host, 4):
      resumed = pipeline()
      resumed.set_state(data.loads_state(saved))
      quarters.append(batches(resumed, 6))
  assert [[sum((q[b][k] for q in quarters), []) for k in range(3)] for b in range(6)] == one[4:]


def test_a_host_pads_its_rows_as_the_whole_global_batch_is_padded():
  examples = [(np.arange(n, dtype=np.int32),) for n in (1, 2, 6, 3)]
  with data.as_host(0, 2):
    first = next(data.Serial(data.FromList(examples), data.Batch(4))())[0]
  assert first.tolist() == [[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]   # host 1's row of length 6 sets the width


def test_batch_sizes_are_global_and_a_multiple_of_the_hosts():
  pipeline = data.Serial(numbers(16), data.Batch(8))
  with data.as_host(1, 4):
    assert next(pipeline())[0].tolist() == [2, 3]   # 8 / 4 hosts = 2 rows: host 1's of the global batch
  with data.as_host(0, 3), pytest.raises(data.DataError, match="global batch size 8 is not a multiple of the 3 hosts"):
    pipeline()


def test_the_last_smaller_batch_gives_every_host_as_many_rows_and_counts_the_rest_as_dropped():
  pipeline = data.Serial(numbers(11), data.Batch(4))   # batches of 4, 4 and 3 examples
  with data.as_host(1, 2):
    stream = pipeline()
    assert [b[0].tolist() for b in stream] == [[2, 3], [6, 7], [9]]
    assert stream.get_stats() == {"Batch[1]/dropped": 1}   # example 10: 3 rows cannot be split over 2 hosts
  whole = data.Serial(numbers(11), data.Batch(4))()
  assert [b[0].tolist() for b in whole][-1] == [8, 9, 10] and whole.get_stats() == {}


def test_an_explicit_shard_makes_a_per_host_pipeline_whose_position_resumes_only_on_that_shard():
  pipeline = data.Serial(numbers(40, shuffle=True, repeat=True, shard=(1, 2)), data.Shuffle(4, seed=1),
                         data.Batch(4))
  with data.as_host(1, 2):
    stream = pipeline()
    assert stream.reads_per_host()
    next(stream)
    state = stream.get_state()
    expected = [next(stream)[0].tolist() for _ in range(5)]
    resumed = pipeline()
    resumed.set_state(state)
    assert [next(resumed)[0].tolist() for _ in range(5)] == expected
  assert all(len(rows) == 2 for rows in expected)   # 4 / 2 hosts rows, all from the host's own shard
  shard = [int(x[0]) for x in numbers(40, shuffle=True, shard=(1, 2))()]
  assert set(sum(expected, [])) <= set(shard)
  other = data.Serial(numbers(40, shuffle=True, repeat=True, shard=(0, 2)), data.Shuffle(4, seed=1), data.Batch(4))
  with pytest.raises(data.DataError, match=r"saved position is for shard \(1, 2\)"):
    other().set_state(state)
  assert data.hosts.sharded_position(state) and not data.hosts.sharded_position(text_pipeline()().get_state())


def test_an_empty_shard_is_named():
  with pytest.raises(data.DataError, match=r"shard 3 of 4 holds none of its 3 examples"):
    data.Serial(numbers(3, shard=(3, 4)), data.Batch(4))()


def test_bucketing_works_on_a_global_order_and_is_refused_per_host():
  examples = [(np.ones(n, np.int32) * n,) for n in (1, 5, 2, 6, 3, 7, 4, 8)]
  pipeline = data.Serial(data.FromList(examples), data.BucketByLength([4, 8], [2, 4]))
  one = [b[0].tolist() for b in pipeline()]
  halves = []
  for host in range(2):
    with data.as_host(host, 2):
      halves.append([b[0].tolist() for b in pipeline()])
  assert [a + b for a, b in zip(*halves)] == one
  with data.as_host(0, 4), pytest.raises(data.DataError, match=r"batch_sizes \[2, 4\] are global .* the 4 hosts"):
    pipeline()
  per_host = data.Serial(data.FromList(examples, shard=(0, 1)), data.BucketByLength([4, 8], [2, 4]))
  with data.as_host(0, 2), pytest.raises(data.DataError, match="BucketByLength: its batch shapes depend on the data"):
    per_host()


def test_simulated_hosts_make_the_global_batches_of_a_per_host_job_and_resume():
  pipeline = data.Serial(numbers(32, shuffle=True, seed=5, repeat=True, shard=(0, 1)), data.Batch(8))
  simulated = data.SimulatedHosts(pipeline, hosts=2)
  stream = simulated()
  first = next(stream)[0]
  with data.as_host(0, 2):
    host0 = next(pipeline())[0]
  with data.as_host(1, 2):
    host1 = next(pipeline())[0]
  np.testing.assert_array_equal(first, np.concatenate([host0, host1]))
  state = data.dumps_state(stream.get_state())
  expected = [next(stream)[0].tolist() for _ in range(6)]
  resumed = simulated()
  resumed.set_state(data.loads_state(state))
  assert [next(resumed)[0].tolist() for _ in range(6)] == expected
