"""A local TFDS dataset, built from files the test writes, read through data.TFDS without TensorFlow."""

import sys

import numpy as np
import pytest

from combinax import data
from data_helpers import assert_same_items, take

tfds = pytest.importorskip("tensorflow_datasets")

LINES = ["the first line", "second", "a third, longer line of text", "four", "five five", "six"]


class CombinaxLocalLines(tfds.core.GeneratorBasedBuilder):
  """Lines of `lines.txt` and labels of `labels.txt` from the manual folder; kept in file order."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "The test writes lines.txt and labels.txt into the manual folder."

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "label": np.int64,
                                             "length": np.int32}))

  def _split_generators(self, dl_manager):
    folder = dl_manager.manual_dir
    return {"train": self._generate_examples(folder / "lines.txt", folder / "labels.txt")}

  def _generate_examples(self, lines_path, labels_path):
    lines = lines_path.read_text().splitlines()
    labels = labels_path.read_text().split()
    for i, (line, label) in enumerate(zip(lines, labels)):
      yield i, {"text": line, "label": int(label), "length": len(line)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  manual = tmp_path_factory.mktemp("manual")
  (manual / "lines.txt").write_text("\n".join(LINES) + "\n")
  (manual / "labels.txt").write_text(" ".join(str(i % 2) for i in range(len(LINES))))
  root = tmp_path_factory.mktemp("tfds")
  builder = CombinaxLocalLines(data_dir=str(root), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual), try_download_gcs=False))
  return root


def test_tfds_source_gives_exact_batches_without_tensorflow(data_dir):
  tok = data.CharTokenizer.train(LINES)
  pipeline = data.Serial(
      data.TFDS("combinax_local_lines", keys=("text", "label"), split="train", data_dir=data_dir,
                download=False),
      data.Tokenize(tok, keys=0),
      data.Batch(4))
  batches = list(pipeline())
  expected_ids = [tok.encode(line) for line in LINES]
  width = max(len(ids) for ids in expected_ids[:4])
  first = np.zeros((4, width), np.int32)
  for i, ids in enumerate(expected_ids[:4]):
    first[i, :len(ids)] = ids
  np.testing.assert_array_equal(batches[0][0], first)
  np.testing.assert_array_equal(batches[0][1], [0, 1, 0, 1])
  assert batches[1][0].shape == (2, max(len(ids) for ids in expected_ids[4:]))
  assert [tok.decode(row) for b in batches for row in b[0]] == LINES
  assert "tensorflow" not in sys.modules


def test_tfds_text_comes_out_as_str_and_numbers_as_numpy(data_dir):
  stream = data.TFDS("combinax_local_lines", keys=("text", "length"), data_dir=data_dir, download=False)()
  text, length = next(stream)
  assert text == LINES[0] and int(length) == len(LINES[0])


def test_tfds_shuffle_repeat_and_resume(data_dir):
  def pipeline():
    return data.Serial(
        data.TFDS("combinax_local_lines", keys=("text",), data_dir=data_dir, download=False, shuffle=True,
                  seed=1, repeat=True),
        data.Shuffle(3, seed=2))

  whole = take(pipeline()(), 20)
  assert {t for (t,) in whole} == set(LINES)
  stream = pipeline()()
  take(stream, 9)
  resumed = pipeline()()
  resumed.set_state(data.loads_state(data.dumps_state(stream.get_state())))
  assert_same_items(take(resumed, 11), whole[9:])


def test_tfds_errors_name_dataset_and_features(data_dir, tmp_path):
  with pytest.raises(data.DataError, match=r"no feature 'txt'; available: \['label', 'length', 'text'\]"):
    data.TFDS("combinax_local_lines", keys=("txt",), data_dir=data_dir, download=False)()
  with pytest.raises(data.DataError, match=r"'combinax_local_lines' split 'train' .* cannot be loaded \(download="
                                           r"False"):
    data.TFDS("combinax_local_lines", keys=("text",), data_dir=tmp_path, download=False)()
  with pytest.raises(data.DataError, match="choose the features with keys"):
    next(data.TFDS("combinax_local_lines", data_dir=data_dir, download=False)())
