"""PP-OCR text-line recognisers (PaddleOCR) from the ONNX file a pip package ships: PP-OCRv4's in `rapidocr_onnxruntime`.

The model is `combinax.models.ocr.TextRecognizer`. The ONNX graph names its tensors by the exporter's counters, not
by what they are, so the weights are read in the graph's own order and checked against the model's shapes: each
`Conv` (its `BatchNormalization`, where one follows, folded in), the learned scalar affines around each backbone
HardSwish, the LayerNorms, and each `MatMul` with a constant weight and the bias added after it. The characters
(CTC classes 1..n; 0 is the blank, the last a space) are the model's own, from the file's metadata.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from combinax.data.base import DataError
from combinax.data.tokenizers import Tokenizer, load_json, save_json
from combinax.models.ocr import HEIGHT, LCNET_V3_REC, TextRecognizer, ctc_collapse
from combinax.paths import unflatten
from combinax.pretrained.families import Imported, PretrainedError, check_params, stack_layers
from combinax.shapes import ShapeDtype

FAMILY = "ppocr"


class CTCCharacters(Tokenizer):
  """A CTC recogniser's classes: 0 the blank, then one per character. `decode` merges repeats and drops blanks (a
  row of per-position best classes in, its text out); `encode` gives a text's classes (an unknown character raises).

  >>> chars = CTCCharacters("ab ")
  >>> chars.decode([0, 1, 1, 0, 1, 2, 2, 3]), chars.encode("ba")
  ('aab ', array([2, 1], dtype=int32))
  """

  pad_id = 0     # the blank: what a CTC row holds where it says nothing
  eos_id = -1    # none

  def __init__(self, chars):
    self.chars = list(chars)
    self._ids_of = {c: i + 1 for i, c in enumerate(self.chars)}

  @property
  def vocab_size(self) -> int:
    return len(self.chars) + 1

  def encode(self, text: str) -> np.ndarray:
    missing = sorted({c for c in text if c not in self._ids_of})
    if missing:
      raise DataError(f"CTCCharacters: {''.join(missing)!r} not among the recogniser's {len(self.chars)} characters")
    return np.array([self._ids_of[c] for c in text], np.int32)

  def decode(self, ids) -> str:
    said = ctc_collapse(np.asarray(ids).reshape(-1).tolist())
    bad = [i for i in said if not 0 < i <= len(self.chars)]
    if bad:
      raise DataError(f"CTCCharacters: class {bad[0]} is outside its {self.vocab_size} classes")
    return "".join(self.chars[i - 1] for i in said)

  def save(self, path) -> None:
    save_json(path, "ctc", chars=self.chars)

  @classmethod
  def load(cls, path) -> "CTCCharacters":
    return cls(load_json(path, "ctc", cls.__name__)["chars"])


def model_from_config(config: dict, *, n_classes: int | None = -1, mode: str = "train"):
  """The recogniser; `n_classes=None` gives its features (batch, width / 8, 120) without the CTC head."""
  return TextRecognizer(config["n_classes"] if n_classes == -1 else n_classes, mode=mode)


def example_input(config: dict):
  return ShapeDtype((1, HEIGHT, 64, 3))


class _Graph:
  """An ONNX graph's computing nodes in order, its constants as numpy arrays, and who reads each tensor."""

  def __init__(self, path: Path):
    try:
      import onnx
      from onnx import numpy_helper
    except ImportError:
      raise ImportError("reading PP-OCR's ONNX file needs the onnx package: pip install 'combinax[ocr]'") from None
    model = onnx.load(str(path))
    self.metadata = {p.key: p.value for p in model.metadata_props}
    self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    self.nodes = []
    for node in model.graph.node:
      if node.op_type == "Constant":
        self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
      else:
        self.nodes.append(node)
    self.readers, self.producer = defaultdict(list), {}
    for node in self.nodes:
      for name in node.input:
        self.readers[name].append(node)
      for name in node.output:
        self.producer[name] = node

  @staticmethod
  def attribute(node, name: str, default):
    """`node`'s attribute `name`, or `default` if it has none."""
    from onnx import helper
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

  def const(self, node, scalar: bool | None = None):
    """The one constant input of `node` (None if it has none); `scalar` asks for a single number or a vector."""
    found = [self.consts[i] for i in node.input if i in self.consts]
    if len(found) != 1 or (scalar is not None and (found[0].size == 1) != scalar):
      return None
    return found[0]

  def reader(self, name: str, op: str):
    """The one node of type `op` reading tensor `name`."""
    found = [n for n in self.readers[name] if n.op_type == op]
    if len(found) != 1:
      raise PretrainedError(f"PP-OCR graph: expected one {op} reading {name}, found {len(found)}")
    return found[0]


