"""data.spoken: log-mel features exact against their definition, examples that say what their texts say, the same
bytes in every fresh process, held-out speakers, and folders written resumably."""

import json

import numpy as np
import pytest

from combinax import data
from combinax.data import shards, spoken

pytest.importorskip("espeakng_loader")


def spec(**kw):
  return spoken.SpokenSpec(**{"kind": "words", "split": "train", "size": 10, **kw})


def test_mel_filters_are_triangles_with_their_peaks_equally_spaced_in_mels():
  filters = spoken.mel_filters(10)
  assert filters.shape == (257, 10) and filters.min() == 0.0 and filters.max() <= 1.0
  hz = np.arange(257) * spoken.SAMPLE_RATE / spoken.N_FFT
  mel = 2595 * np.log10(1 + hz[filters.argmax(axis=0)] / 700)
  step = (2595 * np.log10(1 + spoken.F_MAX / 700) - 2595 * np.log10(1 + spoken.F_MIN / 700)) / 11
  np.testing.assert_allclose(np.diff(mel), step, atol=2595 * np.log10(1 + 43 / 700) + 1)   # within a bin's width
  # Filter 4 at a frequency between its left edge and its centre: the rising side's fraction, by hand.
  edges = 700 * (10 ** (np.linspace(2595 * np.log10(1 + 60 / 700), 2595 * np.log10(1 + 7600 / 700), 12) / 2595) - 1)
  k = int(np.ceil(edges[4] / (spoken.SAMPLE_RATE / spoken.N_FFT)))    # the first bin inside filter 4's rise
  assert hz[k] < edges[5]
  np.testing.assert_allclose(filters[k, 4], (hz[k] - edges[4]) / (edges[5] - edges[4]), rtol=1e-12)


def test_log_mel_is_the_windowed_power_through_the_filters_scaled_as_whispers():
  rng = np.random.default_rng(0)
  wave = rng.normal(0, 0.1, spoken.N_FFT + 3 * spoken.HOP + 17)
  got = spoken.log_mel(wave, 12)
  assert got.shape == (4, 12) and got.dtype == np.float32       # 1 + (len - 512) // 220 frames
  n = np.arange(spoken.N_FFT)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * n / spoken.N_FFT)    # periodic Hann
  frame = wave[2 * spoken.HOP:2 * spoken.HOP + spoken.N_FFT] * window
  dft = np.exp(-2j * np.pi * np.outer(np.arange(257), n) / spoken.N_FFT) @ frame   # by the definition
  energies = np.log10(np.maximum((np.abs(dft) ** 2) @ spoken.mel_filters(12), 1e-10))
  everything = np.log10(np.maximum((np.abs(np.fft.rfft(
      np.lib.stride_tricks.sliding_window_view(wave, 512)[::220][:4] * window)) ** 2) @ spoken.mel_filters(12), 1e-10))
  want = (np.maximum(energies, everything.max() - 8) + 4) / 4
  np.testing.assert_allclose(got[2], want, rtol=1e-5)
  assert float(spoken.log_mel(np.zeros(spoken.N_FFT))[0, 0]) == -1.5   # silence: log10(1e-10) = -10
  with pytest.raises(data.DataError, match="at least 512 samples"):
    spoken.log_mel(np.zeros(100))


