"""Ready-made pipelines for the recipes in `configs/`: language modelling, classification and translation on the
bundled corpora (or any corpus of the same shape). Each is gin-configurable with keyword arguments only, so a config
file can say `TrainTask.data = @train/lm_pipeline()` and `train/lm_pipeline.split = "train"`.

Batches follow the Trainer's convention: the model's inputs first, then what the loss takes besides the outputs.
"""

from __future__ import annotations

import numpy as np

from combinax.data.base import DataError, Serial
from combinax.data.batching import Batch, BucketByLength
from combinax.data.files import JSONL
from combinax.data.images import RandomShift
from combinax.data.lm import PackLM
from combinax.data.sources import Corpus, FromList, check_corpus
from combinax.data.rendered import GLYPHS, Rendered
from combinax.data.spoken import Spoken
from combinax.data.tokenizers import CharTokenizer, Tokenizer, tokenizer_for
from combinax.data.transforms import AddLossWeights, Map, Shuffle, Tokenize, TruncateToLength


def corpus_tokenizer(corpus: str = "kjv", kind: str = "sentencepiece", vocab_size: int = 8192) -> Tokenizer:
  """`tokenizer_for(corpus, kind, vocab_size)`, under a name that config files bind."""
  return tokenizer_for(corpus, kind, vocab_size)


def lm_pipeline(corpus: str = "kjv", split: str = "train", text_key: str = "text", tokenizer: Tokenizer | None = None,
                length: int = 128, batch_size: int = 16, shuffle_buffer: int = 1024, seed: int = 0,
                repeat: bool = True, path: str | None = None) -> Serial:
  """Language-model batches `(tokens, tokens, weights)` of `length` tokens: the corpus's texts, tokenized with an
  EOS after each, shuffled, and packed back to back (no token lost; weights 0 only on final padding). `path` reads
  the texts from a JSON-lines file instead (the `text_key` of each line; e.g. a synthetic corpus that
  `combinax-decode --samples` wrote), with `corpus`'s tokenizer unless `tokenizer` is given."""
  tokenizer = tokenizer or tokenizer_for(corpus)
  source = Corpus(corpus, keys=(text_key,), split=split, shuffle=True, seed=seed, repeat=repeat) if path is None \
      else JSONL(path, keys=(text_key,), shuffle=True, seed=seed, repeat=repeat)
  return Serial(
      source,
      Tokenize(tokenizer, keys=0, append_eos=True),
      Shuffle(shuffle_buffer, seed=seed),
      PackLM(length, eos_id=None),
      Batch(batch_size, drop_remainder=True))


def classification_pipeline(corpus: str = "imdb_sentiment", split: str = "train", text_key: str = "text",
                            label_key: str = "label", tokenizer: Tokenizer | None = None, max_length: int = 256,
                            batch_size: int = 32, shuffle_buffer: int = 1024, seed: int = 0,
                            repeat: bool = True) -> Serial:
  """Classification batches `(token ids (padded with 0), labels int32)`, texts cut to `max_length` tokens."""
  tokenizer = tokenizer or tokenizer_for(corpus)
  return Serial(
      Corpus(corpus, keys=(text_key, label_key), split=split, shuffle=True, seed=seed, repeat=repeat),
      Tokenize(tokenizer, keys=0),
      TruncateToLength(max_length, keys=(0,)),
      Map(lambda example: (example[0], np.int32(example[1]))),
      Shuffle(shuffle_buffer, seed=seed),
      Batch(batch_size, drop_remainder=True))


