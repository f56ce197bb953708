"""PP-OCRv4's recogniser: the combinax TextRecognizer with the imported weights equals the package's own ONNX runtime,
reads a drawn line, and the importer refuses files it cannot map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax as cx
from combinax import pretrained
from combinax.data.base import DataError
from combinax.layers import LayerError
from combinax.models.ocr import TextRecognizer, ctc_greedy
from combinax.pretrained import ppocr
from combinax.pretrained.families import PretrainedError

from conftest import files_of

onnx = pytest.importorskip("onnx")
NAME = "ppocr-v4-rec"


@pytest.fixture(scope="module")
def onnx_file():
  return files_of(NAME)


@pytest.fixture(scope="module")
def recogniser(onnx_file):
  return ppocr.import_files(onnx_file)


def _onnx_probabilities(onnx_file, images):
  """The package's own runtime on images (batch, 48, width, 3), RGB in [0, 1], prepared as RapidOCR prepares them:
  BGR, (x - 0.5) / 0.5, channels first."""
  ort = pytest.importorskip("onnxruntime")
  session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
  prepared = ((images[..., ::-1] - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)
  return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(prepared)})[0]


def _line(text: str, width: int = 320) -> np.ndarray:
  """`text` in black DejaVu Sans on a white 48-pixel line, RGB in [0, 1]."""
  from combinax.data import rendered
  from PIL import Image, ImageDraw, ImageFont
  font = ImageFont.truetype(str(rendered.font_files()["DejaVuSans.ttf"]), 28)
  image = Image.new("RGB", (width, 48), "white")
  ImageDraw.Draw(image).text((4, 8), text, fill="black", font=font)
  return np.asarray(image, np.float32) / 255


@pytest.mark.parametrize("width", [64, 320])
def test_recogniser_equals_the_packages_onnx_runtime(onnx_file, recogniser, width):
  images = np.random.default_rng(width).uniform(0, 1, (2, 48, width, 3)).astype(np.float32)
  if width == 320:
    images[0] = _line("Let there be light")
  expected = _onnx_probabilities(onnx_file, images)
  model = ppocr.model_from_config(recogniser.config)
  logits, _ = jax.jit(model.apply)(recogniser.params, {}, jnp.asarray(images))
  probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
  assert probabilities.shape == expected.shape == (2, width // 8, 6625)
  # float32 through 38 convolutions and two attention blocks, in another order: 1.7e-6 measured
  assert np.abs(probabilities - expected).max() <= 2e-5
  np.testing.assert_array_equal(probabilities.argmax(-1), expected.argmax(-1))


def test_recogniser_reads_a_drawn_line(recogniser):
  model = ppocr.model_from_config(recogniser.config)
  logits, _ = model.apply(recogniser.params, {}, jnp.asarray(_line("Let there be light")[None]))
  # (the blank paper after the text reads as one space, in the package's runtime too)
  assert [recogniser.tokenizer.decode(ids) for ids in ctc_greedy(logits)] == ["Let there be light "]


def test_recogniser_parameters_are_the_onnx_files_less_the_folded_batch_norms(recogniser):
  # The file's 2,690,109 weights (vectors and matrices) hold 6 batch norms over 16 + 60 + 120 + 480 + 60 + 120 = 856
  # channels (4 vectors each), folded into 856 biases of the convolutions before them; the learned affines add
  # 2 scalars around each of the 28 backbone convolutions' HardSwish (112).
  assert cx.count_params(recogniser.params) == 2_690_109 - 4 * 856 + 856 + 112 == 2_687_653
  paths = cx.paths(recogniser.params)
  assert "backbone/block10/se/reduce/kernel" in paths and "mixer/blocks/attention/q/kernel" in paths
  assert recogniser.params["mixer"]["blocks"]["attention"]["q"]["kernel"].shape == (2, 120, 120)
  assert recogniser.tokenizer.vocab_size == recogniser.config["n_classes"] == 6625
  assert recogniser.tokenizer.chars[-1] == " " and recogniser.tokenizer.encode("God").tolist() != []


def test_recogniser_features_are_a_vision_tower(recogniser):
  features = ppocr.model_from_config(recogniser.config, n_classes=None)
  assert features.output_signature(cx.ShapeDtype((3, 48, 192, 3))) == cx.ShapeDtype((3, 24, 120))
  params = {k: v for k, v in recogniser.params.items() if k != "head"}
  ppocr.check_params(params, features, cx.ShapeDtype((1, 48, 64, 3)), "features")


def test_recogniser_refuses_lines_of_another_height_by_name():
  with pytest.raises(LayerError, match=r"(?s)CheckImages.*\(batch, 48, width, 3\).*\(2, 32, 128, 3\)"):
    TextRecognizer(10).init(jax.random.key(0), cx.ShapeDtype((2, 32, 128, 3)))


def test_import_refuses_a_file_without_its_characters(onnx_file, tmp_path):
  model = onnx.load(str(onnx_file))
  del model.metadata_props[:]
  onnx.save(model, str(tmp_path / "rec.onnx"))
  with pytest.raises(PretrainedError, match="no 'character' list"):
    ppocr.import_files(tmp_path / "rec.onnx")


def test_import_refuses_a_graph_with_a_convolution_too_many(onnx_file, tmp_path):
  model = onnx.load(str(onnx_file))
  convs = [n for n in model.graph.node if n.op_type == "Conv"]
  model.graph.node.append(onnx.helper.make_node("Conv", [convs[-1].output[0], convs[-1].input[1]], ["extra"]))
  onnx.save(model, str(tmp_path / "rec.onnx"))
  with pytest.raises(PretrainedError, match="convolution"):
    ppocr.import_files(tmp_path / "rec.onnx")


def test_ctc_characters_merge_repeats_and_refuse_unknown_characters(tmp_path):
  chars = ppocr.CTCCharacters(["a", "b", " "])
  assert chars.decode([1, 1, 0, 1, 2, 0, 0, 3, 2]) == "aab b"
  with pytest.raises(DataError, match="'z' not among"):
    chars.encode("abz")
  chars.save(tmp_path / "chars.json")
  assert ppocr.CTCCharacters.load(tmp_path / "chars.json").chars == ["a", "b", " "]


def test_registry_loads_the_recogniser_offline(onnx_file, pretrained_cache, recogniser):
  model, params, tokenizer = pretrained.load(NAME)
  assert isinstance(tokenizer, ppocr.CTCCharacters) and tokenizer.chars == recogniser.tokenizer.chars
  for (path, a), (_, b) in zip(cx.leaves_with_paths(params), cx.leaves_with_paths(recogniser.params)):
    np.testing.assert_array_equal(a, b, err_msg=path)
  assert model.output_signature(cx.ShapeDtype((1, 48, 64, 3))) == cx.ShapeDtype((1, 8, 6625))
