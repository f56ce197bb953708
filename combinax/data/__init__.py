"""combinax.data: deterministic, resumable input pipelines (a source, then stages, composed with `Serial`).

As in `trax.data`, a pipeline is a chain of small steps from an iterator to an iterator; examples flow as tuples
such as `(inputs, targets)`, and batches come out as tuples of numpy arrays, ready for `jax.device_put`:

>>> from combinax import data
>>> tok = data.CharTokenizer("abcdefgh ")
>>> pipeline = data.Serial(
...     data.FromList([("abc",), ("defgh",), ("ab ba",), ("h",)]),
...     data.Tokenize(tok),
...     data.Shuffle(buffer_size=4, seed=0),
...     data.PackLM(length=4, eos_id=tok.eos_id),
...     data.Batch(2))
>>> stream = pipeline()
>>> first = next(stream)
>>> [a.shape for a in first]
[(2, 4), (2, 4), (2, 4)]

**Resumable by design.** Each stage is a small object holding only its settings; calling it on the stream above
returns a `Stream`, an iterator that also knows its position. `stream.get_state()` lists, source first, each
stage's position as a small dict: the source's `(epoch, index)`, the shuffle buffer and its generator's state, the
tokens a packer holds over, the partial buckets of `BucketByLength`, drop counters. Stages that take everything
they need within one call (`Batch`, `Tokenize`, ...) keep nothing. `dumps_state`/`loads_state` turn it into JSON
and back exactly (stages never change an example in place, so a saved buffer cannot change under it). A fresh
stream of the same pipeline, given that state with `set_state`, produces exactly the items the first one would have
produced next; `Prefetch` records the state with each item it produces ahead, so it stays exact. Nothing is
replayed, so restoring is instant at any point of a run:

>>> state = data.dumps_state(stream.get_state())
>>> rest = [b[0].tolist() for b in stream]
>>> resumed = pipeline()
>>> resumed.set_state(data.loads_state(state))
>>> [b[0].tolist() for b in resumed] == rest
True

Randomness is seeded (`Shuffle(seed=)`, `MLM(seed=)`, sources' `shuffle=True, seed=`), so the same seed gives the
same batches. Bad input raises `DataError` naming the file and line, field or stage; nothing is skipped silently
(stages that drop examples on request count them in `stream.get_stats()`).

| kind | stages |
| --- | --- |
| sources | `TFDS` (needs `combinax[tfds]`; no TensorFlow), `TextLines`, `CSV`, `TSV`, `JSONL`, `Corpus`, `FromList` |
| images | `RandomShift` (seeded translation), `Rendered` (words, glyphs, scenes drawn offline: `data.rendered`) |
| sound | `Spoken` (words and phrases said offline by eSpeak NG, as log-mel frames: `combinax.data.spoken`) |
| transforms | `Map`, `Tokenize`, `Detokenize`, `FilterByLength`, `TruncateToLength`, `PadToLength`, `AddLossWeights` |
| order | `Shuffle` (seeded buffer), sources' `shuffle=True` (a permutation per epoch), `shard=(i, n)` |
| batching | `Batch`, `BucketByLength`, `stack_examples` |
| language models | `ConcatenateToLMInput`, `PackLM`, `MLM` |
| threads | `Prefetch` |
| several hosts | sources read the host's shard, `Batch` sizes are global; `as_host`, `SimulatedHosts` (see `hosts`) |
| tokenizers | `CharTokenizer`, `SentencePieceTokenizer`, `BPETokenizer`, `WordPieceTokenizer` |
| vocabularies | `load_tokenizer(path)`, `tokenizer_for(corpus, kind, vocab_size)` (trained once, cached) |
| recipes | `lm_pipeline`, `classification_pipeline`, `translation_pipeline` |
| image recipes | `image_pipeline`, `glyph_pipeline`, `image_text_pipeline`, `image_prompt_pipeline` (image-prefix LM) |
| sound recipes | `spoken_pipeline` (keyword classification), `spoken_prompt_pipeline` (an audio-prefix LM's) |
"""

