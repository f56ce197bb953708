"""A knowledge base over KJV chapters with the bundled MiniLM encoder: it finds a verse's chapter, a build stopped
between a part and its index (or with a damaged part) ends byte for byte as an uninterrupted one, it grows without
embedding its documents again, and it refuses another encoder, a changed document and an empty search."""

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest

from combinax.data import corpora
from combinax.retrieval import Document, EncoderError, KnowledgeBase, KnowledgeBaseError, build, corpus_documents
from combinax.store import rundir

CHAPTERS = corpus_documents("kjv")[:10]           # Genesis 1-10: 112 chunks of 64 tokens
MORE = corpus_documents("kjv")[10:13]
SETTINGS = dict(chunk_tokens=64, overlap=16, part_chunks=40)


@pytest.fixture(scope="module")
def straight(encoder, tmp_path_factory):
  folder = tmp_path_factory.mktemp("kb") / "straight"
  done = build(folder, CHAPTERS, encoder=encoder, **SETTINGS)
  assert done["documents"] == 10 and done["skipped"] == 0 and done["total_chunks"] == done["chunks"] > 80
  return folder


def files(folder: Path) -> dict:
  """Every file of a knowledge base but its lock, by content."""
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
          if p.is_file() and p.name != ".lock"}


def test_verses_find_their_own_chapter_and_a_chunk_finds_itself(straight, encoder):
  kb = KnowledgeBase.open(straight, encoder=encoder)
  held = {d.id for d in CHAPTERS}
  verses = [r for r in corpora.load("kjv") if r["verse"] in (5, 7, 12) and f"{r['book']} {r['chapter']}" in held]
  hits = kb.search([v["text"] for v in verses], k=3)
  ranks = [[h.document for h in found].index(f"{v['book']} {v['chapter']}")
           if f"{v['book']} {v['chapter']}" in [h.document for h in found] else None for v, found in zip(verses, hits)]
  # Measured: 28 of the 30 first, 29 in the top 3. The misses are near-repeats, not faults: Genesis 3:5 ("ye shall
  # be as gods, knowing good and evil") finds a chunk of Genesis 2 first (the tree of the knowledge of good and
  # evil), and Genesis 7:5 ("Noah did according unto all that the LORD commanded him") is nearly Genesis 6:22.
  assert len(verses) == 30 and ranks.count(0) >= 26 and sum(r is not None for r in ranks) >= 28
  for found in hits:
    assert found[0].score >= found[1].score >= found[2].score
    assert found[0].source == f"corpus kjv (train): {found[0].document}"
  # A chunk's own text finds itself, and its embedding is the encoder's of its token ids.
  record = kb.records[37]
  own = encoder.embed_ids([encoder.with_specials(encoder.tokenizer.encode_with_offsets(
      CHAPTERS[[d.id for d in CHAPTERS].index(record["document"])].text)[0][record["chunk"] * 48:][:64])])
  np.testing.assert_allclose(kb.embeddings[37], own[0], atol=1e-5)
  assert kb.search([record["text"]], k=1)[0][0].id == 37


def test_a_build_killed_between_a_part_and_its_index_resumes_to_the_same_files(straight, encoder, tmp_path,
                                                                              monkeypatch):
  written = []
  real = rundir.write_atomically

  def killed_at_the_second_index(path, content):
    if Path(path).name == "index.json" and len(written) == 1:
      raise KeyboardInterrupt   # what a kill leaves: part_00001's files written, the index not yet naming them
    if Path(path).name == "index.json":
      written.append(path)
    real(path, content)

  monkeypatch.setattr(rundir, "write_atomically", killed_at_the_second_index)
  with pytest.raises(KeyboardInterrupt):
    build(tmp_path / "kb", CHAPTERS, encoder=encoder, **SETTINGS)
  monkeypatch.setattr(rundir, "write_atomically", real)
  assert (tmp_path / "kb" / "parts" / "part_00001.npy").exists()   # not yet in the index
  done = build(tmp_path / "kb", CHAPTERS, encoder=encoder, **SETTINGS)
  assert done["skipped"] > 0 and done["documents"] + done["skipped"] == 10
  assert files(tmp_path / "kb") == files(straight)


