"""data.rendered: the images are what their texts say, the same on every run, and written resumably under a lock."""

import json
import multiprocessing

import numpy as np
import pytest

from combinax import data
from combinax.data import rendered
from combinax.store.rundir import RunDirectoryError, locked

pytest.importorskip("PIL")
pytest.importorskip("matplotlib")


def spec(**kw):
  return rendered.RenderedSpec(**{"kind": "words", "split": "train", "size": 12, **kw})


def test_an_example_is_the_same_every_time_and_others_differ():
  a, b = rendered.make_example(spec(), 3), rendered.make_example(spec(), 3)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[1] == b[1]
  c = rendered.make_example(spec(seed=1), 3)
  assert a[1] != c[1] or not np.array_equal(a[0], c[0])
  assert a[0].shape == (32, 128, 3) and a[0].dtype == np.uint8


def test_the_test_split_shows_words_the_training_split_never_does():
  words = rendered.kjv_words(2000)
  train = {w for i in range(300) for w in rendered.make_example(spec(size=300), i)[1].split()}
  test = [rendered.make_example(spec(split="test", size=50), i)[1].split() for i in range(50)]
  assert not any(rendered.held_out(w) for w in train)
  assert all(any(rendered.held_out(w) for w in phrase) for phrase in test)
  assert 150 <= sum(rendered.held_out(w) for w in words) <= 250   # about a tenth


def test_text_is_drawn_inside_the_image_in_ink_that_contrasts():
  for i in range(20):
    image, text = rendered.make_example(spec(), i)
    luma = image.astype(float) @ [0.299, 0.587, 0.114]
    border = np.concatenate([luma[0], luma[-1], luma[:, 0], luma[:, -1]])
    assert luma.max() - luma.min() > 80, text                       # the ink shows
    assert np.std(border) < 0.25 * np.std(luma) + 20, text          # the edges are paper (and noise): nothing cut


def test_a_glyph_is_one_character_drawn_large_inside_its_image():
  s = spec(kind="glyphs", size=400, height=32, width=32)
  seen = set()
  for i in range(400):
    image, text = rendered.make_example(s, i)
    assert image.shape == (32, 32, 3) and text in rendered.GLYPHS
    seen.add(text)
    if i >= 40:
      continue
    luma = image.astype(float) @ [0.299, 0.587, 0.114]
    border = np.concatenate([luma[0], luma[-1], luma[:, 0], luma[:, -1]])
    assert np.std(border) < 0.25 * np.std(luma) + 20, text                   # nothing cut at the edges
    ink = np.abs(luma - np.median(border)) > 60
    rows = np.nonzero(ink.any(axis=1))[0]
    assert rows.max() - rows.min() + 1 >= 10, text                             # a third of the image or more
  assert seen == set(rendered.GLYPHS)                                          # every class is drawn


def test_the_validation_split_is_drawn_like_the_training_split_from_seeds_of_its_own():
  train, validation = spec(size=200), spec(split="validation", size=200)
  phrases = [rendered.make_example(validation, i)[1] for i in range(200)]
  assert not any(rendered.held_out(w) for phrase in phrases for w in phrase.split())   # the training words
  assert rendered._colour_pairs("validation") == rendered._colour_pairs("train")      # and colour pairs
  for kind, size in (("words", (32, 128)), ("glyphs", (32, 32))):
    a = rendered.make_example(spec(kind=kind, height=size[0], width=size[1]), 5)[0]
    b = rendered.make_example(spec(kind=kind, split="validation", height=size[0], width=size[1]), 5)[0]
    assert not np.array_equal(a, b), kind                                       # other images
  assert [rendered.make_example(train, i)[1] for i in range(20)] != phrases[:20]


def colour_centre(image, rgb):
  close = np.all(np.abs(image.astype(int) - rgb) < 40, axis=-1)
  ys, xs = np.nonzero(close)
  return xs.mean(), ys.mean(), len(xs)


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_scene_is_drawn_as_its_caption_says_and_its_answer_follows_from_it(split):
  s = spec(kind="scenes", split=split, size=40, height=64, width=64)
  candidates = rendered.scene_captions(split)
  for i in range(40):
    image, caption, question, answer = rendered.make_example(s, i)
    assert caption in candidates
    words = caption.split()
    colour_a, shape_a, colour_b, shape_b = words[1], words[2], words[-2], words[-1]
    relation = " ".join(words[3:-3])
    ax, ay, na = colour_centre(image, rendered.COLOURS[colour_a])
    bx, by, nb = colour_centre(image, rendered.COLOURS[colour_b])
    assert na > 10 and nb > 10, caption
    dx, dy = rendered.RELATIONS[relation]
    assert (ax - bx) * dx + (ay - by) * dy > 0, (caption, (ax, ay), (bx, by))   # A lies on the relation's side of B
    if question.startswith("what colour"):
      assert answer == colour_a and shape_a in question
    elif question.startswith("what shape"):
      assert answer == shape_b and colour_b in question
    elif question.startswith("what is"):
      assert answer.endswith(f"{colour_a} {shape_a}") and relation in question
    else:
      assert answer == ("yes" if f" {relation} the" in question else "no")
  pairs = {(a, b) for a, b in rendered._colour_pairs(split)}
  assert not pairs & set(rendered._colour_pairs("test" if split == "train" else "train"))