def test_a_tone_lights_the_filter_around_its_frequency():
  t = np.arange(spoken.SAMPLE_RATE // 2) / spoken.SAMPLE_RATE
  features = spoken.log_mel(np.sin(2 * np.pi * 1000.0 * t), 40)
  peaks = spoken.mel_filters(40)[int(round(1000.0 * spoken.N_FFT / spoken.SAMPLE_RATE))]
  assert set(features.argmax(axis=1)) <= set(np.flatnonzero(peaks > 0))   # the one or two filters over 1 kHz


def test_a_shard_is_the_same_bytes_in_every_fresh_process_and_says_its_text():
  s = spec(size=6)
  first, again = spoken.make_shard(s, range(0, 6)), spoken.make_shard(s, range(0, 6))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
  for features, text, label, voice in first:
    assert features.shape == (100, 40) and features.dtype == np.float16
    assert spoken.keywords(30)[label] == text and voice in spoken.voices("train")
    assert features.max() > features.mean() + 0.3    # speech stands out of the noise
  assert len({a[0].tobytes() for a in first}) == 6


def test_the_test_split_speaks_with_voices_and_phrases_the_training_split_never_has():
  speakers = {split: {v.split("+")[1] for v in spoken.voices(split)} for split in ("train", "test")}
  assert not speakers["train"] & speakers["test"] and len(speakers["test"]) == len(spoken.VARIANTS) // 5
  phrases = spoken.make_shard(spec(kind="phrases", split="test", frames=300, vocabulary=2000), range(0, 4))
  for _, text, label, voice in phrases:
    assert label == -1 and voice in spoken.voices("test")
    assert any(data.rendered.held_out(word) for word in text.split())


def test_a_written_folder_reads_back_and_a_write_stopped_part_way_resumes_to_the_same_bytes(tmp_path,
                                                                                           monkeypatch):
  monkeypatch.setattr(shards, "SHARD", 4)   # three shards of 4, 4 and 2
  s = spec()
  whole = spoken.write_spoken(s, tmp_path / "whole")
  part = tmp_path / "part"
  spoken.write_spoken(s, part)
  (part / "manifest.json").unlink()                                    # as if killed before the manifest ...
  (part / "shard-00002.npy").unlink()                                  # ... with the last shard not yet written
  (part / "shard-00001.json").write_text('{"spec": "cut short')        # and one shard's texts damaged
  logged = []
  spoken.write_spoken(s, part, log=logged.append)
  assert logged == ["spoke 8 of 10 words (train)", "spoke 10 of 10 words (train)"]
  for name in json.loads((whole / "manifest.json").read_text())["files"]:
    assert (part / name).read_bytes() == (whole / name).read_bytes(), name
  example = data.Spoken(size=10, folder=whole).data()[6]                # in the second shard
  made = spoken.make_shard(s, range(4, 8))[2]
  np.testing.assert_array_equal(example[0], made[0])
  assert example[1:] == tuple(made[1:])


def test_keyword_batches_are_float_frames_and_labels(tmp_path, monkeypatch):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  monkeypatch.setattr(shards, "SHARD", 8)
  frames, labels = next(data.spoken_pipeline(size=8, batch_size=4, vocabulary=5)())
  assert frames.shape == (4, 100, 40) and frames.dtype == np.float32
  assert labels.dtype == np.int32 and set(labels.tolist()) <= set(range(5))


def test_an_audio_prefix_lms_batches_are_frames_the_prompt_and_the_phrase_with_its_loss_alone(tmp_path, monkeypatch):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path))
  monkeypatch.setattr(shards, "SHARD", 8)
  tokenizer = data.caption_tokenizer()
  batch = next(data.spoken_prompt_pipeline(size=8, batch_size=4, frames=300, text_length=48)())
  frames, lengths, ids, targets, weights = batch
  assert frames.shape == (4, 300, 40) and frames.dtype == np.float32 and np.array_equal(ids, targets)
  prompt = tokenizer.encode(data.recipes.HEAR_PROMPT)
  assert lengths.tolist() == [len(prompt)] * 4
  for row, w in zip(ids, weights):
    assert row[:len(prompt)].tolist() == list(prompt)
    answer = row[w > 0]
    assert answer[-1] == tokenizer.eos_id and tokenizer.decode(answer[:-1]).startswith(" ")
    assert w[:len(prompt)].sum() == 0 and not row[len(prompt) + len(answer):].any()


def test_bad_specs_and_a_missing_speech_engine_are_named(monkeypatch):
  with pytest.raises(data.DataError, match="SpokenSpec.kind: expected one of"):
    spoken.SpokenSpec(kind="music")
  with pytest.raises(data.DataError, match="SpokenSpec.frames: expected at least 40"):
    spoken.SpokenSpec(frames=20)
  monkeypatch.setitem(__import__("sys").modules, "espeakng_loader", None)
  with pytest.raises(data.DataError, match=r"pip install combinax\[audio\]"):
    spoken._Speaker()
