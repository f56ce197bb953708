"""Documents and chunks: chunks of so many tokens overlapping by so many, each with its own characters; a user's
text and JSONL files and the bundled KJV as documents; a bad file named with its line."""

import json

import numpy as np
import pytest

from combinax import data
from combinax.data import DataError, corpora
from combinax.retrieval import Document, DocumentError, chunk, corpus_documents, read_documents
from combinax.retrieval.documents import check_unique

TEXT = " ".join(r["text"] for r in corpora.load("kjv")[:40])


@pytest.fixture(scope="module")
def tokenizer():
  return data.WordPieceTokenizer.train([TEXT], vocab_size=300)


@pytest.mark.parametrize("size, overlap", [(16, 4), (7, 0), (5, 4)])
def test_chunks_have_size_tokens_overlap_by_overlap_and_hold_their_own_characters(tokenizer, size, overlap):
  document = Document("genesis", TEXT, "kjv")
  ids, offsets = tokenizer.encode_with_offsets(TEXT)
  chunks = chunk(document, tokenizer, size=size, overlap=overlap)
  step = size - overlap
  assert [c.index for c in chunks] == list(range(len(chunks)))
  assert len(chunks) == max(1, -(-(len(ids) - overlap) // step))
  for c in chunks:
    first = c.index * step
    np.testing.assert_array_equal(c.ids, ids[first:first + size])
    assert (c.start, c.end) == (offsets[first][0], offsets[min(first + size, len(ids)) - 1][1])
    assert c.text == TEXT[c.start:c.end] and c.document == "genesis"
  assert all(len(c.ids) == size for c in chunks[:-1]) and 0 < len(chunks[-1].ids) <= size
  assert chunks[-1].end == offsets[-1][1]   # nothing at the end is left out


def test_a_document_without_tokens_has_no_chunks_and_a_bad_overlap_is_refused(tokenizer):
  assert chunk(Document("empty", "   ", "x"), tokenizer, size=8, overlap=2) == []
  with pytest.raises(DocumentError, match=r"overlap must be at least 0 and less than size \(got size=8, overlap=8\)"):
    chunk(Document("d", TEXT, "x"), tokenizer, size=8, overlap=8)


def test_text_files_jsonl_lines_and_folders_are_documents(tmp_path):
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "b.txt").write_text("second file")
  (tmp_path / "notes" / "a.md").write_text("first file")
  (tmp_path / "faq.jsonl").write_text(json.dumps({"id": "q1", "text": "one"}) + "\n\n" + json.dumps({"text": "two"}))
  documents = read_documents([tmp_path / "notes", tmp_path / "faq.jsonl"])
  assert [(d.id, d.text) for d in documents] == [("a.md", "first file"), ("b.txt", "second file"), ("q1", "one"),
                                                 ("faq.jsonl:3", "two")]
  assert documents[3].source == f"{tmp_path / 'faq.jsonl'}:3"


@pytest.mark.parametrize("name, content, error, message", [
    ("faq.jsonl", b'{"text": "fine"}\n{"txt": "no"}\n', DocumentError,
     r'faq.jsonl:2: expected an object with a "text" string \(and an optional "id"\), got the keys \[\'txt\'\]'),
    ("faq.jsonl", b'{"text": "fine"}\n{not json\n', DataError, r"faq.jsonl:2: not valid JSON"),
    ("faq.jsonl", b'{"text": "fine"}\n\xff\xfe', DataError, r"faq.jsonl:2: not valid UTF-8"),
    ("notes.txt", b'\xff\xfe', DocumentError, r"notes.txt: not UTF-8 text"),
])
def test_a_bad_file_is_named_with_its_line(tmp_path, name, content, error, message):
  (tmp_path / name).write_bytes(content)
  with pytest.raises(error, match=message):
    read_documents([tmp_path / name])
  with pytest.raises(DocumentError, match=r"nowhere: no such file or folder"):
    read_documents([tmp_path / "nowhere"])


def test_the_bundled_kjv_is_its_chapters():
  chapters = corpus_documents("kjv")
  assert len(chapters) == 1071 and chapters[0].id == "Genesis 1"   # the train split's chapters
  assert chapters[0].text.startswith("In the beginning God created the heaven and the earth. And the earth")
  assert len(corpus_documents("kjv", "test")) == 118 and len(corpus_documents("kjv", "all")) == 1189
  assert corpus_documents("imdb_sentiment", "test")[0].id == "imdb_sentiment:test:0"
  with pytest.raises(DocumentError, match=r"corpus 'digits' has no \"text\" field"):
    corpus_documents("digits")


def test_an_id_given_twice_is_refused():
  with pytest.raises(DocumentError, match=r"document id 'a' is given twice"):
    check_unique([Document("a", "x", "1"), Document("a", "y", "2")])
