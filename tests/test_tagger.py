"""vggsound_jax.Tagger: windows over recordings of any length, in files or in memory, checked
against a PyTorch model fed by the original scipy front end on the same windows."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf

from vggsound_jax import Tagger
from vggsound_jax.audio import decode as audio
from vggsound_jax.audio import overview
from vggsound_jax.serving import tagger
from vggsound_jax.testing import torch_reference

FS = 16000


def _sound(seconds, seed):
  """Tones that change every second, in noise: windows at different places differ."""
  rng = np.random.default_rng(seed)
  n = int(seconds * FS)
  pitch = np.repeat(rng.uniform(100, 3000, int(np.ceil(seconds))), FS)[:n]
  x = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / FS) + rng.normal(0, 0.02, n)
  return np.clip(x * 32767, -32768, 32767).astype(np.int16)


@pytest.fixture(name="tiny")
def tiny_fixture(tiny_converted):
  return tiny_converted


@pytest.mark.parametrize(
  ("seconds", "window", "hop", "expected"),
  [
    (3.5, 10, 10, [0]),  # shorter than a window: one window, tiled
    (10.0, 10, 10, [0]),
    (10.02, 10, 10, [0]),  # a VGGSound clip a little over 10 s: its first 10 s, as the original
    (30.0, 10, 10, [0, 10, 20]),
    (25.0, 10, 10, [0, 10, 15]),  # a 5 s tail: one more window, ending at the end
    (20.5, 10, 10, [0, 10]),  # a 0.5 s tail (under a tenth of a window) is left out
    (25.0, 10, 5, [0, 5, 10, 15]),
    (24.0, 4, 8, [0, 8, 16, 20]),  # gaps between windows; the last window ends at the end
  ],
)
def test_window_starts(seconds, window, hop, expected):
  starts = tagger.window_starts(round(seconds * FS), window * FS, hop * FS)
  assert starts == [s * FS for s in expected]


@pytest.mark.parametrize("seed", range(6))
def test_streamed_windows_are_the_slices_of_the_whole_recording(seed):
  rng = np.random.default_rng(seed)
  window, hop = int(rng.integers(50, 400)), int(rng.integers(20, 500))
  samples = rng.integers(-(2**15), 2**15, int(rng.integers(1, 3000)), dtype=np.int16)
  cuts = np.sort(rng.integers(0, samples.size, int(rng.integers(0, 12))))
  items = list(tagger._windows(np.split(samples, cuts), window, hop))
  assert isinstance(items[-1], tagger._End) and items[-1].num_samples == samples.size
  windows = items[:-1]
  assert [w.start for w in windows] == tagger.window_starts(samples.size, window, hop)
  for w in windows:
    if samples.size <= window:  # tiled, as the original tiles a short clip
      np.testing.assert_array_equal(w.clip, np.tile(samples, window // samples.size + 1)[:window])
    else:
      np.testing.assert_array_equal(w.clip, samples[w.start : w.start + window])


def test_long_file_windows_match_the_original_on_each_window(tiny, tmp_path):
  model, tmp = tiny
  samples = _sound(25.0, seed=1)
  path = tmp_path / "field.wav"
  sf.write(path, samples, FS, subtype="PCM_16")
  tags = Tagger(tmp / "model", backend="jax", batch_size=2, hop=7.5).tag(path)
  np.testing.assert_allclose(tags.starts, [0.0, 7.5, 15.0])
  np.testing.assert_allclose(tags.ends, [10.0, 17.5, 25.0])
  assert tags.duration == 25.0 and tags.source == str(path)
  expected = torch_reference.original_probs(model, [samples[int(s * FS) : int(s * FS) + 10 * FS] for s in tags.starts])
  np.testing.assert_allclose(tags.window_probs, expected, atol=1e-4)
  np.testing.assert_allclose(tags.probs, expected.mean(axis=0), atol=1e-4)
  np.testing.assert_allclose(tags.max_probs, expected.max(axis=0), atol=1e-4)
  assert tags.window_embeddings.shape == (3, 32)
  np.testing.assert_allclose(tags.embedding, tags.window_embeddings.mean(axis=0))
  top = tags.top(3)
  assert [label for label, _ in top] == [tags.class_names[i] for i in np.argsort(-expected.mean(axis=0))[:3]]


def test_waveforms_in_memory_are_tagged_as_their_files(tiny, tmp_path):
  _, tmp = tiny
  t = Tagger(tmp / "model", backend="jax", batch_size=4)
  rng = np.random.default_rng(0)
  stereo = (0.3 * rng.standard_normal((44100 * 3, 2))).clip(-1, 1).astype(np.float32)
  sf.write(tmp_path / "stereo.wav", stereo, 44100, subtype="FLOAT")
  from_file, in_memory = t.tag(tmp_path / "stereo.wav"), t.tag(stereo, sample_rate=44100)
  assert in_memory.source == tagger.IN_MEMORY
  np.testing.assert_array_equal(in_memory.window_probs, from_file.window_probs)
  with pytest.raises(ValueError, match="sample_rate"):
    t.tag(stereo)


def test_files_in_order_with_bad_ones_in_place(tiny, tmp_path):
  _, tmp = tiny
  good = []
  for i, seconds in enumerate([2.0, 12.0, 31.0, 4.0]):
    good.append(tmp_path / f"{i}.wav")
    sf.write(good[-1], _sound(seconds, seed=10 + i), FS, subtype="PCM_16")
  (tmp_path / "bad.mp4").write_bytes(b"\x00garbage" * 100)
  files = [good[0], tmp_path / "missing.wav", good[1], good[2], tmp_path / "bad.mp4", good[3]]
  t = Tagger(tmp / "model", backend="jax", batch_size=3, decode_threads=2)
  results = list(t.tag_files(files, errors="return"))
  assert [isinstance(r, audio.AudioDecodeError) for r in results] == [False, True, False, False, True, False]
  assert str(results[1]) == f"{tmp_path / 'missing.wav'}: no such file"
  tagged = [r for r in results if not isinstance(r, Exception)]
  assert [r.source for r in tagged] == [str(p) for p in good]
  assert [len(r.starts) for r in tagged] == [1, 2, 4, 1]
  # Batching across files changes nothing: each file alone gives the same numbers.
  for r, path in zip(tagged, good):
    np.testing.assert_allclose(r.window_probs, t.tag(path).window_probs, atol=1e-6)
  with pytest.raises(audio.AudioDecodeError, match="no such file"):
    list(t.tag_files(files))


# Measured in a process of its own: tracemalloc counts every thread of the process, and a test
# process holds threads other tests left (loaders, checkpoint writers) that allocate meanwhile.
_MEASURE_PEAKS = """
import json, sys, tracemalloc
from vggsound_jax import Tagger
model, spectrogram, warm, *paths = sys.argv[1:]
t = Tagger(model, backend="jax", batch_size=4, spectrogram=spectrogram == "1")
t.tag(warm)  # compiled, and a file decoded, first: made once per process, not the recording's
out = []
for path in paths:
  tracemalloc.start()
  tags = t.tag(path)
  out.append([tracemalloc.get_traced_memory()[1], len(tags.starts), tags.duration, tags.spectrogram is not None])
  tracemalloc.stop()
