"""Maximum-inner-product search: the sharded exact search equals a numpy brute force, int8 storage stays within its
rounding bound, and the approximate backends are scored against the exact search for recall@10."""

import numpy as np
import pytest

from combinax.retrieval import ExactSearch, SearchError, make_index, recall_at_k


def unit_rows(n, d, seed):
  x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(table, queries, k):
  scores = queries.astype(np.float64) @ table.T.astype(np.float64)
  ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, ids, axis=1), ids


@pytest.mark.parametrize("rows", [1003, 8, 5])   # not a multiple of the 8 devices; one row per device; fewer rows
@pytest.mark.parametrize("k", [1, 5])
def test_exact_search_on_eight_devices_equals_a_numpy_brute_force(rows, k):
  table, queries = unit_rows(rows, 32, 0), unit_rows(17, 32, 1)
  search = ExactSearch(table)
  assert len(search._table.sharding.device_set) == 8
  scores, ids = search.search(queries, k)
  expected_scores, expected_ids = brute_force(table, queries, k)
  np.testing.assert_array_equal(ids, expected_ids)
  np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_every_row_is_found_when_k_is_the_table_and_the_padding_rows_never_are():
  table = unit_rows(13, 8, 2)
  _, ids = ExactSearch(table).search(unit_rows(3, 8, 3), 13)
  assert all(sorted(row) == list(range(13)) for row in ids.tolist())


def test_int8_storage_takes_a_quarter_of_the_memory_and_each_score_is_within_its_rounding_bound():
  table, queries = unit_rows(2000, 64, 4), unit_rows(50, 64, 5)
  exact, int8 = ExactSearch(table), ExactSearch(table, int8=True)
  assert int8.nbytes < 0.27 * exact.nbytes
  scores, ids = int8.search(queries, 10)
  # Each coordinate is off by at most half a step (scale / 2) of its row: |score error| <= |q|_1 * scale / 2.
  scale = np.abs(table).max(axis=1) / 127
  true = np.take_along_axis(queries @ table.T, ids, axis=1)
  bound = np.abs(queries).sum(axis=1, keepdims=True) * scale[ids] / 2
  assert np.all(np.abs(scores - true) <= bound + 1e-6)
  assert recall_at_k(ids, exact.search(queries, 10)[1]) >= 0.95


@pytest.mark.parametrize("kind", ["faiss", "usearch"])
def test_an_approximate_index_finds_at_least_95_percent_of_the_exact_top_10(kind):
  pytest.importorskip({"faiss": "faiss", "usearch": "usearch.index"}[kind])
  table, queries = unit_rows(5000, 64, 6), unit_rows(200, 64, 7)
  _, exact = ExactSearch(table).search(queries, 10)
  scores, found = make_index(kind, table).search(queries, 10)
  assert found.shape == (200, 10) and scores.shape == (200, 10)
  assert recall_at_k(found, exact) >= 0.95
  # The scores it gives are the inner products of what it found.
  np.testing.assert_allclose(scores, np.take_along_axis(queries @ table.T, found, axis=1), atol=1e-4)


def test_recall_at_k_counts_the_exact_ids_found_in_any_order():
  assert recall_at_k(np.array([[3, 1], [0, 9]]), np.array([[1, 3], [0, 2]])) == 0.75


@pytest.mark.parametrize("make, call, message", [
    (lambda: ExactSearch(np.zeros((0, 4))), None, r"a search table must be \(rows >= 1, dim\), got \(0, 4\)"),
    (lambda: ExactSearch(np.ones((3, 4))), lambda s: s.search(np.ones((1, 4)), 4),
     r"ExactSearch.search: k must be between 1 and the 3 rows of the table, got 4"),
    (lambda: ExactSearch(np.ones((3, 4))), lambda s: s.search(np.ones((1, 5)), 1),
     r"ExactSearch.search: queries must be \(n, 4\) \(the table's width\), got \(1, 5\)"),
    (lambda: make_index("annoy", np.ones((3, 4))), None, r"unknown index 'annoy': expected one of \['exact', "),
])
def test_a_search_that_cannot_be_made_says_why(make, call, message):
  with pytest.raises(SearchError, match=message):
    made = make()
    call(made)
