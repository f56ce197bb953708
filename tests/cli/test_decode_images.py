"""combinax-decode --image: an image-prefix LM's run reads an image before its prompt; what decoding prints is what
`decoding.autoregressive_sample` makes of the same pixels, and each bad image is one line naming what is wrong."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import combinax.train  # noqa: F401 -- registers sample_setup
from combinax import data, decoding
from combinax.cli import decode
from combinax.cli.frame import ConfigError
from combinax.store import checkpoints

PIL = pytest.importorskip("PIL.Image")

CONFIG = """
ImagePrefixLM.vision = @image/ViT()
image/ViT.n_classes = None
image/ViT.d_model = 8
image/ViT.patch_size = 4
image/ViT.d_ff = 16
image/ViT.n_layers = 1
image/ViT.n_heads = 2
image/ViT.pool = "none"
image/ViT.image_size = (8, 16)
image/ViT.channels = 3
ImagePrefixLM.vocab_size = 31
ImagePrefixLM.options = @TransformerOptions()
TransformerOptions.d_model = 16
TransformerOptions.d_ff = 32
TransformerOptions.n_heads = 2
TransformerOptions.max_len = 40
TransformerOptions.positions = "rotary"
TransformerOptions.dropout = 0.0
ImagePrefixLM.n_layers = 1
sample_setup.model = @ImagePrefixLM
sample_setup.tokenizer = @caption_tokenizer()
"""


@pytest.fixture(autouse=True)
def clean():
  gin.clear_config()
  yield
  gin.clear_config()


def built(mode: str):
  """The configuration's model (a CLI run leaves gin's configuration locked)."""
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config(CONFIG)
    model = gin.get_configurable("combinax.models.ImagePrefixLM")(mode=mode)
    gin.clear_config()
  return model


@pytest.fixture
def run_dir(tmp_path):
  """A run directory of a small image-prefix LM (random weights: what it says does not matter, only that the CLI
  says what decoding says) whose checkpoint keeps its configuration, as combinax-train's do."""
  model = built("eval")
  sig = (jax.ShapeDtypeStruct((1, 8, 16, 3), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32),
         jax.ShapeDtypeStruct((1, 4), jnp.int32))
  params, _ = model.init(jax.random.key(3), sig)
  checkpoints.save(tmp_path / "run", 7, {"params": params}, {"run": {"config": CONFIG}})
  return tmp_path / "run", params


def image_file(path, size=(16, 8), mode="RGB", seed=0):
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
  PIL.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)
  return path


def test_the_answer_printed_is_what_decoding_makes_of_the_image_and_prompt(run_dir, tmp_path, capsys):
  folder, params = run_dir
  path = image_file(tmp_path / "a.png")
  decode.COMMAND.run([f"--output_dir={folder}", f"--image={path}", "--prompt=what does it say?",
                      "--temperature=0", "--max_length=6"])
  printed = capsys.readouterr().out.strip()
  tokenizer = data.caption_tokenizer()
  prompt = np.asarray([tokenizer.encode("what does it say?")], np.int32)
  pixels = np.asarray(PIL.open(path), np.float32)[None] / 255
  decoder = built("predict")
  ids = decoding.autoregressive_sample(decoder, params, prompt, max_length=6, temperature=0,
                                       inputs=(pixels, np.asarray([prompt.shape[1]], np.int32)),
                                       eos_id=tokenizer.eos_id)
  made = np.asarray(ids)[0].tolist()
  made = made[:made.index(tokenizer.eos_id)] if tokenizer.eos_id in made else made
  assert printed == tokenizer.decode(np.asarray(made, np.int32)).strip()


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such file"),
    (lambda p: image_file(p, size=(20, 8)), r"is 20 x 8 pixels with 3 channel\(s\) \(RGB\); the model reads 16 x 8 "
                                            "with 3: resize or convert it first"),
    (lambda p: image_file(p, mode="L"), r"is 16 x 8 pixels with 1 channel\(s\) \(L\); the model reads 16 x 8 with 3"),
    (lambda p: image_file(p, mode="RGBA"), r"is 16 x 8 pixels with 4 channel\(s\) \(RGBA\)"),
    (lambda p: (p.write_text("not a png"), p)[1], "not an image this machine can read"),
])
def test_a_bad_image_is_one_line_naming_what_is_wrong(run_dir, tmp_path, make, message):
  path = make(tmp_path / "bad.png")
  with pytest.raises(ConfigError, match=f"^combinax-decode: --image={path}(: | )" + message) as refused:
    decode.COMMAND.run([f"--output_dir={run_dir[0]}", f"--image={path}", "--prompt=x", "--max_length=2"])
  assert "\n" not in str(refused.value.code)