def test_a_damaged_part_is_refused_when_read_and_made_again_with_those_after_it(straight, encoder, tmp_path,
                                                                                capsys):
  import shutil
  shutil.copytree(straight, tmp_path / "kb")
  part = tmp_path / "kb" / "parts" / "part_00001.npy"
  data = bytearray(part.read_bytes())
  data[-3] ^= 0xFF
  part.write_bytes(bytes(data))
  with pytest.raises(KnowledgeBaseError, match=r"part_00001.npy was changed or damaged after it was written .*; "
                                               r"build it again with the same documents"):
    KnowledgeBase.open(tmp_path / "kb")
  build(tmp_path / "kb", CHAPTERS, encoder=encoder, **SETTINGS)
  assert "part_00001.npy was changed or damaged after it was written" in capsys.readouterr().out
  assert files(tmp_path / "kb") == files(straight)


def test_new_documents_are_added_without_embedding_the_old_ones_again(straight, encoder, tmp_path):
  import shutil
  shutil.copytree(straight, tmp_path / "kb")
  before = files(tmp_path / "kb")
  done = build(tmp_path / "kb", CHAPTERS + MORE, encoder=encoder, **SETTINGS)
  assert (done["documents"], done["skipped"]) == (3, 10)
  after = files(tmp_path / "kb")
  assert {k: v for k, v in after.items() if k.startswith("parts/") and k in before} == \
      {k: v for k, v in before.items() if k.startswith("parts/")}   # the old parts untouched
  grown = KnowledgeBase.open(tmp_path / "kb")
  whole = build(tmp_path / "whole", CHAPTERS + MORE, encoder=encoder, **SETTINGS)
  at_once = KnowledgeBase.open(tmp_path / "whole")
  assert whole["total_chunks"] == len(grown) and grown.records == at_once.records
  np.testing.assert_allclose(grown.embeddings, at_once.embeddings, atol=1e-6)
  assert build(tmp_path / "kb", MORE, encoder=encoder, **SETTINGS)["chunks"] == 0   # all there already


def test_another_encoder_a_changed_document_and_other_chunking_are_refused_changing_nothing(straight, encoder):
  before = files(straight)
  other = copy.copy(encoder)
  other.fingerprint = {**encoder.fingerprint, "weights": "0" * 64}
  with pytest.raises(KnowledgeBaseError, match=r"was built with encoder all-minilm-l6-v2 and this is "
                                               r"all-minilm-l6-v2 \(their weights differ by checksum\): vectors of "
                                               r"two encoders are not comparable"):
    build(straight, CHAPTERS, encoder=other, **SETTINGS)
  with pytest.raises(KnowledgeBaseError, match=r"their weights differ by checksum"):
    KnowledgeBase.open(straight, encoder=other)
  changed = [CHAPTERS[0]._replace(text=CHAPTERS[0].text + " Amen.")]
  with pytest.raises(KnowledgeBaseError, match=r"document 'Genesis 1' is in the knowledge base with another text"):
    build(straight, changed, encoder=encoder, **SETTINGS)
  with pytest.raises(KnowledgeBaseError, match=r"cuts documents with chunk_tokens=64, not 128"):
    build(straight, CHAPTERS, encoder=encoder, chunk_tokens=128, overlap=16)
  assert files(straight) == before


def test_an_empty_knowledge_base_a_missing_one_and_a_query_longer_than_the_window_say_so(encoder, tmp_path):
  assert build(tmp_path / "empty", [], encoder=encoder)["total_chunks"] == 0
  with pytest.raises(KnowledgeBaseError, match=r"empty: the knowledge base holds no chunks: build it from documents"):
    KnowledgeBase.open(tmp_path / "empty", encoder=encoder).search(["anything"])
  with pytest.raises(KnowledgeBaseError, match=r"nowhere: no knowledge base there \(knowledge_base.json is missing\)"):
    KnowledgeBase.open(tmp_path / "nowhere")
  with pytest.raises(EncoderError, match=r"a query of \d+ tokens is longer than the window of encoder "
                                         r"all-minilm-l6-v2 \(512 tokens with \[CLS\] and \[SEP\]\)"):
    encoder.embed_texts(["word " * 600])
  with pytest.raises(KnowledgeBaseError, match=r"chunks of 600 tokens and \[CLS\], \[SEP\] do not fit encoder "):
    build(tmp_path / "big", [Document("d", "x", "y")], encoder=encoder, chunk_tokens=600, overlap=0)
  assert not (tmp_path / "big").exists()
