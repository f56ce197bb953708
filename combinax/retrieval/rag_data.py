"""Fine-tuning an LM to answer from retrieved passages (RAG with the retriever frozen): each question with its
passages in the model's prompt template, then the answer and an EOS, the loss on the answer only.

The passages are the knowledge base's `k` nearest chunks to the question (`context="retrieved"`), the question's
own document alone (`"gold"`, the upper bound), or none (`"none"`, closed book). For training, `ensure_gold` puts
the gold document in place of the last retrieved passage when retrieval missed it (at a seeded rank), so that every
training answer can be read from its context: an example whose answer is nowhere in its passages would teach the
model to make one up.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from combinax.data.base import DataError, Serial
from combinax.data.batching import Batch
from combinax.data.sources import FromList
from combinax.data.tokenizers import Tokenizer
from combinax.pretrained import registry
from combinax.retrieval import facts
from combinax.retrieval.knowledge_base import Hit, KnowledgeBase
from combinax.retrieval.rag import CONTEXT_TEMPLATE, RAGError, check_template, with_context

CONTEXTS = ("retrieved", "gold", "none")


def gold_hits(kb: KnowledgeBase, documents: Sequence[str]) -> list[Hit]:
  """The first chunk of each of `documents` as a hit (score 1)."""
  first_rows = {}
  for row, record in enumerate(kb.records):
    first_rows.setdefault(record["document"], row)
  missing = [d for d in documents if d not in first_rows]
  if missing:
    raise RAGError(f"{kb.folder}: document {missing[0]!r} (a question's gold document) is not in the knowledge base")
  return [kb.hit(first_rows[d]) for d in documents]


def passages(kb: KnowledgeBase, questions: Sequence[facts.Question], *, k: int, context: str = "retrieved",
             ensure_gold: bool = False, seed: int = 0) -> list[list[Hit]]:
  """Each question's passages (module docstring)."""
  if context not in CONTEXTS:
    raise RAGError(f"passages: context must be one of {CONTEXTS}, got {context!r}")
  if context == "none":
    return [[] for _ in questions]
  if context == "gold":
    return [[hit] for hit in gold_hits(kb, [q.document for q in questions])]
  rng = random.Random(seed)
  found = kb.search([q.question for q in questions], k=k)
  if ensure_gold:
    missed = [(hits, q) for hits, q in zip(found, questions) if not any(h.document == q.document for h in hits)]
    for (hits, _), gold in zip(missed, gold_hits(kb, [q.document for _, q in missed])):
      hits[-1:] = []
      hits.insert(rng.randrange(len(hits) + 1), gold)
  return found


def prompt_of(question: str, hits: Sequence[Hit], template: str = CONTEXT_TEMPLATE) -> str:
  """The question with its passages through `template`; with none, the question alone (closed book)."""
  return with_context(question, hits, template) if hits else question


def rag_rows(tokenizer: Tokenizer, prompts: Sequence[str], answers: Sequence[str], *, prompt_template: str,
             length: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens (n, length), weights (n, length)): each prompt in `prompt_template` ("{prompt}" replaced), its answer
  and the EOS, padded with 0; weight 1 on the answer and the EOS only. A row longer than `length` is refused."""
  if "{prompt}" not in prompt_template:
    raise RAGError(f"prompt_template must hold {{prompt}}, got {prompt_template!r}")
  rows, weights = np.zeros((len(prompts), length), np.int32), np.zeros((len(prompts), length), np.float32)
  for i, (prompt, answer) in enumerate(zip(prompts, answers)):
    asked = np.asarray(tokenizer.encode(prompt_template.replace("{prompt}", prompt)), np.int32)
    answered = np.append(np.asarray(tokenizer.encode(answer), np.int32), tokenizer.eos_id)
    if len(asked) + len(answered) > length:
      raise DataError(f"rag_rows: example {i} needs {len(asked) + len(answered)} tokens (prompt {len(asked)}, "
                      f"answer {len(answered)}), more than length={length}: raise length or lower k")
    rows[i, :len(asked) + len(answered)] = np.concatenate([asked, answered])
    weights[i, len(asked):len(asked) + len(answered)] = 1.0
  return rows, weights


def rag_pipeline(knowledge_base, questions: Sequence[facts.Question], *, tokenizer: Tokenizer, prompt_template: str,
                 k: int = 3, context: str = "retrieved", ensure_gold: bool = True,
                 context_template: str = CONTEXT_TEMPLATE, length: int = 256, batch_size: int = 8,
                 shuffle: bool = True, seed: int = 0, repeat: bool = True) -> Serial:
  """RAG fine-tuning batches `(tokens, tokens, weights)` of `questions` (each with `.question`, `.answer` and its
  gold `.document`) with passages from the knowledge base in the folder `knowledge_base`."""
  check_template(context_template)
  kb = KnowledgeBase.open(knowledge_base)
  found = passages(kb, questions, k=k, context=context, ensure_gold=ensure_gold, seed=seed)
  prompts = [prompt_of(q.question, hits, context_template) for q, hits in zip(questions, found)]
  rows, weights = rag_rows(tokenizer, prompts, [q.answer for q in questions], prompt_template=prompt_template,
                           length=length)
  examples = [(row, row, w) for row, w in zip(rows, weights)]
  return Serial(FromList(examples, shuffle=shuffle, seed=seed, repeat=repeat), Batch(batch_size, drop_remainder=True))


def facts_questions(split: str = "train", *, seed: int = 0, people: int = 500) -> list[facts.Question]:
  """`facts.make_world(seed, people)`'s questions of `split`: "train" (train templates and people) or "test"
  (held-out templates and people)."""
  questions = [q for q in facts.make_world(seed=seed, people=people).questions if q.split == split]
  if not questions:
    raise RAGError(f"facts_questions: no questions of split {split!r}; the splits are 'train' and 'test'")
  return questions


def prompt_template_of(name: str) -> str:
  """A bundled model's prompt template (its chat template around "{prompt}")."""
  return registry.info(name).prompt_template
