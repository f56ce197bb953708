"""Knowledge bases and retrieval: documents cut into chunks and embedded by a bundled sentence encoder
(`knowledge_base.build`), searched exactly in JAX or approximately with faiss / usearch (`search`), for
retrieval-augmented generation.

>>> from combinax import retrieval
>>> kb = retrieval.build("runs/kb_kjv", retrieval.corpus_documents("kjv"))            # doctest: +SKIP
>>> retrieval.KnowledgeBase.open("runs/kb_kjv").search(["Who built the ark?"], k=3)  # doctest: +SKIP
"""

from combinax.retrieval.documents import (Chunk, Document, DocumentError, chunk, corpus_documents,
                                          read_documents)
from combinax.retrieval.encoder import Encoder, EncoderError
from combinax.retrieval.knowledge_base import Hit, KnowledgeBase, KnowledgeBaseError, build
from combinax.retrieval.rag import CONTEXT_TEMPLATE, RAGError, augment, with_context
from combinax.retrieval.rag_data import facts_questions, prompt_template_of, rag_pipeline
from combinax.retrieval.retro_data import (facts_corpus, facts_knowledge_base, facts_tokenizer, retro_examples,
                                           retro_pipeline)
from combinax.retrieval.search import (INDEXES, ExactSearch, FaissSearch, SearchError, USearchSearch, make_index,
                                       recall_at_k)

from combinax.configurable import register as _register  # noqa: E402

_register(globals(), "combinax.retrieval", ["retro_pipeline", "rag_pipeline", "facts_corpus", "facts_questions",
                                             "facts_knowledge_base", "facts_tokenizer", "prompt_template_of"])