print(json.dumps(out))
"""


# With the coarse spectrogram for plots too: it must not grow with the recording either.
@pytest.mark.slow
@pytest.mark.parametrize("spectrogram", [False, True])
def test_a_long_recording_takes_bounded_memory(tiny, tmp_path, spectrogram):
  _, tmp = tiny
  warm = tmp_path / "warm.wav"
  sf.write(warm, _sound(25.0, seed=99), FS, subtype="PCM_16")
  paths = {}
  for minutes in (2, 12):
    paths[minutes] = tmp_path / f"{minutes}.wav"
    with sf.SoundFile(paths[minutes], "w", FS, 1, subtype="PCM_16") as f:
      for i in range(minutes):
        f.write(_sound(60.0, seed=i))
  args = [str(tmp / "model"), str(int(spectrogram)), str(warm), *(str(paths[m]) for m in (2, 12))]
  result = subprocess.run(
    [sys.executable, "-c", _MEASURE_PEAKS, *args], capture_output=True, text=True, encoding="utf-8", check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  peaks = {}
  for minutes, (peak, windows, duration, has_spectrogram) in zip((2, 12), json.loads(result.stdout.splitlines()[-1])):
    peaks[minutes] = peak
    assert windows == minutes * 6 and duration == minutes * 60
    assert has_spectrogram == spectrogram
  # Six times the audio, the same memory: a few windows and the batch, not the file (23 MB);
  # the spectrogram adds its 2 MB of columns and the temporary arrays of its transform.
  file_bytes = 12 * 60 * FS * 2
  assert peaks[12] < 1.2 * peaks[2] and peaks[12] < file_bytes * (2 / 3 if spectrogram else 1 / 3), peaks


def test_the_spectrogram_for_plots_is_the_whole_recordings(tiny, tmp_path):
  _, tmp = tiny
  samples = _sound(23.0, seed=4)
  path = tmp_path / "field.wav"
  sf.write(path, samples, FS, subtype="PCM_16")
  assert Tagger(tmp / "model", backend="jax").tag(path).spectrogram is None  # only when asked for
  t = Tagger(tmp / "model", backend="jax", batch_size=2, hop=5.0, spectrogram=True)
  whole = overview.OverviewBuilder()
  whole.add(samples)  # at once, not streamed in decoded chunks
  expected = whole.finish()
  for tags in (t.tag(path), t.tag(samples, sample_rate=FS)):
    assert tags.spectrogram.frames_per_column == expected.frames_per_column
    np.testing.assert_allclose(tags.spectrogram.power_db, expected.power_db, atol=1e-3)
  picture = tags.plot(tmp_path / "field.png", k=3)
  assert picture == tmp_path / "field.png" and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_one_line(tiny):
  _, tmp = tiny
  with pytest.raises(ValueError, match="window of 0.5 s"):
    Tagger(tmp / "model", window=0.5)
  with pytest.raises(ValueError, match="hop"):
    Tagger(tmp / "model", hop=0)
  with pytest.raises(ValueError, match="empty waveform"):
    Tagger(tmp / "model", backend="jax").tag(np.zeros(0, np.int16), sample_rate=FS)


def test_files_are_opened_a_bounded_number_ahead():
  opened, consumed, most_ahead = [0], [0], [0]
  lock = threading.Lock()

  def jobs():
    for i in range(100):
      with lock:
        opened[0] += 1
        most_ahead[0] = max(most_ahead[0], opened[0] - consumed[0])
      clip = np.full(FS, i, np.int16)
      yield f"{i}.wav", lambda clip=clip: tagger._windows([clip], FS, FS)

  t = object.__new__(Tagger)
  t.decode_threads = 3
  sources = []
  for _, source, item in t._decoded(jobs()):
    if isinstance(item, tagger._End):
      with lock:
        consumed[0] += 1
      sources.append(source)
  assert sources == [f"{i}.wav" for i in range(100)]
  assert most_ahead[0] <= 4  # the threads' files, and the one being handed over
