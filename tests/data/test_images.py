"""data.RandomShift and image_pipeline's fit / validation splits."""

import numpy as np
import pytest

from combinax import data


def images(n=6):
  return [(np.arange(16, dtype=np.float32).reshape(4, 4, 1) + 100 * i, i) for i in range(n)]


def test_a_shift_moves_the_whole_image_and_fills_what_it_uncovers():
  for shifted, _ in data.Serial(data.FromList(images(20)), data.RandomShift(2, seed=1, fill=-1.0))():
    kept = shifted[shifted != -1.0]
    assert kept.size >= 4 and np.all(np.diff(kept.reshape(-1)) > 0)   # a block of the original, in order
    rows, cols = np.nonzero(shifted[..., 0] != -1.0)
    block = shifted[rows.min():rows.max() + 1, cols.min():cols.max() + 1, 0]
    assert block.size == kept.size   # what is kept is one rectangle
    np.testing.assert_array_equal(np.diff(block, axis=1), 1)
    np.testing.assert_array_equal(np.diff(block, axis=0), 4)


def test_shifts_are_seeded_and_resume_exactly():
  pipeline = data.Serial(data.FromList(images(), repeat=True), data.RandomShift(1, seed=5))
  stream = pipeline()
  for _ in range(3):
    next(stream)
  state = data.dumps_state(stream.get_state())
  rest = [next(stream)[0] for _ in range(5)]
  resumed = pipeline()
  resumed.set_state(data.loads_state(state))
  for want in rest:
    np.testing.assert_array_equal(next(resumed)[0], want)
  again = [x for x, _ in data.Serial(data.FromList(images(), repeat=False), data.RandomShift(1, seed=5))()]
  assert any(not np.array_equal(a, b[0]) for a, b in zip(again, images()))   # something moved


def test_a_shift_of_something_not_an_image_is_named():
  with pytest.raises(data.DataError, match=r"RandomShift: position 0 must be an image \(height, width, channels\)"):
    next(data.Serial(data.FromList([(np.zeros((4, 4)),)]), data.RandomShift(1))())
  with pytest.raises(data.DataError, match="max_shift must be an int >= 0"):
    data.RandomShift(-1)


def test_fit_and_validation_split_the_training_images_and_leave_the_test_split_alone():
  def all_of(split):
    return [tuple(x.reshape(-1)) + (int(y),) for x, y in
            zip(*map(np.concatenate, zip(*data.image_pipeline(split=split, batch_size=1, repeat=False)())))]
  fit, validation, train = all_of("fit"), all_of("validation"), all_of("train")
  assert len(validation) == 287 and len(fit) + len(validation) == len(train) == 1438
  assert sorted(fit + validation) == sorted(train)
