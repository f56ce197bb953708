"""`python -m combinax.retrieval build|search`: a knowledge base made from documents (`combinax.retrieval.build`)
and searched from the command line (`KnowledgeBase.search`)."""

from __future__ import annotations

from absl import flags

from combinax.cli.frame import Command, ConfigError

PROGRAM = "python -m combinax.retrieval"
HELP = f"""usage: {PROGRAM} build --output_dir=KB (--documents=PATH ... | --corpus=kjv) [--encoder=all-minilm-l6-v2]
       {PROGRAM} search --output_dir=KB --query=TEXT [--query=TEXT ...] [--k=5] [--index=exact]
  build:  cuts the documents (text files: one each; .jsonl: one a line, {{"text": ..., "id": ...}}; folders: their
          files) or a bundled corpus into chunks, embeds them with the encoder and adds them to the knowledge base
          in KB; rerunning after a kill goes on where it stopped, and documents it holds already are skipped
  search: the k chunks nearest each query, with their documents and scores"""


def define(values: flags.FlagValues):
  flags.DEFINE_multi_string("documents", [], "build: text or .jsonl files, or folders of them", flag_values=values)
  flags.DEFINE_string("corpus", None, "build: a bundled corpus instead (kjv: its chapters)", flag_values=values)
  flags.DEFINE_string("split", "train", "build: the corpus's split", flag_values=values)
  flags.DEFINE_string("encoder", "all-minilm-l6-v2", "build: the bundled sentence encoder", flag_values=values)
  flags.DEFINE_integer("chunk_tokens", 128, "build: encoder tokens per chunk", flag_values=values)
  flags.DEFINE_integer("overlap", 32, "build: tokens each chunk shares with the one before", flag_values=values)
  flags.DEFINE_multi_string("query", [], "search: the query text(s)", flag_values=values)
  flags.DEFINE_integer("k", 5, "search: chunks per query", flag_values=values)
  flags.DEFINE_string("index", "exact", "search: exact, exact-int8, faiss or usearch", flag_values=values)


def retrieval(args, rest: list[str]):
  if rest not in (["build"], ["search"]):
    raise ConfigError(f"{PROGRAM}: expected the command build or search, got {' '.join(rest) or 'none'}\n{HELP}")
  if args.output_dir is None:
    raise ConfigError(f"{PROGRAM} {rest[0]}: --output_dir (the knowledge base's folder) is required")
  from combinax import retrieval as r
  if rest == ["build"]:
    if bool(args.documents) == bool(args.corpus):
      raise ConfigError(f"{PROGRAM} build: give --documents or --corpus (one of them)")
    documents = r.read_documents(args.documents) if args.documents else r.corpus_documents(args.corpus, args.split)
    done = r.build(args.output_dir, documents, encoder=args.encoder, chunk_tokens=args.chunk_tokens,
                   overlap=args.overlap)
    print(f"{PROGRAM} build: {done['documents']} document(s) added ({done['chunks']} chunks), {done['skipped']} "
          f"already there; {done['total_chunks']} chunks in {args.output_dir}")
    return
  if not args.query:
    raise ConfigError(f"{PROGRAM} search: give at least one --query")
  kb = r.KnowledgeBase.open(args.output_dir, index=args.index)
  for query, hits in zip(args.query, kb.search(args.query, k=args.k)):
    print(f"query: {query}")
    for rank, hit in enumerate(hits, 1):
      print(f"  {rank}. {hit.score:.3f}  {hit.document} #{hit.chunk}: {' '.join(hit.text.split())[:100]}")


COMMAND = Command(PROGRAM, HELP, retrieval, shared=("output_dir",), define=define, positional="build|search")


def main(argv: list[str] | None = None):
  """Entry point of `python -m combinax.retrieval`."""
  COMMAND.main(argv)