from combinax.configurable import register as _register
from combinax.data.base import DataError, FnStage, Serial, Stage, Stream
from combinax.data.batching import Batch, BucketByLength, stack_examples
from combinax.data.hosts import SimulatedHosts, as_host, current_host
from combinax.data.images import RandomShift
from combinax.data.rendered import Rendered, RenderedSpec, write_rendered
from combinax.data.spoken import Spoken, SpokenSpec, write_spoken
from combinax.data.hf_tokenizers import BPETokenizer, WordPieceTokenizer
from combinax.data.lm import MLM, ConcatenateToLMInput, PackLM
from combinax.data.prefetch import Prefetch
from combinax.data.recipes import (caption_ids, caption_tokenizer, classification_pipeline, corpus_tokenizer,
                                   glyph_pipeline, image_pipeline, image_prompt_pipeline, image_text_pipeline,
                                   lm_pipeline, prompt_and_answer, prompt_ids, spoken_pipeline,
                                   spoken_prompt_pipeline, translation_pipeline)
from combinax.data.files import CSV, JSONL, TSV, TextLines, read_text
from combinax.data.sources import TFDS, Corpus, FromList, Source
from combinax.data.state import dumps_state, loads_state
from combinax.data.tokenizers import (CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer,
                                      tokenizer_for)
from combinax.data.transforms import (AddLossWeights, Detokenize, FilterByLength, Map, PadToLength, Shuffle,
                                      Tokenize, TruncateToLength)

__all__ = [
    "DataError", "FnStage", "Serial", "Stage", "Stream", "Source", "dumps_state", "loads_state",
    "TFDS", "TextLines", "CSV", "TSV", "JSONL", "Corpus", "FromList", "read_text",
    "Map", "Tokenize", "Detokenize", "FilterByLength", "TruncateToLength", "PadToLength", "AddLossWeights", "Shuffle",
    "Batch", "BucketByLength", "stack_examples", "ConcatenateToLMInput", "PackLM", "MLM", "Prefetch",
    "Tokenizer", "CharTokenizer", "SentencePieceTokenizer", "BPETokenizer", "WordPieceTokenizer", "load_tokenizer",
    "tokenizer_for", "corpora", "lm_pipeline", "classification_pipeline", "translation_pipeline", "corpus_tokenizer",
    "image_pipeline", "glyph_pipeline", "SimulatedHosts", "as_host", "current_host", "RandomShift",
    "Rendered", "RenderedSpec", "write_rendered", "image_text_pipeline", "caption_tokenizer", "caption_ids",
    "image_prompt_pipeline", "prompt_and_answer", "prompt_ids", "Spoken", "SpokenSpec", "write_spoken",
    "spoken_pipeline", "spoken_prompt_pipeline",
]

# gin: every stage and recipe (`TrainTask.data = @train/lm_pipeline()`), here in one place.
_register(globals(), "combinax.data", [
    "Serial", "TFDS", "TextLines", "CSV", "TSV", "JSONL", "Corpus", "FromList", "Map", "Tokenize", "Detokenize",
    "FilterByLength", "TruncateToLength", "PadToLength", "AddLossWeights", "Shuffle", "Batch", "BucketByLength",
    "ConcatenateToLMInput", "PackLM", "MLM", "Prefetch", "lm_pipeline", "classification_pipeline",
    "translation_pipeline", "corpus_tokenizer", "image_pipeline", "SimulatedHosts", "RandomShift", "Rendered",
    "glyph_pipeline", "image_text_pipeline", "caption_tokenizer", "image_prompt_pipeline", "Spoken",
    "spoken_pipeline", "spoken_prompt_pipeline"])


def __getattr__(name):
  if name == "corpora":   # the bundled corpora, imported when first asked for
    import importlib
    return importlib.import_module("combinax.data.corpora")
  raise AttributeError(f"module 'combinax.data' has no attribute {name!r}")
