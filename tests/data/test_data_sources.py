"""Sources read local files, lists and corpora as tuples, in a seeded order, and fail loudly on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from combinax import data
from data_helpers import KJV_LIKE, install_fake_corpora, take


def write(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
  return path


def test_text_lines_keep_lines_exactly(tmp_path):
  path = write(tmp_path, "a.txt", "\ufeffone\r\ntwo  \n\nthree")
  assert list(data.TextLines(path)()) == [("one",), ("two  ",), ("",), ("three",)]
  assert list(data.TextLines(path, skip_blank=True)()) == [("one",), ("two  ",), ("three",)]


def test_empty_file_is_an_error(tmp_path):
  path = write(tmp_path, "empty.txt", b"")
  with pytest.raises(data.DataError, match=r"empty\.txt: file is empty"):
    data.TextLines(path)()
  with pytest.raises(data.DataError, match="file is empty"):
    data.JSONL(path, keys=("text",))()
  with pytest.raises(data.DataError, match="no examples"):
    data.TextLines(write(tmp_path, "blank.txt", "\n \n"), skip_blank=True)()


def test_non_utf8_names_file_and_line(tmp_path):
  path = write(tmp_path, "latin1.txt", "fine\nalso fine\ncaf".encode() + b"\xe9 au lait\n")
  with pytest.raises(data.DataError, match=r"latin1\.txt:3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
    data.TextLines(path)()
  with pytest.raises(data.DataError, match=r"latin1\.txt:3: not valid UTF-8"):
    data.CSV(path, columns=("fine",))()


def test_missing_file_is_an_error(tmp_path):
  with pytest.raises(data.DataError, match="cannot read"):
    data.TextLines(tmp_path / "nope.txt")()


def test_csv_and_tsv_select_columns(tmp_path):
  path = write(tmp_path, "r.csv", 'text,label,id\n"a, quoted",1,x\nplain,0,y\n')
  assert list(data.CSV(path, columns=("label", "text"), converters={"label": int})()) == [
      (1, "a, quoted"), (0, "plain")]
  tsv = write(tmp_path, "r.tsv", 'en\tes\n"hi"\thola\n')
  assert list(data.TSV(tsv, columns=["es", "en"])()) == [("hola", '"hi"')]   # TSV: no quoting
  no_header = write(tmp_path, "n.csv", "a,b\nc,d\n")
  assert list(data.CSV(no_header, columns=(1,), header=False)()) == [("b",), ("d",)]


def test_csv_errors_name_column_row_and_available(tmp_path):
  path = write(tmp_path, "r.csv", "text,label\nok,1\nshort\n")
  with pytest.raises(data.DataError, match=r"no column 'labels'; available: \['text', 'label'\]"):
    data.CSV(path, columns=("text", "labels"))()
  with pytest.raises(data.DataError, match=r"r\.csv:3: row has 1 field\(s\), column 'label'"):
    data.CSV(path, columns=("text", "label"))()
  bad_int = write(tmp_path, "b.csv", "text,label\nok,one\n")
  with pytest.raises(data.DataError, match=r"b\.csv:2: column 'label'"):
    data.CSV(bad_int, columns=("text", "label"), converters={"label": int})()
  with pytest.raises(data.DataError, match="header but no rows"):
    data.CSV(write(tmp_path, "h.csv", "text,label\n"), columns=("text",))()


def test_jsonl_keys_and_errors(tmp_path):
  path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')
  assert list(data.JSONL(path, keys=("label", "text"))()) == [(1, "a"), (0, "b")]
  missing = write(tmp_path, "m.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n')
  with pytest.raises(data.DataError, match=r"m\.jsonl:2: no key 'text'; available: \['label', 'txt'\]"):
    data.JSONL(missing, keys=("text", "label"))()
  broken = write(tmp_path, "x.jsonl", '{"text": "a"}\n{"text": \n')
  with pytest.raises(data.DataError, match=r"x\.jsonl:2: not valid JSON"):
    data.JSONL(broken, keys=("text",))()
  listed = write(tmp_path, "l.jsonl", "[1, 2]\n")
  with pytest.raises(data.DataError, match="expected a JSON object"):
    data.JSONL(listed, keys=("text",))()


def test_from_list_missing_key_names_available():
  with pytest.raises(data.DataError, match=r"no field 'y' .*available: \['a', 'x'\]"):
    next(data.FromList([{"x": 1, "a": 2}], keys=("x", "y"))())


def test_source_shuffle_is_seeded_and_fresh_each_epoch():
  source = data.FromList([(i,) for i in range(10)], shuffle=True, seed=3, repeat=True)
  first = [x for (x,) in take(source(), 30)]
  again = [x for (x,) in take(source(), 30)]
  assert first == again
  epochs = [first[0:10], first[10:20], first[20:30]]
  assert all(sorted(e) == list(range(10)) for e in epochs)
  assert epochs[0] != epochs[1]
  other = [x for (x,) in take(data.FromList([(i,) for i in range(10)], shuffle=True, seed=4)(), 10)]
  assert other != first[:10]


def test_source_shards_split_each_epoch():
  examples = [(i,) for i in range(7)]
  shards = [[x for (x,) in data.FromList(examples, shard=(i, 3))()] for i in range(3)]
  assert shards == [[0, 3, 6], [1, 4], [2, 5]]
  with pytest.raises(data.DataError, match="shard must be"):
    data.FromList(examples, shard=(3, 3))


def test_repeat_false_ends_and_repeat_true_loops():
  assert len(list(data.FromList([(1,), (2,)])())) == 2
  assert [x for (x,) in take(data.FromList([(1,), (2,)], repeat=True)(), 5)] == [1, 2, 1, 2, 1]


def test_corpus_source_reads_the_corpora_api(monkeypatch):
  fake = install_fake_corpora(monkeypatch)
  stream = data.Corpus("kjv", keys=("text", "verse"))()
  assert next(stream) == (KJV_LIKE[0]["text"], 1)
  assert fake.calls == [("kjv", "train")]
  pairs = list(data.Corpus("bible_en_es", keys=("en", "es"), split="train")())
  assert pairs[0] == ("In the beginning", "En el principio")


def test_corpus_errors_name_the_corpus_and_field(monkeypatch):
  install_fake_corpora(monkeypatch)
  with pytest.raises(data.DataError, match=r"unknown corpus 'kjb'; available: \['bible_en_es', 'kjv'\]"):
    data.Corpus("kjb", keys=("text",))()
  with pytest.raises(data.DataError, match=r"no field 'txt' .*available: \['book', 'chapter', 'text', 'verse'\]"):
    data.Corpus("kjv", keys=("txt",))()


def test_real_bundled_corpora_when_present():
  corpora = pytest.importorskip("combinax.data.corpora")
  try:
    corpora.load("kjv", "train")
  except (OSError, KeyError, ValueError) as e:
    pytest.skip(f"the kjv corpus is not usable yet: {e}")
  text, book = next(data.Corpus("kjv", keys=("text", "book"))())
  assert isinstance(text, str) and text and isinstance(book, str)
  with pytest.raises(data.DataError, match="unknown corpus 'no_such_corpus'"):
    data.Corpus("no_such_corpus", keys=("text",))()


def test_non_source_first_is_an_error():
  with pytest.raises(data.DataError, match="not a source"):
    data.Serial(data.Batch(2))()
  with pytest.raises(data.DataError, match="is a source"):
    data.FromList([(1,)])(iter([(1,)]))


def test_pipeline_on_a_plain_iterable_and_trax_style_functions():
  def double(stream):
    for (x,) in stream:
      yield (2 * x,)

  pipeline = data.Serial(double, data.Batch(2))
  batches = list(pipeline([(1,), (2,), (3,)]))
  assert [b[0].tolist() for b in batches] == [[2, 4], [6]]
  stream = data.Serial(data.FromList([(1,), (2,)]), double)()
  assert list(stream) == [(2,), (4,)]
  with pytest.raises(data.DataError, match="cannot be saved"):
    stream.get_state()


def test_import_does_not_need_tensorflow_or_tfds():
  code = ("import sys; sys.modules['tensorflow_datasets'] = None; sys.modules['tensorflow'] = None\n"
          "import combinax, combinax.data as d\n"
          "assert 'tensorflow' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
          "try:\n  d.TFDS('mnist', keys=('image',), download=False)()\n"
          "except d.DataError as e:\n  print(e)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert out.returncode == 0, out.stderr
  assert "needs tensorflow-datasets: pip install 'combinax[tfds]'" in out.stdout


def test_examples_are_tuples_of_numpy_values():
  stream = data.Serial(data.FromList([{"x": np.arange(3), "y": 1}], keys=("x", "y")), data.Batch(1))()
  x, y = next(stream)
  assert isinstance(x, np.ndarray) and x.shape == (1, 3) and y.tolist() == [1]
  assert json.loads(json.dumps(stream.get_state()))[0]["state"] == {"epoch": 0, "index": 1, "size": 1,
                                                                     "shard": None}
