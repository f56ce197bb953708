"""RETRO's data: token windows with each chunk's neighbours from a knowledge base of paraphrased biographies; never
the window's own document, kept in the knowledge base's folder and read back, and padding where there is none."""

import numpy as np
import pytest

from combinax.data.tokenizers import CharTokenizer
from combinax.retrieval import Document, KnowledgeBase, build, facts, retro_data

CORPUS = facts.paraphrased_corpus(facts.make_world(seed=3, people=6), paraphrases=3, seed=3)
TOKENIZER = retro_data.facts_tokenizer()


@pytest.fixture(scope="module")
def kb(encoder, tmp_path_factory):   # `encoder`: conftest.py's MiniLM
  folder = tmp_path_factory.mktemp("kb") / "facts"
  build(folder, CORPUS["knowledge_base"], encoder=encoder, chunk_tokens=96, overlap=0)
  return KnowledgeBase.open(folder, encoder=encoder)


def test_the_paraphrased_corpus_keeps_each_held_out_biography_out_of_training_and_the_knowledge_base():
  test_ids, train_ids = {d.id for d in CORPUS["test"]}, {d.id for d in CORPUS["train"]}
  kb_ids = {d.id for d in CORPUS["knowledge_base"]}
  assert test_ids and not test_ids & (train_ids | kb_ids) and train_ids < kb_ids
  for document in CORPUS["test"]:   # its facts are in the knowledge base, in the person's other biographies
    person = document.id.rsplit(":", 1)[0]
    others = [d for d in CORPUS["knowledge_base"] if d.id.startswith(person + ":")]
    assert len(others) == 2 and all(d.text != document.text for d in others)
    assert not any(d.id.startswith(person + ":") for d in CORPUS["train"])


def test_windows_are_the_tokens_and_an_eos_cut_and_padded():
  tokenizer = CharTokenizer("abc")
  rows, owners = retro_data.windows([Document("x", "abcab", "t"), Document("y", "c", "t")], tokenizer, 4)
  np.testing.assert_array_equal(rows, [[3, 4, 5, 3], [4, 1, 0, 0], [5, 1, 0, 0]])
  assert owners == [0, 0, 1]


def test_every_chunk_reads_the_persons_other_biographies_and_never_its_own(kb):
  documents = CORPUS["train"]
  rows, neighbours = retro_data.retro_examples(kb, documents, TOKENIZER, length=192, chunk_size=64, k=2,
                                               neighbour_length=176)
  assert rows.shape[1] == 192 and neighbours.shape == (len(rows), 3, 2, 176)
  _, owners = retro_data.windows(documents, TOKENIZER, 192)
  found = 0
  for row, owner in enumerate(owners):
    document = documents[owner]
    person = document.id.rsplit(":", 1)[0].split(":", 1)[1]
    for c in range(3):
      texts = [TOKENIZER.decode(n) for n in neighbours[row, c]]
      assert document.text not in texts and not any(t and t in document.text for t in texts)
      if not rows[row, c * 64:(c + 1) * 64].any():
        assert not neighbours[row, c].any(), "a chunk of padding retrieves nothing"
      found += c == 0 and any(person in t for t in texts)
  # Measured: 42 of 45 (a first chunk that opens with the guild may hold only part of the name).
  assert found >= 0.85 * len(owners), "the first chunk (the name) should find another biography of the person"


def test_neighbours_are_kept_beside_the_knowledge_base_and_read_back_without_searching(kb, monkeypatch):
  documents = CORPUS["test"]
  args = dict(length=192, chunk_size=64, k=2, neighbour_length=100)
  first = retro_data.retro_examples(kb, documents, TOKENIZER, **args)
  assert list((kb.folder / retro_data.NEIGHBOURS).glob("*.npy"))
  monkeypatch.setattr(KnowledgeBase, "search", lambda *a, **k: pytest.fail("searched again"))
  again = retro_data.retro_examples(kb, documents, TOKENIZER, **args)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)


def test_the_pipeline_gives_tokens_neighbours_targets_and_weights_and_padding_without_retrieval(kb):
  args = dict(tokenizer=TOKENIZER, length=192, chunk_size=64, neighbours=2, neighbour_length=176, batch_size=2,
              shuffle=False, repeat=False)
  tokens, near, targets, weights = next(retro_data.retro_pipeline(kb.folder, CORPUS["test"], **args)())
  assert tokens.shape == (2, 192) and near.shape == (2, 3, 2, 176) and near.any()
  np.testing.assert_array_equal(tokens, targets)
  np.testing.assert_array_equal(weights, tokens != 0)
  closed = next(retro_data.retro_pipeline(kb.folder, CORPUS["test"], retrieve=False, **args)())
  np.testing.assert_array_equal(closed[0], tokens)
  assert not closed[1].any()