def translation_pipeline(corpus: str = "bible_en_es", split: str = "train", source_key: str = "en",
                         target_key: str = "es", tokenizer: Tokenizer | None = None, max_length: int = 64,
                         boundaries=(16, 32, 64), batch_sizes=(64, 32, 16), shuffle_buffer: int = 1024, seed: int = 0,
                         repeat: bool = True) -> Serial:
  """Translation batches `(source ids, target ids, target ids, target weights)` for an encoder-decoder, bucketed by
  length (a batch size per boundary; the last boundary >= `max_length`), both sides cut to `max_length` tokens (an
  EOS ends every uncut text)."""
  if max(boundaries) < max_length:
    raise DataError(f"translation_pipeline: the last boundary {max(boundaries)} must be >= max_length {max_length}")
  tokenizer = tokenizer or tokenizer_for(corpus)
  return Serial(
      Corpus(corpus, keys=(source_key, target_key), split=split, shuffle=True, seed=seed, repeat=repeat),
      Tokenize(tokenizer, keys=(0, 1), append_eos=True),
      TruncateToLength(max_length, keys=(0, 1)),
      Shuffle(shuffle_buffer, seed=seed),
      Map(lambda example: (example[0], example[1], example[1])),    # source, target (model input), target (loss)
      BucketByLength(list(boundaries), list(batch_sizes), length_keys=(0, 1)),
      AddLossWeights(key=2))


VALIDATION_EVERY = 5   # split="validation": every 5th training example (the corpora cut their test split alike)


def image_pipeline(corpus: str = "digits", split: str = "train", image_key: str = "image", label_key: str = "label",
                   shape=(8, 8, 1), scale: float = 1 / 16, batch_size: int = 64, shuffle_buffer: int = 512,
                   seed: int = 0, repeat: bool = True, max_shift: int = 0) -> Serial:
  """Image classification batches `(images float32 (batch, *shape), labels int32)` from a corpus of flat pixel
  lists (the bundled 8x8 `digits`), pixels multiplied by `scale`; `max_shift` > 0 moves each image by up to that
  many pixels (`RandomShift`, seeded: training augmentation).

  `split` is one of the corpus's, or "fit" / "validation": its training split without / with only every
  `VALIDATION_EVERY`-th example (row i with i % 5 == 4), to choose hyperparameters on before the test split reports.
  """
  shape = tuple(shape)

  def to_arrays(example):
    return np.asarray(example[0], np.float32).reshape(shape) * np.float32(scale), np.int32(example[1])

  if split in ("fit", "validation"):
    rows = [row for i, row in enumerate(check_corpus(corpus).load(corpus, split="train"))
            if (i % VALIDATION_EVERY == VALIDATION_EVERY - 1) == (split == "validation")]
    source = FromList(rows, keys=(image_key, label_key), shuffle=True, seed=seed, repeat=repeat)
  else:
    source = Corpus(corpus, keys=(image_key, label_key), split=split, shuffle=True, seed=seed, repeat=repeat)
  return Serial(
      source,
      Map(to_arrays),
      RandomShift(max_shift, seed=seed) if max_shift else [],
      Shuffle(shuffle_buffer, seed=seed),
      Batch(batch_size, drop_remainder=True))


def glyph_pipeline(split: str = "train", size: int = 50_000, batch_size: int = 128, height: int = 32, width: int = 32,
                   seed: int = 0, data_seed: int = 0, repeat: bool = True, shuffle_buffer: int = 1024,
                   standardize: bool = True) -> Serial:
  """Image classification batches `(images float32 (batch, height, width, 3), labels int32)` of rendered characters
  (`data.Rendered(kind="glyphs")`, written first if missing): the label is the character's index in
  `data.rendered.GLYPHS` (36 classes). "validation" images are drawn like the training ones from their own seeds.
  Pixels are in [0, 1], or with `standardize` each image less its mean, over its standard deviation (the colours of
  ink and paper are random: what is left is the contrast, which is the character)."""

  def to_arrays(example):
    image = np.asarray(example[0], np.float32) / np.float32(255)
    if standardize:
      image = (image - image.mean()) / np.maximum(image.std(), np.float32(1 / 255))
    return image, np.int32(GLYPHS.index(example[1]))

  return _shuffled_batches(Rendered("glyphs", split, size, data_seed=data_seed, height=height, width=width,
                                    shuffle=True, seed=seed, repeat=repeat),
                           to_arrays, shuffle_buffer, seed, batch_size)


CAPTION_CHARS = "abcdefghijklmnopqrstuvwxyz ?"   # every character a rendered text, caption or question uses


