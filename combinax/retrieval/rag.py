"""Retrieval-augmented generation: a prompt's nearest chunks put in front of it, through a template, so that an LM
reads the facts it was never trained on (Lewis et al., 2020, with the retriever frozen).

>>> from combinax.retrieval.knowledge_base import Hit
>>> hits = [Hit(0.8, 4, "Genesis 6", 2, "Make thee an ark of gopher wood", "kjv")]
>>> print(with_context("Of what wood was the ark made?", hits))
Answer the question using the passages below.
<BLANKLINE>
[1] Make thee an ark of gopher wood
<BLANKLINE>
Question: Of what wood was the ark made?
"""

from __future__ import annotations

from typing import Sequence

from combinax.retrieval.knowledge_base import Hit, KnowledgeBase

CONTEXT_TEMPLATE = "Answer the question using the passages below.\n\n{context}\n\nQuestion: {prompt}"


class RAGError(ValueError):
  """A retrieval-augmented prompt that cannot be made as asked (a template without its fields, k < 1)."""


def check_template(template: str) -> str:
  missing = [field for field in ("{context}", "{prompt}") if field not in template]
  if missing:
    raise RAGError(f"a context template must hold {{context}} (the passages) and {{prompt}} (the question); "
                   f"{' and '.join(missing)} missing in {template!r}")
  return template


def with_context(prompt: str, hits: Sequence[Hit], template: str = CONTEXT_TEMPLATE) -> str:
  """`template` with `{context}` replaced by the hits' texts, numbered from 1 in rank order, one paragraph each,
  and `{prompt}` by the prompt (plain replacement: braces in either text are kept as they are)."""
  context = "\n\n".join(f"[{rank}] {' '.join(hit.text.split())}" for rank, hit in enumerate(hits, 1))
  return check_template(template).replace("{context}", context).replace("{prompt}", prompt)


def augment(knowledge_base: KnowledgeBase, prompts: Sequence[str], *, k: int = 3,
            template: str = CONTEXT_TEMPLATE) -> tuple[list[str], list[list[Hit]]]:
  """(each prompt with its `k` nearest chunks in front of it, the chunks used for each)."""
  if k < 1:
    raise RAGError(f"augment: k (chunks per prompt) must be at least 1, got {k}")
  check_template(template)
  hits = knowledge_base.search(list(prompts), k=k)
  return [with_context(p, h, template) for p, h in zip(prompts, hits)], hits
