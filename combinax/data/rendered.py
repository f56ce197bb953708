"""Images the project makes itself, with exact text: rendered words and phrases, single characters, and scenes of
two shapes with a caption and a question that has one answer. Real enough to learn from, made offline, the same on
every machine.

- **words**: one to three words of the bundled KJV's vocabulary drawn in one of the fonts matplotlib's wheel ships
  (DejaVu Sans / Serif / Mono and their bold and italic faces, STIX) or Pillow's own, at a random size, colour on a
  contrasting background, a small rotation and pixel noise. A tenth of the words (chosen by a hash of the word) are
  held out: they occur only in the "test" split, so test phrases are read, not remembered.
- **glyphs**: one character of `GLYPHS` (the 26 lowercase letters and 10 digits) drawn the same way (font, size,
  colour, rotation, place, noise): an image classification set of 36 classes, as large as asked (e.g. 32 x 32).
- **scenes**: two shapes (circle, square, triangle) of two colours, one left of / right of / above / below the other,
  e.g. "an orange circle left of a blue square", with one question about it and its exact answer ("what colour is
  the circle?" "orange"; "what is above the green triangle?" "a yellow square"; "is the orange circle right of the
  blue square?" "no"). The "test" split holds out a fifth of the colour pairs.

The "validation" split is drawn as the training split is (the same words, colour pairs and glyphs), from seeds of
its own: the images hyperparameters are chosen on, never the test split's.

Example i of a split is drawn from its own generator, seeded by (seed, split, i), so any example can be made again
alone: `write_rendered` writes shards of `SHARD` examples (images as .npy, texts as .json, each file replaced whole;
`data.shards`) under the folder's lock, resumes after the longest prefix of shards that read back whole, and
finishes with a manifest of every file's sha256. `Rendered(...)` is the pipeline source (writing the folder first if
it is missing).

Needs Pillow and matplotlib's fonts: `pip install combinax[vision]`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from pathlib import Path

import numpy as np

from combinax.data import shards
from combinax.data.base import DataError
from combinax.data.sources import Source
KINDS = ("words", "scenes", "glyphs")
SPLITS = ("train", "test", "validation")
GLYPHS = "abcdefghijklmnopqrstuvwxyz0123456789"   # a glyph's class is its index here
GLYPH_SIZES = (0.7, 1.1)   # a glyph's font size, in image heights (a phrase's: 0.45 to 0.8)
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
         "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "pillow")   # "pillow": Pillow's own font (Aileron)
SHARD = shards.SHARD   # examples a shard holds
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 80, 215), "yellow": (235, 205, 35),
           "purple": (135, 55, 165), "orange": (240, 130, 25)}
RELATIONS = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
VERSION = 1   # of the drawing: a change makes every folder another


@dataclasses.dataclass(frozen=True)
class RenderedSpec:
  """What a rendered dataset holds; its folder's name is a hash of it, so another spec never reads this one's."""
  kind: str = "words"
  split: str = "train"
  size: int = 10_000
  seed: int = 0
  height: int = 32            # words: 32 x 128; scenes: 64 x 64; glyphs: 32 x 32 (give both)
  width: int = 128
  max_words: int = 3
  vocabulary: int = 2_000     # the most frequent KJV words (3 to 10 letters) drawn from
  group: int = 1              # scenes: runs of `group` examples share colours and shapes, each its own relation

  def __post_init__(self):
    def check(ok, field, expected):
      if not ok:
        raise DataError(f"RenderedSpec.{field}: expected {expected}, got {getattr(self, field)!r}")
    check(self.kind in KINDS, "kind", f"one of {KINDS}")
    check(self.split in SPLITS, "split", f"one of {SPLITS}")
    for field in ("size", "height", "width", "max_words", "vocabulary", "group"):
      check(isinstance(getattr(self, field), int) and getattr(self, field) > 0, field, "a positive int")
    check(self.height >= 16 and self.width >= 16, "height", "images of at least 16 x 16 pixels")

  def key(self) -> str:
    return shards.spec_key(self, VERSION)


def _pil():
  try:
    from PIL import Image, ImageDraw, ImageFont
  except ImportError:
    raise DataError("rendered images need Pillow: pip install combinax[vision]") from None
  return Image, ImageDraw, ImageFont


@functools.lru_cache(maxsize=1)
def font_files() -> dict:
  """{name: path or "pillow"} of the fonts drawn with: matplotlib's bundled TrueType files, and Pillow's own."""
  try:
    import matplotlib
  except ImportError:
    raise DataError("rendered images need matplotlib's fonts: pip install combinax[vision]") from None
  folder = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
  found = {name: str(folder / name) for name in FONTS if (folder / name).exists()}
  missing = [name for name in FONTS if name != "pillow" and name not in found]
  if missing:
    raise DataError(f"matplotlib's font folder {folder} lacks {missing}; reinstall matplotlib")
  return {**found, "pillow": "pillow"}


@functools.lru_cache(maxsize=512)   # (each example tries a few sizes of one font: load each once per process)
def _font(name: str, size: int):
  _, _, ImageFont = _pil()
  path = font_files()[name]
  return ImageFont.load_default(size) if path == "pillow" else ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=4)
def kjv_words(vocabulary: int) -> tuple[str, ...]:
  """The `vocabulary` most frequent lowercase words of 3-10 letters in the bundled KJV's training split, by count
  then alphabetically (the same list everywhere; read once per process)."""
  from combinax.data import corpora
  counts: dict[str, int] = {}
  for example in corpora.load("kjv", "train"):
    for word in re.findall(r"[a-z]+", example["text"].lower()):
      if 3 <= len(word) <= 10:
        counts[word] = counts.get(word, 0) + 1
  return tuple(sorted(counts, key=lambda w: (-counts[w], w))[:vocabulary])


def held_out(word: str) -> bool:
  """Whether `word` is one of the tenth that only the test split shows (by a hash, the same everywhere)."""
  return hashlib.sha256(f"combinax-rendered-{word}".encode()).digest()[0] < 26   # 26 / 256 ~ 10%


def _generator(spec: RenderedSpec, index: int) -> np.random.Generator:
  return np.random.default_rng([spec.seed, SPLITS.index(spec.split), KINDS.index(spec.kind), index])


def _contrasting_colours(rng) -> tuple:
  while True:
    ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if abs(int(ink @ [299, 587, 114]) - int(paper @ [299, 587, 114])) > 100_000:   # luma differs by > 100 / 255
      return tuple(int(c) for c in ink), tuple(int(c) for c in paper)


def _noisy(image: np.ndarray, rng, amount: float) -> np.ndarray:
  noise = rng.normal(0.0, amount * 255, image.shape)
  return np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def render_text(text: str, rng: np.random.Generator, height: int = 32, width: int = 128, *,
                sizes: tuple = (0.45, 0.8)) -> np.ndarray:
  """`text` drawn in a random font, size (in `sizes` x height), colour, rotation (at most 6 degrees) and noise:
  (height, width, 3) uint8. The size shrinks until the text fits; every character stays inside the image."""
  Image, ImageDraw, _ = _pil()
  names = sorted(font_files())
  name = names[rng.integers(len(names))]
  ink, paper = _contrasting_colours(rng)
  size = int(rng.integers(int(height * sizes[0]), int(height * sizes[1]) + 1))
  angle = float(rng.uniform(-6, 6))
  while True:
    font = _font(name, size)
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left + 4, bottom - top + 4
    canvas = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, font=font, fill=ink + (255,))
    canvas = canvas.rotate(angle, expand=True, resample=Image.BICUBIC)
    if (canvas.width <= width - 2 and canvas.height <= height - 2) or size <= 6:
      break
    size -= 1
  image = Image.new("RGB", (width, height), paper)
  x = int(rng.integers(0, max(width - canvas.width, 0) + 1))
  y = int(rng.integers(0, max(height - canvas.height, 0) + 1))
  image.paste(canvas, (x, y), canvas)
  return _noisy(np.asarray(image), rng, float(rng.uniform(0.0, 0.06)))


@functools.lru_cache(maxsize=4)
def _seen_and_unseen(vocabulary: int) -> tuple[tuple, tuple]:
  """`kjv_words(vocabulary)` split into the words every split shows and those only the test split shows."""
  words = kjv_words(vocabulary)
  return tuple(w for w in words if not held_out(w)), tuple(w for w in words if held_out(w))


def draw_phrase(rng: np.random.Generator, split: str, vocabulary: int, max_words: int) -> str:
  """One to `max_words` words of `kjv_words(vocabulary)`; in the test split at least one of them `held_out` (a
  word the training split never has), in the training split none."""
  seen, unseen = _seen_and_unseen(vocabulary)
  n = int(rng.integers(1, max_words + 1))
  chosen = [seen[rng.integers(len(seen))] for _ in range(n)]
  if split == "test":
    chosen[int(rng.integers(n))] = unseen[rng.integers(len(unseen))]
  return " ".join(chosen)


def _colour_pairs(split: str) -> list[tuple[str, str]]:
  """Ordered pairs of two colours: a fifth (every 5th in a fixed order) only in the test split."""
  pairs = [(a, b) for a in COLOURS for b in COLOURS if a != b]
  return [p for i, p in enumerate(pairs) if (i % 5 == 2) == (split == "test")]


def _draw_shape(draw, shape: str, centre, radius: int, colour):
  x, y = centre
  if shape == "circle":
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
  elif shape == "square":
    side = int(radius * 0.9)
    draw.rectangle([x - side, y - side, x + side, y + side], fill=colour)
  else:
    draw.polygon([(x, y - radius), (x - radius, y + int(radius * 0.8)), (x + radius, y + int(radius * 0.8))],
                 fill=colour)


def caption(colour_a: str, shape_a: str, relation: str, colour_b: str, shape_b: str) -> str:
  """A scene's caption: "an orange circle left of a blue square"."""
  a, b = f"{colour_a} {shape_a}", f"{colour_b} {shape_b}"
  return f"{_article(a)} {a} {relation} {_article(b)} {b}"


