"""Bundled pretrained NLP models, loaded offline into ordinary combinax models.

>>> import combinax as cx
>>> cx.pretrained.list()
['all-minilm-l6-v2', 'ppocr-v4-rec', 'smollm2-135m-instruct', 'textgenrnn']

`model, params, tokenizer = cx.pretrained.load("all-minilm-l6-v2")` gives a `TransformerEncoder` whose output is
normalised sentence embeddings; `load("smollm2-135m-instruct", mode="predict", max_len=256)` a `TransformerLM` for
`combinax.decoding`; `load("ppocr-v4-rec")` PP-OCRv4's text-line recogniser (`models.TextRecognizer`, CTC over
6,624 characters; with `n_classes=None` a pretrained vision tower). The first load imports the weights from their package (installed by
`python -m combinax.pretrained download NAME`) and caches them; later loads read the cache. The importers work on
your own files too: `bert.import_files(folder)` (BERT-family safetensors + config.json), `llama.import_files(gguf)`,
`textgenrnn.import_files(folder)` (a textgenrnn weights .hdf5 + vocab .json), `ppocr.import_files(onnx)` (a PP-OCR
recogniser's ONNX file). `load_quantized("smollm2-135m-instruct", "int8")` gives an LM's weights quantized for decoding
(int8, q4, q4_1, or its GGUF's own blocks), made once and kept in the cache beside the float32 ones.
"""

from combinax.configurable import register as _register
from combinax.pretrained.families import Imported, PretrainedError
from combinax.pretrained.registry import (ENTRIES, cache_path, checkpoint, config, describe, download_command,
                                          image_prefix_model, info, list_models, load, model, tokenizer)
from combinax.pretrained.quantized import load_quantized

list = list_models  # noqa: A001 -- `cx.pretrained.list()`, as the registry's public name

# @pretrained.model in gin
_register(globals(), "combinax.pretrained", ["model", "tokenizer", "checkpoint", "image_prefix_model"])
