"""RAG fine-tuning data: each question with its passages in the model's template, the loss on the answer only;
gold, retrieved (with the gold made sure of for training) and closed-book passages."""

import gin
import numpy as np
import pytest

from combinax import pretrained
from combinax.data.base import DataError
from combinax.data.tokenizers import CharTokenizer
from combinax.pretrained import registry
from combinax.retrieval import KnowledgeBase, RAGError, build, facts, rag_data

WORLD = facts.make_world(seed=5, people=10)


@pytest.fixture(scope="module")
def kb(encoder, tmp_path_factory):   # `encoder`: conftest.py's MiniLM
  folder = tmp_path_factory.mktemp("kb") / "world"
  build(folder, WORLD.documents, encoder=encoder, chunk_tokens=96, overlap=0)
  return KnowledgeBase.open(folder, encoder=encoder)


def test_rows_hold_the_prompt_in_its_template_then_the_answer_and_eos_and_only_those_carry_loss():
  tokenizer = CharTokenizer("abcdeQ:")
  rows, weights = rag_data.rag_rows(tokenizer, ["ab"], ["cd"], prompt_template="Q:{prompt}:", length=9)
  np.testing.assert_array_equal(rows, [[tokenizer.encode("Q:ab:cd")[i] if i < 7 else [1, 0][i - 7]
                                        for i in range(9)]])
  np.testing.assert_array_equal(weights, [[0, 0, 0, 0, 0, 1, 1, 1, 0]])   # "c", "d" and the EOS
  with pytest.raises(DataError, match=r"example 0 needs 8 tokens \(prompt 5, answer 3\), more than length=7"):
    rag_data.rag_rows(tokenizer, ["ab"], ["cd"], prompt_template="Q:{prompt}:", length=7)


def test_gold_passages_are_the_questions_own_biography_and_closed_book_has_none(kb):
  questions = [q for q in WORLD.questions if q.split == "test"][:6]
  gold = rag_data.passages(kb, questions, k=3, context="gold")
  assert [[h.document for h in hits] for hits in gold] == [[q.document] for q in questions]
  assert all(q.answer in hits[0].text for q, hits in zip(questions, gold))
  assert rag_data.passages(kb, questions, k=3, context="none") == [[] for _ in questions]
  assert rag_data.prompt_of(questions[0].question, []) == questions[0].question
  with pytest.raises(RAGError, match="context must be one of"):
    rag_data.passages(kb, questions, k=3, context="oracle")


def test_training_passages_always_hold_the_answer_and_evaluation_reads_what_retrieval_found(kb):
  questions = [q for q in WORLD.questions if q.split == "train"]
  found = rag_data.passages(kb, questions, k=2, context="retrieved")
  assured = rag_data.passages(kb, questions, k=2, context="retrieved", ensure_gold=True, seed=1)
  assert all(len(hits) == 2 for hits in found + assured)
  assert all(any(h.document == q.document for h in hits) for q, hits in zip(questions, assured))
  missed = [i for i, (q, hits) in enumerate(zip(questions, found)) if not any(h.document == q.document for h in hits)]
  for i, (q, hits) in enumerate(zip(questions, found)):   # a hit retrieval found is kept, in its rank
    if i not in missed:
      assert [h.id for h in assured[i]] == [h.id for h in hits]


def test_a_recipes_binding_of_pretrained_model_does_not_reach_a_model_loaded_beside_it():
  if registry.source_files("all-minilm-l6-v2") is None:
    pytest.skip("weights of all-minilm-l6-v2 not installed")
  gin.clear_config()
  try:
    import combinax.models  # noqa: F401  (registers pretrained.model)
    gin.parse_config("pretrained.model.n_layers = 2")   # the recipe's SmolLM2 cut; MiniLM has no such option
    model, params, _ = pretrained.load("all-minilm-l6-v2")
    assert params["blocks"]["attention"]["q"]["kernel"].shape[0] == 6
  finally:
    gin.clear_config()