def scene_captions(split: str) -> list[str]:
  """Every caption a scene of `split` can have (its colour pairs, two different shapes in order, each relation):
  the candidates of zero-shot classification."""
  return [caption(a, shape_a, relation, b, shape_b) for a, b in _colour_pairs(split) for shape_a in SHAPES
          for shape_b in SHAPES for relation in RELATIONS if shape_a != shape_b]


def _article(words: str) -> str:
  return "an" if words[0] in "aeiou" else "a"


def render_scene(spec: RenderedSpec, rng: np.random.Generator, index: int = 0) -> tuple:
  """(image (height, width, 3) uint8, caption, question, answer) of a scene of two shapes. With `spec.group` > 1,
  the examples of one run of `group` indices share their colours and shapes and go through the relations in turn:
  in a batch read in order they are each other's hard negatives (a caption that differs only in its relation),
  without which a contrastive model has no reason to learn relations at all (we measured it at chance)."""
  Image, ImageDraw, _ = _pil()
  pairs = _colour_pairs(spec.split)
  shared = rng if spec.group == 1 else np.random.default_rng(
      [spec.seed, SPLITS.index(spec.split), KINDS.index(spec.kind), index // spec.group, 1])
  colour_a, colour_b = pairs[shared.integers(len(pairs))]
  shape_a, shape_b = (SHAPES[i] for i in shared.permutation(len(SHAPES))[:2])
  turn = 0 if spec.group == 1 else int(shared.integers(len(RELATIONS))) + index % spec.group
  relation = list(RELATIONS)[(rng.integers(len(RELATIONS)) if spec.group == 1 else turn) % len(RELATIONS)]
  dx, dy = RELATIONS[relation]
  h, w = spec.height, spec.width
  radius = int(rng.integers(max(3, min(h, w) // 10), max(4, min(h, w) // 6) + 1))
  # A's centre, then B's: a step of at least 2.2 radii along the relation's axis, a small drift across it.
  while True:
    ax, ay = rng.integers(radius + 1, w - radius - 1), rng.integers(radius + 1, h - radius - 1)
    step = rng.uniform(2.2, 4.0) * radius
    bx = ax - dx * step + (0 if dx else rng.uniform(-radius, radius))
    by = ay - dy * step + (0 if dy else rng.uniform(-radius, radius))
    if radius + 1 <= bx <= w - radius - 1 and radius + 1 <= by <= h - radius - 1:
      break
  paper = tuple(int(c) for c in rng.integers(200, 256, 3))
  image = Image.new("RGB", (w, h), paper)
  draw = ImageDraw.Draw(image)
  _draw_shape(draw, shape_a, (int(ax), int(ay)), radius, COLOURS[colour_a])
  _draw_shape(draw, shape_b, (int(bx), int(by)), radius, COLOURS[colour_b])
  a, b = f"{colour_a} {shape_a}", f"{colour_b} {shape_b}"
  kind = int(rng.integers(4))
  if kind == 0:
    question, answer = f"what colour is the {shape_a}?", colour_a
  elif kind == 1:
    question, answer = f"what shape is {colour_b}?", shape_b
  elif kind == 2:
    question, answer = f"what is {relation} the {b}?", f"{_article(a)} {a}"
  else:
    asked = list(RELATIONS)[rng.integers(len(RELATIONS))]
    question, answer = f"is the {a} {asked} the {b}?", "yes" if asked == relation else "no"
  return (_noisy(np.asarray(image), rng, 0.02), caption(colour_a, shape_a, relation, colour_b, shape_b), question,
          answer)


def make_example(spec: RenderedSpec, index: int) -> tuple:
  """Example `index` of `spec`: (image, text) for words and glyphs, (image, caption, question, answer) for scenes."""
  rng = _generator(spec, index)
  if spec.kind == "scenes":
    return render_scene(spec, rng, index)
  if spec.kind == "glyphs":   # one character, drawn larger than a phrase's (a lowercase letter is half the size)
    text = GLYPHS[rng.integers(len(GLYPHS))]
    return render_text(text, rng, spec.height, spec.width, sizes=GLYPH_SIZES), text
  text = draw_phrase(rng, spec.split, spec.vocabulary, spec.max_words)
  return render_text(text, rng, spec.height, spec.width), text


def default_folder(spec: RenderedSpec) -> Path:
  from combinax.data.tokenizers import cache_root
  return cache_root() / "rendered" / spec.key()


def write_rendered(spec: RenderedSpec, folder: str | Path | None = None, *, log=None) -> Path:
  """Makes `spec`'s dataset in `folder` (default: the cache's `rendered/<kind>-<split>-<hash>`), resuming after the
  longest prefix of shards that read back whole; returns the folder. Two writers of one folder: the second is
  refused, naming the first (the folder's lock)."""
  folder = Path(folder) if folder is not None else default_folder(spec)
  manifest = shards.spec_manifest(spec, VERSION)
  return shards.write_shards(folder, key=spec.key(), size=spec.size,
                             make=lambda indices: [make_example(spec, i) for i in indices],
                             shape=(spec.height, spec.width, 3), dtype=np.uint8, manifest=manifest,
                             lock_name=".rendered.lock", log=log,
                             progress=lambda n: f"rendered {n} of {spec.size} {spec.kind} ({spec.split})")


class Rendered(Source):
  """Rendered words or glyphs ((image uint8 (h, w, 3), text)) or scenes ((image, caption, question, answer)) as a
  pipeline source; the dataset is written first (`write_rendered`) if its folder has no manifest. Pass the
  `RenderedSpec` fields as keywords, and the source's own (`keys`, `shuffle`, `seed`, `repeat`): `seed` orders the
  epochs, `data_seed` draws the examples.

  >>> source = Rendered(kind="scenes", split="test", size=4, height=48, width=48)   # doctest: +SKIP
  """

  def __init__(self, kind: str = "words", split: str = "train", size: int = 10_000, *, data_seed: int = 0,
               height: int = 32, width: int = 128, max_words: int = 3, vocabulary: int = 2_000, group: int = 1,
               folder=None, **options):
    super().__init__(**options)
    self.spec = RenderedSpec(kind, split, size, data_seed, height, width, max_words, vocabulary, group)
    self.folder = folder

  def describe(self) -> str:
    return f"rendered {self.spec.kind} ({self.spec.split}, {self.spec.size})"

  def load(self):
    folder = write_rendered(self.spec, self.folder)
    return shards.ShardedExamples(folder, self.spec.size)
