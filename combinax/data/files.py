"""Local file sources: text lines, CSV/TSV columns, JSON lines; bad bytes and missing fields name file and line.

Files are read whole and checked when the stream is built (an error surfaces before training, not in the middle),
then read by index like every `Source`, so they shuffle per epoch and resume instantly.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from combinax.data.base import DataError
from combinax.data.sources import Source


def read_text(path) -> list[str]:
  """The lines of a UTF-8 text file (without line ends); an empty file or bad bytes raise a DataError."""
  path = Path(path)
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
  if not raw:
    raise DataError(f"{path}: file is empty")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column})") from None
  if text.startswith("\ufeff"):
    text = text[1:]
  lines = text.split("\n")
  if lines[-1] == "":
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


class TextLines(Source):
  """Each line of a UTF-8 text file as a 1-tuple `(line,)` (line ends removed; blank lines kept unless asked).

  >>> import tempfile, os
  >>> from combinax import data
  >>> path = os.path.join(tempfile.mkdtemp(), "lines.txt")
  >>> _ = open(path, "w").write("in the beginning\\n\\nthe end\\n")
  >>> list(data.TextLines(path, skip_blank=True)())
  [('in the beginning',), ('the end',)]
  """

  def __init__(self, path, skip_blank: bool = False, **options):
    super().__init__(None, **options)
    self.path = str(path)
    self.skip_blank = skip_blank

  def describe(self):
    return self.path

  def where(self, index):
    return f"{self.path} line {index + 1}"

  def load(self):
    lines = read_text(self.path)
    return [(line,) for line in lines if line.strip() or not self.skip_blank]


class CSV(Source):
  """Rows of a CSV file as tuples of the chosen `columns` (header names, or positions when `header=False`).

  Values are strings; `converters` maps a column to a function applied to it (e.g. `{"label": int}`).

  >>> import tempfile, os
  >>> from combinax import data
  >>> path = os.path.join(tempfile.mkdtemp(), "reviews.csv")
  >>> _ = open(path, "w").write('label,text\\n1,"good, really"\\n0,bad\\n')
  >>> list(data.CSV(path, columns=("text", "label"), converters={"label": int})())
  [('good, really', 1), ('bad', 0)]
  """

  delimiter = ","

  def __init__(self, path, columns, header: bool = True, converters: dict | None = None, **options):
    super().__init__(None, **options)
    self.path = str(path)
    self.columns = tuple(columns) if isinstance(columns, (list, tuple)) else (columns,)
    self.header = header
    self.converters = dict(converters or {})

  def describe(self):
    return self.path

  def where(self, index):
    return f"{self.path} row {index + 1}"

  def load(self):
    text = "\n".join(read_text(self.path))
    reader = csv.reader(io.StringIO(text), delimiter=self.delimiter,
                        quoting=csv.QUOTE_NONE if self.delimiter == "\t" else csv.QUOTE_MINIMAL)
    rows = list(reader)
    if self.header:
      names, rows = rows[0], rows[1:]
      missing = [c for c in self.columns if c not in names]
      if missing:
        raise DataError(f"{self.path}: no column {missing[0]!r}; available: {names}")
      positions = [names.index(c) for c in self.columns]
      first_line = 2
    else:
      bad = [c for c in self.columns if not isinstance(c, int)]
      if bad:
        raise DataError(f"{self.path}: without a header, columns are positions (ints), got {bad[0]!r}")
      positions, first_line = list(self.columns), 1
    if not rows:
      raise DataError(f"{self.path}: has a header but no rows")
    unknown = [c for c in self.converters if c not in self.columns]
    if unknown:
      raise DataError(f"{self.path}: converter for {unknown[0]!r}, which is not among columns {self.columns}")
    convert = [self.converters.get(c) for c in self.columns]
    examples = []
    for n, row in enumerate(rows):
      if len(row) <= max(positions):
        raise DataError(f"{self.path}:{first_line + n}: row has {len(row)} field(s), column "
                        f"{self.columns[int(np.argmax(positions))]!r} needs {max(positions) + 1}")
      values = []
      for p, f, column in zip(positions, convert, self.columns):
        try:
          values.append(row[p] if f is None else f(row[p]))
        except ValueError as e:
          raise DataError(f"{self.path}:{first_line + n}: column {column!r}: {e}") from None
      examples.append(tuple(values))
    return examples


class TSV(CSV):
  """Rows of a tab-separated file (no quoting) as tuples of the chosen `columns`; see `CSV`.

  >>> import tempfile, os
  >>> from combinax import data
  >>> path = os.path.join(tempfile.mkdtemp(), "pairs.tsv")
  >>> _ = open(path, "w").write("en\\tes\\nhello\\thola\\n")
  >>> list(data.TSV(path, columns=("es", "en"))())
  [('hola', 'hello')]
  """

  delimiter = "\t"


def json_objects(path) -> list[tuple[int, dict]]:
  """(line number, object) of each line of a JSONL file that is not blank; a line that is not a JSON object is a
  DataError naming the file and the line."""
  objects = []
  for n, line in enumerate(read_text(path), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{n}: not valid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(obj, dict):
      raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
    objects.append((n, obj))
  return objects


class JSONL(Source):
  """One JSON object per line (blank lines ignored), as tuples of the fields `keys`.

  >>> import tempfile, os
  >>> from combinax import data
  >>> path = os.path.join(tempfile.mkdtemp(), "data.jsonl")
  >>> _ = open(path, "w").write('{"text": "hi", "label": 1}\\n{"text": "yo", "label": 0}\\n')
  >>> list(data.JSONL(path, keys=("text", "label"))())
  [('hi', 1), ('yo', 0)]
  """

  def __init__(self, path, keys, **options):
    super().__init__(keys, **options)
    self.path = str(path)

  def describe(self):
    return self.path

  def load(self):
    examples = []
    for n, obj in json_objects(self.path):
      missing = [k for k in self.keys if k not in obj]
      if missing:
        raise DataError(f"{self.path}:{n}: no key {missing[0]!r}; available: {sorted(obj)}")
      examples.append(tuple(obj[k] for k in self.keys))
    if not examples:
      raise DataError(f"{self.path}: no JSON lines, only blank lines")
    return examples

  def select(self, example, index):
    return example   # fields were selected (and checked) when the file was read
