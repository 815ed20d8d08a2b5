"""Decoding to 16 kHz mono int16, and tiling to the 10 s clip; files that are not audio, or
hostile, are one line each, refused before they cost memory or time."""

import os
import struct

import numpy as np
import pytest
import soundfile as sf

from vggsound_jax.audio import decode as audio
from vggsound_jax.audio.decode import CLIP_SAMPLES, AudioDecodeError, decode_audio, load_clip, to_clip
from vggsound_jax.testing.media import write_mp4

FS = 16000


def _tone(seconds, fs=FS, freq=440.0, channels=1):
  t = np.arange(int(seconds * fs)) / fs
  x = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * np.random.default_rng(0).normal(size=t.size)
  x = np.clip(x * 32767, -32768, 32767).astype(np.int16)
  return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_lossless_16k_mono_is_sample_exact(tmp_path, ext):
  x = _tone(1.3)
  sf.write(tmp_path / f"a.{ext}", x, FS, subtype="PCM_16")
  np.testing.assert_array_equal(decode_audio(tmp_path / f"a.{ext}"), x)


def test_stereo_44k_is_resampled_to_16k_mono(tmp_path):
  x = _tone(2.0, fs=44100, channels=2)
  sf.write(tmp_path / "s.wav", x, 44100, subtype="PCM_16")
  out = decode_audio(tmp_path / "s.wav")
  assert out.dtype == np.int16
  assert abs(out.size - 2 * FS) <= 64
  reference = _tone(2.0)  # the same tone, made at 16 kHz
  n = min(out.size, reference.size) - 200
  corr = np.corrcoef(out[100:n].astype(float), reference[100:n].astype(float))[0, 1]
  assert corr > 0.95


def test_mp4_with_aac_audio_decodes(tmp_path):
  x = _tone(1.0)
  write_mp4(tmp_path / "v.mp4", x)
  out = decode_audio(tmp_path / "v.mp4")
  assert out.dtype == np.int16 and abs(out.size - FS) <= 2048
  spectrum = np.abs(np.fft.rfft(out.astype(float)))
  assert abs(np.argmax(spectrum) * FS / out.size - 440) < 5


def test_missing_and_corrupt_files_give_one_line_errors(tmp_path):
  with pytest.raises(AudioDecodeError, match="no such file") as e:
    decode_audio(tmp_path / "missing.wav")
  assert str(tmp_path / "missing.wav") in str(e.value)
  (tmp_path / "bad.wav").write_bytes(np.random.default_rng(0).bytes(4000))
  (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
  for name in ("bad.wav", "bad.mp4"):
    with pytest.raises(AudioDecodeError) as e:
      decode_audio(tmp_path / name)
    assert str(e.value).startswith(str(tmp_path / name)) and "\n" not in str(e.value)


def test_zero_length_audio_is_an_error(tmp_path):
  sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), FS, subtype="PCM_16")
  with pytest.raises(AudioDecodeError, match="no audio samples"):
    decode_audio(tmp_path / "empty.wav")


def test_to_clip_is_the_originals_tiling_for_clips_of_1s_or_more():
  x = np.arange(-5000, 15000, dtype=np.int16)  # 1.25 s
  np.testing.assert_array_equal(to_clip(x), np.tile(x, 10)[:160000])
  long = np.arange(200000).astype(np.int16)
  np.testing.assert_array_equal(to_clip(long), long[:160000])


def test_short_clips_keep_tiling_to_10s():
  x = np.arange(1, 8001, dtype=np.int16)  # 0.5 s: the original would stop at 5 s
  clip = to_clip(x)
  assert clip.size == CLIP_SAMPLES
  np.testing.assert_array_equal(clip, np.tile(x, 20))


def test_load_clip(tmp_path):
  x = _tone(0.7)
  sf.write(tmp_path / "c.wav", x, FS, subtype="PCM_16")
  clip = load_clip(tmp_path / "c.wav")
  assert clip.shape == (CLIP_SAMPLES,)
  np.testing.assert_array_equal(clip[: x.size], x)


def test_any_file_name_works(tmp_path):
  x = _tone(0.5)
  for ext in ("wav", "mp4"):  # soundfile and PyAV
    name = tmp_path / os.fsdecode(b"caf\xe9 \xff." + ext.encode())
    if ext == "wav":
      sf.write(os.fsencode(name), x, FS, subtype="PCM_16")
      np.testing.assert_array_equal(decode_audio(name), x)
    else:
      write_mp4(tmp_path / "v.mp4", x)
      os.rename(tmp_path / "v.mp4", name)
      assert abs(decode_audio(name).size - x.size) <= 2048


def test_what_is_not_a_readable_file_is_named(tmp_path):
  (tmp_path / "folder.wav").mkdir()
  os.mkfifo(tmp_path / "pipe.wav")  # reading it would block forever
  for name, problem in (("folder.wav", "is a directory"), ("pipe.wav", "not a regular file")):
    with pytest.raises(AudioDecodeError) as e:
      decode_audio(tmp_path / name)
    assert str(e.value) == f"{tmp_path / name}: {problem}"


def _forbid_decoding(monkeypatch):
  def forbidden(*args, **kwargs):
    raise AssertionError("decoding started")

  monkeypatch.setattr(audio, "MonoResampler", forbidden)
  monkeypatch.setattr(audio.sf, "blocks", forbidden)