def _convolutions(graph: _Graph) -> list[dict]:
  """Each Conv's {"kernel" (HWIO), "bias", "output"}, batch norms folded, in the graph's order."""
  out = []
  for node in (n for n in graph.nodes if n.op_type == "Conv"):
    kernel = graph.consts[node.input[1]].astype(np.float64)            # (O, I / groups, kh, kw)
    bias = graph.consts[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros(kernel.shape[0])
    output = node.output[0]
    norms = [n for n in graph.readers[output] if n.op_type == "BatchNormalization"]
    if norms:   # y = (conv + b - mean) * gamma / sqrt(var + eps) + beta, folded into the kernel and bias
      norm = norms[0]
      gamma, beta, mean, var = (graph.consts[i].astype(np.float64) for i in norm.input[1:5])
      scale = gamma / np.sqrt(var + graph.attribute(norm, "epsilon", 1e-5))
      kernel, bias, output = kernel * scale[:, None, None, None], (bias - mean) * scale + beta, norm.output[0]
    out.append({"kernel": kernel.transpose(2, 3, 1, 0).astype(np.float32), "bias": bias.astype(np.float32),
                "output": output})
  return out


def _affine_after(graph: _Graph, name: str) -> tuple[dict, str]:
  """The learned scalar affine reading tensor `name` (a Mul and an Add by single numbers): its params and output."""
  mul = next((n for n in graph.readers[name] if n.op_type == "Mul" and graph.const(n, scalar=True) is not None), None)
  if mul is None:
    raise PretrainedError(f"PP-OCR graph: no learned affine (Mul by a number) reads {name}")
  add = graph.reader(mul.output[0], "Add")
  params = {"scale": np.float32(graph.const(mul).reshape(())), "bias": np.float32(graph.const(add).reshape(()))}
  return params, add.output[0]


def _lcnet_unit(graph: _Graph, conv: dict) -> dict:
  """{"conv", "affine", "act_affine"} of a backbone convolution: conv -> affine -> HardSwish -> affine."""
  affine, after = _affine_after(graph, conv["output"])
  # HardSwish as exported: x * clip(x + 3, 0, 6) / 6, its Div the last node.
  hard_swish = graph.reader(graph.reader(after, "Mul").output[0], "Div")
  act_affine, _ = _affine_after(graph, hard_swish.output[0])
  return {"conv": conv, "affine": affine, "act_affine": act_affine}


def convert(graph: _Graph, blocks=LCNET_V3_REC) -> dict:
  """The TextRecognizer's params from PP-OCR's graph (numpy), by the graph's order (see the module's docstring)."""
  convs = iter(_convolutions(graph))
  flat = {}

  def put(path: str, weights: dict):
    flat.update({f"{path}/{leaf}": value for leaf, value in weights.items() if leaf != "output"})

  def lcnet_unit(path: str):
    for part, weights in _lcnet_unit(graph, next(convs)).items():
      put(f"{path}/{part}", weights)

  put("stem", next(convs))
  for i, (_, _, _, squeeze_excite) in enumerate(blocks):
    lcnet_unit(f"backbone/block{i}/depthwise")
    if squeeze_excite:
      put(f"backbone/block{i}/se/reduce", next(convs))
      put(f"backbone/block{i}/se/expand", next(convs))
    lcnet_unit(f"backbone/block{i}/pointwise")
  for path in ("mixer/reduce/conv", "mixer/expand/conv", "mixer/restore/conv", "fuse/conv", "project/conv"):
    put(path, next(convs))
  left = list(convs)
  if left:
    raise PretrainedError(f"PP-OCR graph: {len(left)} convolution(s) more than the model has")

  dense = []   # each MatMul by a constant weight, with the constant added after it
  for node in (n for n in graph.nodes if n.op_type == "MatMul" and graph.const(n) is not None):
    add = graph.reader(node.output[0], "Add")
    dense.append({"kernel": graph.const(node).astype(np.float32), "bias": graph.const(add).astype(np.float32)})
  norms = []   # LayerNorm as exported: (x - mean) / sqrt(var + eps), times a vector, plus a vector
  for node in graph.nodes:
    if node.op_type == "Mul" and graph.const(node, scalar=False) is not None and any(
        graph.producer[i].op_type == "Div" for i in node.input if i in graph.producer):
      add = graph.reader(node.output[0], "Add")
      norms.append({"scale": graph.const(node).astype(np.float32), "bias": graph.const(add).astype(np.float32)})
  n_layers = (len(dense) - 1) // 4
  if len(dense) != 4 * n_layers + 1 or len(norms) != 2 * n_layers + 1:
    raise PretrainedError(f"PP-OCR graph: {len(dense)} dense and {len(norms)} norm layers do not make Transformer "
                          "blocks of 4 dense and 2 norms, plus a head and a final norm")
  per_layer = defaultdict(dict)
  for layer in range(n_layers):
    qkv, proj, fc1, fc2 = dense[4 * layer:4 * layer + 4]
    width = proj["kernel"].shape[0]
    for k, part in enumerate("qkv"):   # the fused projection's columns: (q | k | v), each heads x head size
      per_layer[f"attention/{part}/kernel"][layer] = qkv["kernel"][:, k * width:(k + 1) * width]
      per_layer[f"attention/{part}/bias"][layer] = qkv["bias"][k * width:(k + 1) * width]
    for path, weights in (("attention/o", proj), ("ff/in", fc1), ("ff/out", fc2),
                          ("attention_norm", norms[2 * layer]), ("ff_norm", norms[2 * layer + 1])):
      for leaf, value in weights.items():
        per_layer[f"{path}/{leaf}"][layer] = value
  flat.update({f"mixer/{path}": value for path, value in stack_layers(per_layer, n_layers, "PP-OCR graph").items()})
  put("mixer/norm", norms[-1])
  put("head", dense[-1])
  return unflatten(flat)


def import_files(path) -> Imported:
  """Reads PP-OCR's ONNX recogniser at `path` into (config, params, characters)."""
  path = Path(path)
  graph = _Graph(path)
  if "character" not in graph.metadata:
    raise PretrainedError(f"{path}: no 'character' list in the ONNX file's metadata (a PP-OCR recogniser has one)")
  chars = CTCCharacters(graph.metadata["character"].splitlines() + [" "])
  params = convert(graph)
  config = {"n_classes": chars.vocab_size, "height": HEIGHT}
  check_params(params, model_from_config(config), example_input(config), path)
  return Imported(config, params, chars)
