"""The shipped corpora load, match what info() and DATA.md record, and fail with errors that say what to do."""

import collections
import hashlib
import re
import subprocess
import sys

import pytest

from combinax.data import corpora

NAMES = ["bible_en_es", "digits", "imdb_sentiment", "kjv"]
DATA_MD = corpora.DIRECTORY / "DATA.md"


def key(name, example):
  """What identifies an example, to check that splits share none."""
  return {"kjv": lambda e: (e["book"], e["chapter"], e["verse"]), "bible_en_es": lambda e: e["ref"],
          "imdb_sentiment": lambda e: e["text"], "digits": lambda e: e["index"]}[name](example)


@pytest.fixture
def fresh_cache():
  """Forgets what was read, before and after the test (which may point the loader at other files)."""
  corpora._read.cache_clear()
  yield
  corpora._read.cache_clear()


def test_names():
  assert corpora.names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_loads_documented_fields_and_counts(name):
  info = corpora.info(name)
  assert set(info) >= {"description", "license", "source", "fields", "splits", "split_rule"}
  assert set(info["splits"]) == {"train", "test"}
  for split, count in info["splits"].items():
    examples = corpora.load(name, split)
    assert len(examples) == count > 0
    for example in examples:
      assert tuple(example) == info["fields"]
      for field, value in example.items():
        if field in ("label", "chapter", "verse", "index"):
          assert type(value) is int and value >= 0
        elif field == "image":
          assert len(value) == 64 and all(type(v) is int and 0 <= v <= 16 for v in value)
        else:
          assert isinstance(value, str) and value == value.strip() and value, (name, example)
          value.encode("utf-8")   # no lone surrogates
          assert "\x00" not in value and "\r" not in value


@pytest.mark.parametrize("name", NAMES)
def test_splits_do_not_overlap_and_keys_are_unique(name):
  train = [key(name, e) for e in corpora.load(name, "train")]
  test = [key(name, e) for e in corpora.load(name, "test")]
  assert len(set(train)) == len(train) and len(set(test)) == len(test)
  assert not set(train) & set(test)


@pytest.mark.parametrize("name", ["kjv", "bible_en_es"])
def test_bibles_split_by_whole_chapters(name):
  chapter = (lambda e: (e["book"], e["chapter"])) if name == "kjv" else (lambda e: e["ref"].rsplit(":", 1)[0])
  train = {chapter(e) for e in corpora.load(name, "train")}
  test = {chapter(e) for e in corpora.load(name, "test")}
  assert not train & test
  assert len(test) <= 118 and len(train) + len(test) >= 1160


def test_imdb_is_balanced_and_clean():
  for split, count in corpora.info("imdb_sentiment")["splits"].items():
    examples = corpora.load("imdb_sentiment", split)
    assert collections.Counter(e["label"] for e in examples) == {0: count // 2, 1: count // 2}
    assert not any(re.search(r"<br\s*/?>|[\x80-\x9f]", e["text"], re.I) for e in examples)
  labels = [e["label"] for e in corpora.load("imdb_sentiment", "train")[:100]]
  assert 30 < sum(labels) < 70   # the rows are mixed, not sorted by label


def test_bible_texts_have_no_markup():
  for name, fields in (("kjv", ("text",)), ("bible_en_es", ("en", "es"))):
    for split in ("train", "test"):
      for e in corpora.load(name, split):
        for field in fields:
          assert not re.search(r"[<>\n]|  ", e[field]), (name, e)


def test_known_examples():
  kjv = corpora.load("kjv")
  assert kjv[0] == {"text": "In the beginning God created the heaven and the earth.", "book": "Genesis",
                    "chapter": 1, "verse": 1}
  assert len(kjv) + len(corpora.load("kjv", "test")) == 31102
  assert {"book": "Genesis", "chapter": 10, "verse": 1} == {k: v for k, v in corpora.load("kjv", "test")[0].items()
                                                            if k != "text"}
  pair = corpora.load("bible_en_es")[0]
  assert pair["ref"] == "Genesis 1:1" and pair["es"].startswith("EN el principio crió Dios")
  assert pair["en"] == "In the beginning, God created the heavens and the earth."


def test_sha256_and_sizes_match_data_md():
  table = DATA_MD.read_text(encoding="utf-8")
  for name in NAMES:
    file = corpora.path(name)
    cells = r" \| ".join([f"`{name}`", f"`{re.escape(file.name)}`", r"([\d,]+)", r"([\d,]+)", r"([\d,]+)",
                          r"`([0-9a-f]{64})`"])
    row = re.search(rf"^\| {cells} \|$", table, re.M)
    assert row, f"DATA.md has no row for {name}"
    train, test, size, sha = row.groups()
    info = corpora.info(name)
    assert hashlib.sha256(file.read_bytes()).hexdigest() == sha == info["sha256"]
    assert file.stat().st_size == int(size.replace(",", ""))
    assert info["splits"] == {"train": int(train.replace(",", "")), "test": int(test.replace(",", ""))}


def test_load_returns_fresh_copies():
  corpora.load("kjv")[0]["text"] = "changed"
  assert corpora.load("kjv")[0]["text"].startswith("In the beginning")


@pytest.mark.parametrize("call", [corpora.info, corpora.path, corpora.load])
def test_unknown_name_names_the_corpora(call):
  with pytest.raises(ValueError, match=r"unknown corpus 'wiki'.*\['bible_en_es', 'digits', 'imdb_sentiment', 'kjv'\]"):
    call("wiki")


def test_unknown_split_names_the_splits():
  with pytest.raises(ValueError, match=r"unknown split 'validation'.*\['train', 'test'\]"):
    corpora.load("kjv", "validation")


def test_missing_file_says_how_to_rebuild(tmp_path, monkeypatch, fresh_cache):
  monkeypatch.setattr(corpora, "DIRECTORY", tmp_path)
  with pytest.raises(corpora.CorpusFileError, match=r"missing.*python tools/build_corpora.py"):
    corpora.load("kjv")


@pytest.mark.parametrize("check_sha", [True, False])
def test_corrupt_file_says_how_to_rebuild(tmp_path, monkeypatch, fresh_cache, check_sha):
  data = corpora.path("kjv").read_bytes()
  (tmp_path / "kjv.jsonl.gz").write_bytes(data[: len(data) // 2])   # truncated
  monkeypatch.setattr(corpora, "DIRECTORY", tmp_path)
  if not check_sha:   # the gzip and row checks catch it on their own too
    monkeypatch.setitem(corpora._CORPORA, "kjv", dict(corpora._CORPORA["kjv"], sha256=""))
  with pytest.raises(corpora.CorpusFileError, match=r"corrupt.*python tools/build_corpora.py"):
    corpora.load("kjv")


def test_import_reads_nothing_and_needs_only_the_standard_library():
  code = ("import importlib.util, sys\n"
          f"spec = importlib.util.spec_from_file_location('c', {str(corpora.__file__)!r})\n"
          "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
          "print(m._read.cache_info().currsize, 'numpy' in sys.modules, 'jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.split() == ["0", "False", "False"]