def caption_tokenizer() -> CharTokenizer:
  """One id per character of `CAPTION_CHARS` (0 pad, 1 EOS, 2 unknown): every rendered word, held out or not, has
  its ids."""
  return CharTokenizer(CAPTION_CHARS)


def caption_ids(text: str, text_length: int, tokenizer: CharTokenizer | None = None) -> np.ndarray:
  """`text`'s character ids padded with 0 to `text_length` (a DataError names a longer caption)."""
  ids = (tokenizer or caption_tokenizer()).encode(text)
  if len(ids) > text_length:
    raise DataError(f"image_text_pipeline: the caption {text!r} has {len(ids)} characters, more than "
                    f"text_length={text_length}")
  return np.pad(ids, (0, text_length - len(ids)))


def image_text_pipeline(kind: str = "words", split: str = "train", size: int = 10_000, batch_size: int = 64,
                        text_length: int = 48, seed: int = 0, data_seed: int = 0, repeat: bool = True,
                        shuffle_buffer: int = 512, height: int = 32, width: int = 128, group: int = 1) -> Serial:
  """(images float32 (batch, height, width, 3) in [0, 1], caption ids int32 (batch, text_length)) from rendered
  words (the phrase) or scenes (the caption) of `data.Rendered` (written first if missing): a dual encoder's
  batches. Captions are character ids (`caption_tokenizer`), padded with 0; a longer one raises a DataError.
  With `group` > 1 (scenes) the examples are read in their order, so each batch holds whole runs of `group` scenes
  that differ only in their relation (`data.rendered`: hard negatives); the examples are drawn at random already.
  """
  tokenizer = caption_tokenizer()

  def to_arrays(example):
    return np.asarray(example[0], np.float32) / np.float32(255), caption_ids(example[1], text_length, tokenizer)

  return Serial(
      Rendered(kind, split, size, data_seed=data_seed, height=height, width=width, group=group,
               shuffle=group == 1, seed=seed, repeat=repeat),
      Map(to_arrays),
      Shuffle(shuffle_buffer, seed=seed) if group == 1 else [],
      Batch(batch_size, drop_remainder=True))


READ_PROMPT = "what does it say?"   # a rendered phrase's prompt (its answer is the phrase), in caption characters


def prompt_and_answer(example: tuple) -> tuple[str, str]:
  """A rendered example's (prompt, answer) for an image-prefix LM: the question and its answer for a scene,
  `READ_PROMPT` and the phrase for words."""
  return (example[2], example[3]) if len(example) == 4 else (READ_PROMPT, example[1])


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> np.ndarray:
  """The ids an image-prefix LM reads before its answer (the answer follows after a space)."""
  return np.asarray(tokenizer.encode(prompt), np.int32)


def _shuffled_batches(source, to_arrays, shuffle_buffer: int, seed: int, batch_size: int) -> Serial:
  """A made dataset's examples (a shuffled source), as arrays, shuffled again in a buffer, batched."""
  return Serial(source, Map(to_arrays), Shuffle(shuffle_buffer, seed=seed), Batch(batch_size, drop_remainder=True))


def _prompt_and_answer_ids(tokenizer: Tokenizer, prompt: str, answer: str, text_length: int, where: str) -> tuple:
  """(prompt length, ids, weights): the prompt's ids, then " " + the answer's and an EOS, padded with 0 to
  `text_length`; the weights are 1 on the answer and its EOS only. A longer text raises a DataError naming it."""
  asked = prompt_ids(tokenizer, prompt)
  eos = getattr(tokenizer, "eos_id", None)
  told = np.concatenate([np.asarray(tokenizer.encode(" " + answer), np.int32),
                         np.asarray([] if eos is None else [eos], np.int32)])
  ids = np.concatenate([asked, told])
  if len(ids) > text_length:
    raise DataError(f"{where}: {prompt!r} and its answer {answer!r} take {len(ids)} tokens, more than "
                    f"text_length={text_length}")
  weights = np.zeros(text_length, np.float32)
  weights[len(asked):len(ids)] = 1
  return np.int32(len(asked)), np.pad(ids, (0, text_length - len(ids))), weights


