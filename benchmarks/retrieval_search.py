"""Search over a real knowledge base: latency per query and recall@10 of each index against exact search.

The knowledge base is one `python -m combinax.retrieval build` made (by default the whole bundled KJV Bible in
chunks of 48 tokens overlapping by 16: ~31,000 chunks of MiniLM embeddings). The queries are real ones: the
MiniLM embeddings of `--queries` verses of the KJV's test chapters, embedded once before timing. One interleaved
run: every round asks each index in turn for one query's top 10 (a batch of one, as a user's query comes), so a
slow moment of the machine falls on all of them alike; each latency is the median (and the 10th-90th percentile)
of those calls after a warm-up, on however many devices JAX sees (set XLA_FLAGS before running to split the table).

    python -m combinax.retrieval build --output_dir=runs/kb_kjv_48 --corpus=kjv --split=all --chunk_tokens=48 \\
        --overlap=16
    python benchmarks/retrieval_search.py --kb runs/kb_kjv_48 [--queries 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from combinax.data import corpora
from combinax.retrieval import INDEXES, KnowledgeBase, make_index, recall_at_k


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--kb", default="runs/kb_kjv_48")
  parser.add_argument("--queries", type=int, default=300)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--indexes", default=",".join(INDEXES))
  args = parser.parse_args()
  kb = KnowledgeBase.open(args.kb)
  verses = [r["text"] for r in corpora.load("kjv", "test")]
  picked = np.random.default_rng(0).choice(len(verses), args.queries, replace=False)
  queries = kb.encoder.embed_texts([verses[i] for i in picked])
  print(f"{len(kb)} chunks x {kb.embeddings.shape[1]} dims, {args.queries} queries (KJV test verses), k={args.k}")

  indexes, built = {}, {}
  for kind in args.indexes.split(","):
    start = time.perf_counter()
    indexes[kind] = make_index(kind, kb.embeddings)
    built[kind] = time.perf_counter() - start
  exact = indexes["exact"].search(queries, args.k)[1] if "exact" in indexes else None
  latencies = {kind: [] for kind in indexes}
  found = {kind: [] for kind in indexes}
  for kind, index in indexes.items():   # warm-up: compiles, first touches of memory
    for q in queries[:5]:
      index.search(q[None], args.k)
  for q in queries:
    for kind, index in indexes.items():
      start = time.perf_counter()
      _, ids = index.search(q[None], args.k)
      latencies[kind].append(time.perf_counter() - start)
      found[kind].append(ids[0])
  print(f"{'index':<12}{'build s':>9}{'median ms':>11}{'p10-p90 ms':>14}{'recall@' + str(args.k):>11}")
  for kind in indexes:
    ms = np.asarray(latencies[kind]) * 1e3
    recall = recall_at_k(np.asarray(found[kind]), exact) if exact is not None else float("nan")
    print(f"{kind:<12}{built[kind]:>9.2f}{np.median(ms):>11.2f}{np.percentile(ms, 10):>7.2f}-"
          f"{np.percentile(ms, 90):<6.2f}{recall:>11.4f}")


if __name__ == "__main__":
  main()