def test_absurd_headers_are_refused_before_decoding(tmp_path, monkeypatch):
  # 64 KB whose header claims 1 Hz: 9 hours, which resampled to 16 kHz would take 3.3 GB.
  sf.write(tmp_path / "one_hz.wav", np.zeros(32000, np.int16), FS, subtype="PCM_16")
  data = bytearray((tmp_path / "one_hz.wav").read_bytes())
  data[24:32] = struct.pack("<II", 1, 2)  # sample rate, bytes per second
  (tmp_path / "one_hz.wav").write_bytes(bytes(data))
  (tmp_path / "one_hz.bin").write_bytes(bytes(data))  # the same bytes, found by PyAV
  sf.write(tmp_path / "fast.wav", np.zeros(100, np.int16), audio.MAX_SAMPLE_RATE + 1000, subtype="PCM_16")
  sf.write(tmp_path / "many.wav", np.zeros((100, audio.MAX_CHANNELS + 1), np.int16), FS, subtype="PCM_16")
  _forbid_decoding(monkeypatch)
  for name, problem in (
    ("one_hz.wav", "sample rate 1 Hz is outside 1000-768000 Hz"),
    ("one_hz.bin", "sample rate 1 Hz is outside 1000-768000 Hz"),
    ("fast.wav", "sample rate 769000 Hz is outside 1000-768000 Hz"),
    ("many.wav", "65 channels (1 to 64 are read)"),
  ):
    with pytest.raises(AudioDecodeError) as e:
      decode_audio(tmp_path / name)
    assert str(e.value) == f"{tmp_path / name}: {problem}"


@pytest.mark.parametrize("subtype,value", [("FLOAT", np.nan), ("DOUBLE", np.inf), ("FLOAT", -np.inf)])
def test_non_finite_samples_are_a_bad_clip(tmp_path, subtype, value):
  x = _tone(0.5).astype(np.float32) / 32768
  x[1234] = value
  sf.write(tmp_path / "f.wav", x, FS, subtype=subtype)
  with pytest.raises(AudioDecodeError, match="non-finite samples"):
    decode_audio(tmp_path / "f.wav")
  x[1234] = 0.0  # the same file, finite, decodes
  sf.write(tmp_path / "f.wav", x, FS, subtype=subtype)
  assert decode_audio(tmp_path / "f.wav").size == x.size


def test_a_build_skips_and_counts_non_finite_clips(tmp_path):
  from vggsound_jax.datasets.build import decode_clip

  x = np.zeros(FS, np.float32)
  x[5] = np.nan
  sf.write(tmp_path / "nan.wav", x, FS, subtype="FLOAT")
  assert decode_clip(str(tmp_path / "nan.wav")) == (None, "non-finite samples")


def test_only_the_first_max_seconds_are_decoded(tmp_path):
  x = _tone(3.0, fs=44100, channels=2)
  sf.write(tmp_path / "s.wav", x, 44100, subtype="PCM_16")
  whole = decode_audio(tmp_path / "s.wav")
  first = decode_audio(tmp_path / "s.wav", max_seconds=1.0)
  # The same samples as decoding everything: the resampler is flushed well past the cut.
  np.testing.assert_array_equal(first, whole[:FS])
  native = _tone(3.0)
  sf.write(tmp_path / "n.wav", native, FS, subtype="PCM_16")
  np.testing.assert_array_equal(decode_audio(tmp_path / "n.wav", max_seconds=0.5), native[: FS // 2])
  # The default cap, and the 10 s that the model sees.
  long = np.tile(native, int(audio.MAX_SECONDS // 3) + 2)
  sf.write(tmp_path / "long.wav", long, FS, subtype="PCM_16")
  assert decode_audio(tmp_path / "long.wav").size == audio.MAX_SECONDS * FS
  np.testing.assert_array_equal(load_clip(tmp_path / "long.wav"), long[:CLIP_SAMPLES])


def test_stream_audio_reads_a_long_file_in_bounded_memory(tmp_path):
  import tracemalloc

  rate, seconds = 22050, 120
  x = _tone(seconds, fs=rate, channels=2)
  sf.write(tmp_path / "long.wav", x, rate, subtype="PCM_16")
  del x
  tracemalloc.start()
  try:
    sizes = [chunk.size for chunk in audio.stream_audio(tmp_path / "long.wav", chunk_seconds=2.0)]
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert sizes[:-1] == [2 * FS] * (len(sizes) - 1) and sum(sizes) == seconds * FS  # no 60 s cap
  assert peak < 2_000_000  # the output alone is 3.8 MB, the file 10.6 MB


def test_stream_audio_errors_come_from_the_iterator(tmp_path):
  chunks = audio.stream_audio(tmp_path / "missing.wav")
  with pytest.raises(AudioDecodeError, match="no such file"):
    next(chunks)
  with pytest.raises(ValueError, match="chunk_seconds"):
    audio.stream_audio(tmp_path / "missing.wav", chunk_seconds=0)


@pytest.mark.parametrize(
  "samples,rate,problem",
  [
    (np.zeros(100, np.int8), FS, "dtype int8"),
    (np.zeros((10, 2, 2), np.int16), FS, "shape"),
    (np.zeros((10, audio.MAX_CHANNELS + 1), np.int16), FS, "65 channels"),
    (np.zeros(100, np.int16), 500, "sample rate 500 Hz"),
    (np.zeros(100, np.int16), 44100.0, "not an integer"),
    (np.array([0.0, np.nan], np.float32), FS, "non-finite"),
  ],
)
def test_convert_waveform_refuses_what_is_not_a_waveform(samples, rate, problem):
  with pytest.raises(ValueError, match=problem) as e:
    audio.convert_waveform(samples, rate)
  assert "\n" not in str(e.value)


def test_convert_waveform_keeps_16k_mono_int16_and_converts_the_rest():
  x = _tone(0.5)
  np.testing.assert_array_equal(audio.convert_waveform(x, FS), x)
  out = audio.convert_waveform(_tone(0.5, fs=44100, channels=2), 44100)
  assert out.dtype == np.int16 and out.shape == (FS // 2,)