def image_prompt_pipeline(kind: str = "words", split: str = "train", tokenizer: Tokenizer | None = None,
                          size: int = 10_000, batch_size: int = 16, text_length: int = 24, seed: int = 0,
                          data_seed: int = 0, repeat: bool = True, shuffle_buffer: int = 512, height: int = 32,
                          width: int = 128) -> Serial:
  """(images float32 (batch, height, width, 3) in [0, 1], prompt lengths int32 (batch,), token ids (batch,
  text_length), the same ids as targets, weights) from rendered words or scenes (`data.Rendered`): an
  `ImagePrefixLM`'s batches. Each text is the prompt (`prompt_and_answer`), then " " + the answer and an EOS,
  padded with 0; the weights are 1 on the answer and its EOS only, so the loss is the answer's. A longer text
  raises a DataError naming it. `tokenizer` defaults to `caption_tokenizer()` (characters)."""
  tokenizer = tokenizer or caption_tokenizer()

  def to_arrays(example):
    length, ids, weights = _prompt_and_answer_ids(tokenizer, *prompt_and_answer(example), text_length,
                                                  "image_prompt_pipeline")
    return np.asarray(example[0], np.float32) / np.float32(255), length, ids, ids, weights

  return _shuffled_batches(Rendered(kind, split, size, data_seed=data_seed, height=height, width=width,
                                    shuffle=True, seed=seed, repeat=repeat),
                           to_arrays, shuffle_buffer, seed, batch_size)


def spoken_pipeline(split: str = "train", size: int = 10_000, batch_size: int = 64,
                    seed: int = 0, data_seed: int = 0, repeat: bool = True, shuffle_buffer: int = 512,
                    frames: int = 100, n_mels: int = 40, vocabulary: int = 30) -> Serial:
  """(log-mel frames float32 (batch, frames, n_mels), labels int32 (batch,)) of spoken words (`data.Spoken`,
  written first if missing): keyword classification among the `vocabulary` most frequent KJV words; the test
  split speaks with voices the training split never has."""

  def to_arrays(example):
    return np.asarray(example[0], np.float32), np.int32(example[2])

  return _shuffled_batches(Spoken("words", split, size, data_seed=data_seed, frames=frames, n_mels=n_mels,
                                  vocabulary=vocabulary, shuffle=True, seed=seed, repeat=repeat),
                           to_arrays, shuffle_buffer, seed, batch_size)


HEAR_PROMPT = "what is said?"   # a spoken phrase's prompt (its answer is the phrase)


def spoken_prompt_pipeline(kind: str = "phrases", split: str = "train", tokenizer: Tokenizer | None = None,
                           size: int = 10_000, batch_size: int = 16, text_length: int = 24, seed: int = 0,
                           data_seed: int = 0, repeat: bool = True, shuffle_buffer: int = 512, frames: int = 300,
                           n_mels: int = 40, vocabulary: int = 2_000) -> Serial:
  """(log-mel frames float32 (batch, frames, n_mels), prompt lengths, token ids, the same ids as targets, weights)
  of spoken phrases (`data.Spoken`): an audio-prefix LM's batches (`ImagePrefixLM` with an `AudioEncoder`), as
  `image_prompt_pipeline`'s: the prompt `HEAR_PROMPT`, then " " + the phrase and an EOS, the loss on the phrase."""
  tokenizer = tokenizer or caption_tokenizer()

  def to_arrays(example):
    length, ids, weights = _prompt_and_answer_ids(tokenizer, HEAR_PROMPT, example[1], text_length,
                                                  "spoken_prompt_pipeline")
    return np.asarray(example[0], np.float32), length, ids, ids, weights

  return _shuffled_batches(Spoken(kind, split, size, data_seed=data_seed, frames=frames, n_mels=n_mels,
                                  vocabulary=vocabulary, shuffle=True, seed=seed, repeat=repeat),
                           to_arrays, shuffle_buffer, seed, batch_size)
