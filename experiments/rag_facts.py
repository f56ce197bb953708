"""Retrieval-augmented generation on a world of invented people (issue 30's benchmark): facts no model can know.

Three parts, each printing a markdown table (benchmarks/RESULTS.md records them with the commands):

  retrieval  hit@1/5/10 of each held-out question's own biography among the knowledge base's chunks (exact search),
             and each approximate index's recall@10 against exact search with its latency per query (median of
             one-query calls, interleaved).
  answers    SmolLM2-135M-Instruct's exact match on held-out questions (held-out people, held-out templates):
             closed book, with the gold biography (the upper bound), with the top-k retrieved; for the bundled model
             and, with --finetuned, for a run of configs/rag_smollm2.gin. Greedy decoding, 32 tokens at most.
  retro      held-out per-character loss and perplexity of configs/retro_facts.gin's runs, read from their newest
             checkpoints: each evaluated on the 592 held-out biographies with retrieval and with every neighbour
             blanked (the same model and data, no information from the knowledge base).

    python experiments/rag_facts.py retrieval
    python experiments/rag_facts.py answers --questions 200 [--finetuned runs/rag_smollm2 [--skip_bundled]]
    python experiments/rag_facts.py retro runs/retro_facts runs/retro_facts_closed
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

NAME = "smollm2-135m-instruct"


def retrieval(args):
  from combinax.retrieval import INDEXES, KnowledgeBase, make_index, rag_data, recall_at_k, retro_data
  kb = KnowledgeBase.open(retro_data.facts_knowledge_base(corpus="biographies", people=args.people))
  questions = rag_data.facts_questions("test", people=args.people)
  queries = kb.encoder.embed_texts([q.question for q in questions])
  exact = make_index("exact", kb.embeddings)
  _, ids = exact.search(queries, 10)
  gold = np.array([[kb.records[i]["document"] == q.document for i in row] for q, row in zip(questions, ids)])
  print(f"{len(kb)} biographies, {len(questions)} held-out questions (held-out people and templates)\n")
  print("| hit@1 | hit@5 | hit@10 |\n|---|---|---|")
  print("| " + " | ".join(f"{gold[:, :k].any(axis=1).mean():.3f}" for k in (1, 5, 10)) + " |\n")
  indexes = {kind: make_index(kind, kb.embeddings) for kind in INDEXES}
  rng = np.random.default_rng(0)
  picked = rng.choice(len(queries), min(args.latency_queries, len(queries)), replace=False)
  times = {kind: [] for kind in indexes}
  for round_, i in enumerate(picked):
    for kind, index in indexes.items():
      start = time.perf_counter()
      index.search(queries[i:i + 1], 10)
      if round_ >= 5:   # the first calls compile
        times[kind].append(time.perf_counter() - start)
  print("| index | recall@10 vs exact | ms per query (median, p10-p90) |\n|---|---|---|")
  for kind, index in indexes.items():
    found = index.search(queries, 10)[1]
    t = np.array(times[kind]) * 1e3
    print(f"| {kind} | {recall_at_k(found, ids):.3f} | {np.median(t):.2f} ({np.percentile(t, 10):.2f}-"
          f"{np.percentile(t, 90):.2f}) |")


def _generate(model_fn, params, tokenizer, prompts: list[str], *, template: str, start_id, batch: int = 8,
              new_tokens: int = 32) -> list[str]:
  """Greedy answers to `prompts` (in `template`), `batch` at a time, cut at the EOS."""
  from combinax import decoding
  encoded = [np.asarray(tokenizer.encode(template.replace("{prompt}", p)), np.int32) for p in prompts]
  longest = max(len(e) for e in encoded)
  model = model_fn(longest + new_tokens + 1)
  answers = []
  for start in range(0, len(encoded), batch):
    group = encoded[start:start + batch]
    group += [group[-1]] * (batch - len(group))           # one compiled shape
    prompt = np.zeros((batch, longest), np.int32)
    for row, ids in enumerate(group):
      prompt[row, :len(ids)] = ids
    out = decoding.autoregressive_sample(model, params, prompt, max_length=new_tokens, temperature=0.0,
                                         eos_id=tokenizer.eos_id, prompt_lengths=[len(g) for g in group],
                                         start_id=start_id, batch_size=batch)
    for row in np.asarray(out)[:min(batch, len(encoded) - start)]:
      ids = [int(i) for i in row]
      ids = ids[:ids.index(tokenizer.eos_id)] if tokenizer.eos_id in ids else ids
      answers.append(tokenizer.decode(np.asarray([i for i in ids if i != 0], np.int32)).strip())
  return answers


def answers(args):
  import jax
  from combinax import pretrained
  from combinax.pretrained import llama, registry
  from combinax.retrieval import KnowledgeBase, facts, rag_data, retro_data
  from combinax.store import checkpoints
  kb = KnowledgeBase.open(retro_data.facts_knowledge_base(corpus="biographies", people=args.people))
  questions = rag_data.facts_questions("test", people=args.people)
  questions = [questions[i] for i in np.random.default_rng(0).choice(len(questions), args.questions, replace=False)]
  contexts = {context: rag_data.passages(kb, questions, k=args.k, context=context)
              for context in ("none", "gold", "retrieved")}
  _, params, tokenizer = pretrained.load(NAME)
  template = registry.info(NAME).prompt_template
  model_fn = lambda max_len: pretrained.model(NAME, mode="predict", max_len=max_len)
  models = {} if args.skip_bundled else {"SmolLM2-135M-Instruct (bundled)":
                                          (params, llama.start_id(pretrained.config(NAME)))}
  if args.finetuned:
    latest = checkpoints.latest(Path(args.finetuned))
    shapes = jax.eval_shape(lambda: params)
    # A combinax-train run feeds token 0 before every sequence (ShiftRight): decode it the way it trained.
    models[f"fine-tuned ({latest})"] = (checkpoints.restore(latest, shapes, prefix="params")[0], 0)
  print(f"{len(questions)} held-out questions, k={args.k} retrieved biographies; exact match (answer contained)\n")
  print("| model | closed book | gold biography | retrieved top-k |\n|---|---|---|---|")
  for label, (weights, start_id) in models.items():
    cells = []
    for context in ("none", "gold", "retrieved"):
      prompts = [rag_data.prompt_of(q.question, hits) for q, hits in zip(questions, contexts[context])]
      said = _generate(model_fn, weights, tokenizer, prompts, template=template, start_id=start_id)
      exact = np.mean([facts.exact_match(s, q.answer) for s, q in zip(said, questions)])
      contained = np.mean([facts.normalize(q.answer) in facts.normalize(s) for s, q in zip(said, questions)])
      cells.append(f"{exact:.3f} ({contained:.3f})")
      if args.show:
        for s, q in list(zip(said, questions))[:args.show]:
          print(f"    [{context}] {q.question} -> {s!r} (answer {q.answer!r})")
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def retro(args):
  import gin
  import jax
  import jax.numpy as jnp
  from combinax import layers as cl
  from combinax.cli.frame import parse_config
  from combinax.store import checkpoints
  print("Loss per character (perplexity) on the held-out biographies: all positions / past the first chunk (the"
        " positions that can read neighbours)\n")
  print("| run | with retrieval | with neighbours blanked |\n|---|---|---|")
  for run in args.runs:
    latest = checkpoints.latest(Path(run))
    gin.clear_config()
    parse_config([], [checkpoints.read_manifest(latest)["metadata"]["run"]["config"]], skip_unknown=True)
    from combinax.models import TransformerLM
    from combinax.retrieval import retro_pipeline
    model = TransformerLM(mode="eval")
    cells = []
    for retrieve in (True, False):
      with gin.config_scope("eval"):
        batches = retro_pipeline(retrieve=retrieve, repeat=False, shuffle=False)()
      first = next(batches)
      shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), first[:2])[0])
      params = checkpoints.restore(latest, shapes, prefix="params")[0]
      loss_layer = cl.WeightedCategoryCrossEntropy()
      chunk = int(gin.query_parameter("RetroOptions.chunk_size"))
      later = (np.arange(first[0].shape[1]) >= chunk).astype(np.float32)

      @jax.jit
      def sums(p, b):   # summed loss and weight: all positions, positions past the first chunk
        logits = model.apply(p, {}, b[:2])[0]
        out = []
        for w in (b[3], b[3] * later):
          out += [loss_layer.apply({}, {}, (logits, b[2], w))[0] * jnp.sum(w), jnp.sum(w)]
        return jnp.stack(out)
      totals = sum(np.asarray(sums(params, batch)) for batch in [first, *batches])
      all_, past = totals[0] / totals[1], totals[2] / totals[3]
      cells.append(f"{all_:.4f} ({math.exp(all_):.3f}) / {past:.4f} ({math.exp(past):.3f})")
    print(f"| {run} ({latest.name}) | " + " | ".join(cells) + " |", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("part", choices=["retrieval", "answers", "retro"])
  parser.add_argument("runs", nargs="*", help="retro: run directories of configs/retro_facts.gin")
  parser.add_argument("--people", type=int, default=500)
  parser.add_argument("--questions", type=int, default=200)
  parser.add_argument("--k", type=int, default=3)
  parser.add_argument("--finetuned", default=None)
  parser.add_argument("--skip_bundled", action="store_true", help="answers: only the --finetuned run")
  parser.add_argument("--latency_queries", type=int, default=200)
  parser.add_argument("--show", type=int, default=0, help="answers: print this many answers of each condition")
  args = parser.parse_args()
  {"retrieval": retrieval, "answers": answers, "retro": retro}[args.part](args)


if __name__ == "__main__":
  main()
