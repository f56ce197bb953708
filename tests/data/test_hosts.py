"""Data on several hosts: sources read the host's shard, batch sizes are global, each host's position resumes only
on that host, and `SimulatedHosts` makes a multi-host job's global batches on one process."""

import numpy as np
import pytest

from combinax import data


def numbers(n=20, **options):
  return data.FromList([(np.int32(i),) for i in range(n)], **options)


def read_all(pipeline, host, count):
  with data.as_host(host, count):
    return [int(x[0]) for x in pipeline()]


def test_the_hosts_of_a_job_read_disjoint_shards_that_cover_each_epoch():
  source = numbers(20, shuffle=True, seed=3)
  shards = [read_all(source, host, 3) for host in range(3)]
  assert sorted(sum(shards, [])) == list(range(20))
  assert len(set(shards[0]) & set(shards[1])) == 0
  assert data.current_host() == (0, 1)   # outside as_host: this process, the only one
  assert read_all(source, 0, 1) == [int(x[0]) for x in source()]


def test_an_explicit_shard_wins_over_the_hosts():
  assert read_all(numbers(10, shard=(1, 5)), 0, 2) == [1, 6]


def test_batch_sizes_are_global():
  pipeline = data.Serial(numbers(16), data.Batch(8))
  with data.as_host(1, 4):
    batch = next(pipeline())[0]
  assert batch.tolist() == [1, 5]   # 8 / 4 hosts = 2 rows, from host 1's shard
  with data.as_host(0, 3), pytest.raises(data.DataError, match="global batch size 8 is not a multiple of the 3 hosts"):
    pipeline()


def test_an_empty_shard_names_the_host():
  with data.as_host(3, 4), pytest.raises(data.DataError, match=r"shard 3 of 4 holds none of its 3 examples \(host 3"):
    data.Serial(numbers(3), data.Batch(4))()


def test_a_position_resumes_only_on_the_host_that_saved_it():
  pipeline = data.Serial(numbers(40, shuffle=True, repeat=True), data.Shuffle(4, seed=1), data.Batch(4))
  with data.as_host(1, 2):
    stream = pipeline()
    next(stream)
    state = stream.get_state()
    expected = [next(stream)[0].tolist() for _ in range(5)]
    resumed = pipeline()
    resumed.set_state(state)
    assert [next(resumed)[0].tolist() for _ in range(5)] == expected
  with data.as_host(0, 2), pytest.raises(data.DataError, match=r"saved position is for shard \(1, 2\)"):
    pipeline().set_state(state)


def test_bucketing_is_refused_on_several_hosts():
  pipeline = data.Serial(data.FromList([(np.ones(3, np.int32),)] * 4), data.BucketByLength([4], [2]))
  with data.as_host(0, 2), pytest.raises(data.DataError, match="BucketByLength: its batch shapes depend on the data"):
    pipeline()


def test_simulated_hosts_make_the_global_batches_of_a_job_and_resume():
  pipeline = data.Serial(numbers(32, shuffle=True, seed=5, repeat=True), data.Batch(8))
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
