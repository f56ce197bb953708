"""Synthetic corpora: samples of a language model written as JSON lines, with what made them, read back like any
corpus (`data.lm_pipeline(path=...)`), so a student can train on its teacher's text (sequence-level distillation,
Kim & Rush 2016).

    combinax-decode --pretrained=smollm2-135m-instruct --prompt="Tell me a story." --samples=1000 \\
        --output=synthetic/smollm2.jsonl --temperature=0.8 --top_p=0.95 --max_length=128

Each line is `{"text": the prompt's text and the sample, "sample": the generated text, "prompt": ..., "index": i}`;
`<output>.provenance.json` records the model, the prompts and the settings. Samples are made a batch at a time, batch
b from the seed folded with b, so the file is the same however often the command is stopped and rerun: a rerun
keeps the whole batches already written (the longest prefix whose line k holds sample k; a line cut short by a kill
is dropped) and goes on from there, refuses to add to a file that other settings made, and a second writer of the
same file is refused while the first holds its lock.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

from combinax.store import rundir


class SyntheticError(ValueError):
  """A synthetic corpus cannot be written as asked (e.g. its file was made with other settings)."""


def provenance_path(output: Path) -> Path:
  return output.with_name(output.name + ".provenance.json")


def _verified_lines(output: Path) -> list[str]:
  """The longest prefix of `output`'s lines in which line k is whole and holds sample k (a line a kill cut short,
  and everything after a line out of place, are not kept)."""
  if not output.exists():
    return []
  kept = []
  for line in output.read_text(encoding="utf-8").split("\n")[:-1]:   # the last piece: "" or a line cut short
    try:
      if json.loads(line)["index"] != len(kept):
        break
    except (ValueError, KeyError, TypeError):
      break
    kept.append(line)
  return kept


def write_samples(output, generate: Callable[[Sequence[str], int], Sequence[str]], prompts: Sequence[str], *,
                  samples: int, batch_size: int, provenance: dict) -> int:
  """Writes `samples` samples to `output` (JSONL): batch b holds samples b * batch_size ..., made by
  `generate(its prompts, b)` (prompt i is `prompts[i % len(prompts)]`); returns how many were made by this call.
  Holds the corpus's lock (`.<name>.lock` beside it) throughout: a second writer of the same file is refused."""
  output = Path(output)
  if samples < 1 or batch_size < 1 or not prompts:
    raise SyntheticError(f"write_samples: samples ({samples}) and batch_size ({batch_size}) must be positive, with "
                         f"at least one prompt (got {len(prompts)})")
  with rundir.locked(output.parent, lock_file=f".{output.name}.lock"):
    rundir.clear_leftovers(output.parent, f"{output.name}*")
    return _write(output, generate, prompts, samples, batch_size, provenance)


def _write(output: Path, generate, prompts, samples: int, batch_size: int, provenance: dict) -> int:
  about = {**provenance, "prompts": list(prompts), "samples": int(samples), "batch_size": int(batch_size)}
  record = provenance_path(output)
  if record.exists() and json.loads(record.read_text()) != about:
    before = json.loads(record.read_text())
    changed = sorted(k for k in set(before) | set(about) if before.get(k) != about.get(k))
    raise SyntheticError(f"{output} was made with other settings ({', '.join(changed)} differ, see {record}); "
                         "write to another file")
  rundir.write_atomically(record, json.dumps(about, indent=1))
  lines = _verified_lines(output)
  # Whole batches only (a batch is made from its own seed), and never more than asked for.
  kept = samples if len(lines) >= samples else len(lines) // batch_size * batch_size
  if output.exists() and output.read_text(encoding="utf-8") != "".join(line + "\n" for line in lines[:kept]):
    # a line cut short, a line out of place, or the start of an unfinished batch
    rundir.write_atomically(output, "".join(line + "\n" for line in lines[:kept]))
  made = 0
  with open(output, "a", encoding="utf-8") as f:
    for start in range(kept, samples, batch_size):
      index = range(start, min(start + batch_size, samples))
      asked = [prompts[i % len(prompts)] for i in index]
      texts = generate(asked, start // batch_size)
      for i, prompt, text in zip(index, asked, texts):
        f.write(json.dumps({"text": prompt + text, "sample": text, "prompt": prompt, "index": i},
                           ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
      made += len(index)
  return made