def test_a_written_folder_reads_back_as_a_resumable_source(tmp_path):
  folder = rendered.write_rendered(spec(size=rendered.SHARD + 5), tmp_path / "w")
  manifest = json.loads((folder / "manifest.json").read_text())
  assert sorted(manifest["files"]) == ["shard-00000.json", "shard-00000.npy", "shard-00001.json", "shard-00001.npy"]
  source = data.Rendered(size=rendered.SHARD + 5, folder=folder, shuffle=True, seed=2)
  stream = source()
  first = [next(stream) for _ in range(3)]
  state = data.dumps_state(stream.get_state())
  rest = [next(stream) for _ in range(4)]
  again = source()
  again.set_state(data.loads_state(state))
  for want in rest:
    got = next(again)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
  index = rendered.SHARD + 3   # in the second shard
  example = data.Rendered(size=rendered.SHARD + 5, folder=folder).data()[index]
  made = rendered.make_example(spec(size=rendered.SHARD + 5), index)
  np.testing.assert_array_equal(example[0], made[0])
  assert example[1] == made[1] and len(first) == 3


def test_a_write_stopped_part_way_resumes_to_the_same_bytes(tmp_path):
  s = spec(size=2 * rendered.SHARD + 3)
  whole = rendered.write_rendered(s, tmp_path / "whole")
  part = tmp_path / "part"
  rendered.write_rendered(s, part)
  (part / "manifest.json").unlink()                                    # as if killed before the manifest ...
  (part / "shard-00002.npy").unlink()                                  # ... with the last shard not yet written
  (part / "shard-00001.json").write_text('{"spec": "cut short')        # and one shard's texts damaged
  logged = []
  rendered.write_rendered(s, part, log=logged.append)
  assert logged == [f"rendered 1024 of {s.size} words (train)", f"rendered {s.size} of {s.size} words (train)"]
  for name in json.loads((whole / "manifest.json").read_text())["files"]:
    assert (part / name).read_bytes() == (whole / name).read_bytes(), name


def _hold_lock(folder, ready, release):
  with locked(folder, ".rendered.lock"):
    ready.set()
    release.wait(30)


def test_a_second_writer_of_one_folder_is_refused_naming_the_first(tmp_path):
  folder = tmp_path / "busy"
  context = multiprocessing.get_context("spawn")
  ready, release = context.Event(), context.Event()
  holder = context.Process(target=_hold_lock, args=(folder, ready, release))
  holder.start()
  try:
    assert ready.wait(60)
    with pytest.raises(RunDirectoryError, match=str(holder.pid)):
      rendered.write_rendered(spec(), folder)
  finally:
    release.set()
    holder.join(30)
  assert not (folder / "manifest.json").exists()


def test_bad_specs_are_named():
  with pytest.raises(data.DataError, match="RenderedSpec.kind: expected one of"):
    rendered.RenderedSpec(kind="video")
  with pytest.raises(data.DataError, match="RenderedSpec.size: expected a positive int"):
    rendered.RenderedSpec(size=0)


def test_the_dual_encoders_batches_are_images_in_0_1_and_character_ids_of_the_caption(tmp_path, monkeypatch):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  images, ids = next(data.image_text_pipeline("scenes", "test", size=8, batch_size=4, height=48, width=48)())
  assert images.shape == (4, 48, 48, 3) and images.dtype == np.float32 and 0 <= images.min() < images.max() <= 1
  assert ids.shape == (4, 48) and ids.dtype == np.int32
  captions = {data.caption_tokenizer().decode(row[row > 0]) for row in ids}
  made = {rendered.make_example(rendered.RenderedSpec("scenes", "test", 8, height=48, width=48), i)[1]
          for i in range(8)}
  assert captions <= made
  with pytest.raises(data.DataError, match="more than text_length=5"):
    next(data.image_text_pipeline("scenes", "test", size=8, batch_size=4, height=48, width=48, text_length=5)())


def test_scenes_in_groups_share_colours_and_shapes_and_take_every_relation_in_turn(tmp_path, monkeypatch):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  s = spec(kind="scenes", size=16, height=48, width=48, group=4)
  captions = [rendered.make_example(s, i)[1].split() for i in range(16)]
  for start in range(0, 16, 4):
    group = captions[start:start + 4]
    assert len({(c[1], c[2], c[-2], c[-1]) for c in group}) == 1                  # the same two objects
    assert sorted(" ".join(c[3:-3]) for c in group) == sorted(rendered.RELATIONS)   # each relation once
  images, ids = next(data.image_text_pipeline("scenes", "test", size=8, batch_size=8, height=48, width=48,
                                              group=4, repeat=False)())
  decoded = [data.caption_tokenizer().decode(row[row > 0]).split() for row in ids]
  assert len({(c[1], c[2], c[-2], c[-1]) for c in decoded[:4]}) == 1              # a batch reads whole groups


def test_glyph_batches_are_standardized_images_labelled_by_their_character(tmp_path, monkeypatch):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  images, labels = next(data.glyph_pipeline("test", size=8, batch_size=8, repeat=False)())
  assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32 and labels.dtype == np.int32
  np.testing.assert_allclose(images.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(images.std(axis=(1, 2, 3)), 1, atol=1e-4)
  made = [rendered.make_example(rendered.RenderedSpec("glyphs", "test", 8, height=32, width=32), i) for i in range(8)]
  for image, label in zip(images, labels):   # each image is one made example (shuffled), with its character's index
    pixels = [m[0].astype(np.float32) / 255 for m in made]
    match = [i for i, p in enumerate(pixels) if np.allclose((p - p.mean()) / p.std(), image, atol=1e-4)]
    assert len(match) == 1 and rendered.GLYPHS[label] == made[match[0]][1]
  raw, _ = next(data.glyph_pipeline("test", size=8, batch_size=8, repeat=False, standardize=False)())
  assert 0 <= raw.min() < raw.max() <= 1
