"""Client splits: deterministic from a seed, every example exactly once, and the label structure each promises."""

import re

import numpy as np
import pytest

from combinax import data
from combinax import federated as fed


@pytest.fixture(scope="module")
def digits():
  return fed.read_examples(fed.image_examples("digits", "train"))


def labels_of(shards, labels):
  return [np.unique(labels[s]) for s in shards]


@pytest.mark.parametrize("scheme", fed.SCHEMES)
def test_every_split_is_deterministic_from_its_seed_and_covers_every_example_exactly_once(scheme, digits):
  labels = digits[1]
  shards = fed.split_clients(labels, 20, scheme=scheme, alpha=0.5, seed=7)
  again = fed.split_clients(labels, 20, scheme=scheme, alpha=0.5, seed=7)
  other = fed.split_clients(labels, 20, scheme=scheme, alpha=0.5, seed=8)
  assert len(shards) == 20 and all(len(s) >= 1 for s in shards)
  assert all(np.array_equal(a, b) for a, b in zip(shards, again))
  assert not all(np.array_equal(a, b) for a, b in zip(shards, other))
  assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(labels)))   # each example exactly once


def test_the_digits_examples_are_read_once_as_arrays(digits):
  images, labels = digits
  assert images.shape == (1438, 8, 8, 1) and images.dtype == np.float32 and 0.0 <= images.min() <= images.max() <= 1
  assert labels.shape == (1438,) and labels.dtype == np.int32 and set(labels.tolist()) == set(range(10))


def test_iid_clients_differ_in_size_by_at_most_one_and_see_most_labels(digits):
  shards = fed.split_clients(digits[1], 20, scheme="iid", seed=0)
  sizes = [len(s) for s in shards]
  assert max(sizes) - min(sizes) <= 1
  assert np.mean([len(u) for u in labels_of(shards, digits[1])]) >= 9


def test_the_pathological_split_gives_each_client_two_shards_of_label_sorted_examples(digits):
  # 10 labels x 20 examples, 5 clients x 2 shards of 20: every shard is one label, every client exactly two
  labels = np.repeat(np.arange(10), 20)[np.random.default_rng(0).permutation(200)]
  shards = fed.split_pathological(labels, 5, shards_per_client=2, seed=1)
  assert [len(s) for s in shards] == [40] * 5
  assert all(len(u) == 2 and np.all(np.bincount(labels[s])[u] == 20) for s, u in zip(shards, labels_of(shards, labels)))
  # on digits (shards of 35-36 examples straddle label boundaries): mostly 2 labels, never more than 4
  counts = [len(u) for u in labels_of(fed.split_pathological(digits[1], 20, seed=0), digits[1])]
  assert max(counts) <= 4 and np.mean(counts) <= 3.0
  assert np.mean(counts) < np.mean([len(u) for u in labels_of(fed.split_iid(len(digits[1]), 20), digits[1])]) / 2


def test_a_small_dirichlet_alpha_skews_each_clients_labels_and_a_large_one_is_near_iid(digits):
  def top_label_share(alpha):
    shards = fed.split_dirichlet(digits[1], 20, alpha=alpha, seed=0)
    return np.mean([np.bincount(digits[1][s]).max() / len(s) for s in shards])
  assert top_label_share(0.05) > 0.6
  assert top_label_share(1000.0) < 0.2   # IID would give ~0.1-0.15 with ~72 examples over 10 labels


def test_packed_clients_are_padded_to_one_shape_with_weight_zero_on_padding():
  x = np.arange(10, dtype=np.float32).reshape(5, 2)
  y = np.arange(5, dtype=np.int32)
  packed = fed.pack_clients((x, y), [np.array([0, 3]), np.array([1, 2, 4])])
  assert packed.fields[0].shape == (2, 3, 2) and packed.fields[1].shape == (2, 3)
  assert packed.weights.tolist() == [[1, 1, 0], [1, 1, 1]] and packed.sizes.tolist() == [2, 3]
  assert packed.fields[1].tolist() == [[0, 3, 0], [1, 2, 4]]
  assert fed.pack_clients((x, y), [np.array([0]), np.array([1])], pad_to=4).weights.shape == (2, 4)


def test_bad_split_requests_fail_with_one_line_naming_expected_and_actual():
  labels = np.array([0, 1, 0, 1])
  cases = [
      (dict(n_clients=2, scheme="random"), r"scheme must be one of \('iid', 'dirichlet', 'pathological'\), got "
                                           r"'random'"),
      (dict(n_clients=0), r"n_clients must be an integer >= 1, got 0"),
      (dict(n_clients=3, scheme="pathological"), r"4 examples cannot give 3 clients 2 example\(s\) or shard\(s\) "
                                                 r"each; use at most 2 clients"),
      (dict(n_clients=2, scheme="dirichlet", alpha=0.0), r"alpha must be > 0, got 0.0"),
  ]
  for kwargs, message in cases:
    with pytest.raises(fed.SplitError) as caught:
      fed.split_clients(labels, **kwargs)
    # the whole message is its first line (gin adds one naming the configurable, which the CLIs fold into it)
    assert re.search(message, str(caught.value).splitlines()[0])
  with pytest.raises(fed.SplitError, match=r"client\(s\) \[1\] have none"):
    fed.pack_clients((labels,), [np.array([0, 1]), np.array([], int)])
  with pytest.raises(fed.SplitError, match=r"repeats for ever \(repeat=True\).*set repeat=False"):
    fed.read_examples(data.FromList([(1, 0)], repeat=True))