def test_an_image_model_without_an_image_and_a_projector_for_another_width_are_refused(run_dir, tmp_path):
  folder = run_dir[0]
  with pytest.raises(ConfigError, match="reads an image before its prompt: give --image=FILE"):
    decode.COMMAND.run([f"--output_dir={folder}", "--prompt=x"])
  with pytest.raises(ConfigError, match="one --prompt per --image: got 1 image"):
    decode.COMMAND.run([f"--output_dir={folder}", f"--image={image_file(tmp_path / 'a.png')}", "--prompt=x",
                        "--prompt=y"])
  with pytest.raises(ConfigError, match=r"its image projector was trained for an LM of width 16 \(image/projector/"
                                        r"kernel \[8, 16\]\), but the configured LM's width is 32"):
    decode.COMMAND.run([f"--output_dir={folder}", f"--image={tmp_path / 'a.png'}", "--prompt=x",
                        "--config=TransformerOptions.d_model = 32"])


AUDIO = "\n".join(line for line in CONFIG.splitlines() if "ViT" not in line) + """
ImagePrefixLM.vision = @AudioEncoder()
AudioEncoder.n_classes = None
AudioEncoder.pool = "none"
AudioEncoder.d_model = 8
AudioEncoder.d_ff = 16
AudioEncoder.n_layers = 1
AudioEncoder.n_heads = 2
AudioEncoder.n_mels = 4
AudioEncoder.max_frames = 8
"""


def test_an_audio_prefix_run_is_refused_saying_how_to_decode_it(tmp_path):
  with gin.unlock_config():
    gin.parse_config(AUDIO)
    model = gin.get_configurable("combinax.models.ImagePrefixLM")(mode="eval")
    gin.clear_config()
  sig = (jax.ShapeDtypeStruct((1, 8, 4), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32),
         jax.ShapeDtypeStruct((1, 4), jnp.int32))
  params, _ = model.init(jax.random.key(3), sig)
  checkpoints.save(tmp_path / "run", 7, {"params": params}, {"run": {"config": AUDIO}})
  with pytest.raises(ConfigError, match=r"hears spoken frames before its prompt \(an audio-prefix LM\); "
                                        r"combinax-decode reads images only: decode it from Python"):
    decode.COMMAND.run([f"--output_dir={tmp_path / 'run'}", "--prompt=x"])


def test_a_recogniser_of_lines_of_any_width_is_refused_naming_the_width_to_set(tmp_path):
  config = "\n".join(line for line in CONFIG.splitlines() if "ViT" not in line) + """
ImagePrefixLM.vision = @image/TextRecognizer()
image/TextRecognizer.n_classes = None
"""
  # (refused before any weight is read: the run's checkpoint need not hold the model's)
  checkpoints.save(tmp_path / "run", 7, {"params": {"x": np.zeros(1, np.float32)}}, {"run": {"config": config}})
  with pytest.raises(ConfigError, match=r"names no image size and channels \(ViT.image_size, ViT.channels; "
                                        r"TextRecognizer.width\)"):
    decode.COMMAND.run([f"--output_dir={tmp_path / 'run'}", "--prompt=x"])
