"""Pictures (vggsound_jax/plots.py) and the coarse spectrogram behind the timeline
(audio/overview.py): each picture rendered from generated data is a PNG of the figure's size
with the expected names in its texts; the spectrogram is scipy's, pooled; memory is bounded."""

import dataclasses
import statistics
import struct

import numpy as np
import pytest
import scipy.signal
from matplotlib.collections import QuadMesh
from matplotlib.text import Text

from vggsound_jax import metrics, plots
from vggsound_jax.audio import overview
from vggsound_jax.errors import PathError
from vggsound_jax.serving.tagger import Tags, window_starts

FS = 16000


def _png_size(path):
  """(width, height) from the PNG's IHDR chunk."""
  data = path.read_bytes()
  assert data[:8] == plots.PNG_SIGNATURE and data[12:16] == b"IHDR"
  return struct.unpack(">II", data[16:24])


def _texts(fig):
  """Every string drawn in a figure (tick labels are filled in when it is drawn)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  FigureCanvasAgg(fig).draw()
  return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def _expected_size(fig):
  width, height = fig.get_size_inches() * plots.DPI
  return round(width), round(height)


def _scipy_bands_db(samples):
  """The reference: scipy's spectrogram of the original's front end, bins averaged in pairs, in dB."""
  _, _, sxx = scipy.signal.spectrogram(samples / 32768.0, fs=FS, nperseg=512, noverlap=353)
  bands = sxx[:256].reshape(overview.BANDS, 2, -1).mean(axis=1)
  return bands, 10 * np.log10(bands + 1e-7)


def _noise_with_tones(seconds, seed):
  rng = np.random.default_rng(seed)
  n = int(seconds * FS)
  t = np.arange(n) / FS
  x = 0.2 * np.sin(2 * np.pi * rng.uniform(200, 4000) * t) * (t % 1 < 0.5) + rng.normal(0, 0.01, n)
  return np.clip(x * 32767, -32768, 32767).astype(np.int16)


# ----------------------------------------------------------------------------- overview


@pytest.mark.parametrize("seed", range(3))
def test_overview_is_scipys_spectrogram_whatever_the_chunks(seed):
  rng = np.random.default_rng(seed)
  samples = _noise_with_tones(1.3, seed)
  cuts = np.sort(rng.integers(0, samples.size, 6))  # chunks of any size, empty and sub-frame ones too
  builder = overview.OverviewBuilder(max_columns=4096)
  for chunk in np.split(samples, np.sort(np.append(cuts, cuts[:2]))):  # repeated cuts: empty chunks
    builder.add(chunk)
  got = builder.finish()
  _, expected = _scipy_bands_db(samples)
  assert got.power_db.shape == expected.shape and got.frames_per_column == 1
  np.testing.assert_allclose(got.power_db, expected, atol=0.02)  # dB; float32 frames
  assert got.seconds == pytest.approx(((expected.shape[1] - 1) * 159 + 512) / FS)


def test_overview_merges_neighbouring_columns_when_it_outgrows_them():
  samples = _noise_with_tones(1.3, 5)  # 128 frames
  builder = overview.OverviewBuilder(max_columns=8)
  for chunk in np.array_split(samples, 13):
    builder.add(chunk)
  got = builder.finish()
  bands, _ = _scipy_bands_db(samples)
  assert bands.shape[1] == 128 and got.frames_per_column == 16 and got.power_db.shape == (overview.BANDS, 8)
  pooled = bands.reshape(overview.BANDS, 8, 16).mean(axis=2)  # the mean power of each run of 16 frames
  np.testing.assert_allclose(got.power_db, 10 * np.log10(pooled + 1e-7), atol=0.02)


def test_overview_of_a_recording_shorter_than_a_frame_is_one_column():
  samples = _noise_with_tones(0.02, 1)  # 320 samples, under one 512-sample frame
  builder = overview.OverviewBuilder()
  builder.add(samples)
  got = builder.finish()
  _, expected = _scipy_bands_db(np.concatenate([samples, np.zeros(512 - samples.size, np.int16)]))
  np.testing.assert_allclose(got.power_db, expected, atol=0.02)


def test_overview_memory_is_bounded_by_its_columns():
  builder = overview.OverviewBuilder(max_columns=64)
  chunk = _noise_with_tones(10.0, 2)
  for _ in range(12):  # 2 minutes, 12,070 frames
    builder.add(chunk)
    assert builder._pending.size < 512 and builder._sums.shape == (64, overview.BANDS)
  got = builder.finish()
  assert 32 <= got.power_db.shape[1] <= 64 and got.frames_per_column == 256
  assert np.isfinite(got.power_db).all() and got.seconds == pytest.approx(120.0, abs=0.03)


# ----------------------------------------------------------------------------- timeline


def _tags(seconds, window=10.0, hop=10.0, num_classes=40, seed=0, spectrogram=True, max_columns=overview.MAX_COLUMNS):
  """Tags of a generated recording: class c rises in window c; the spectrogram from noise."""
  rng = np.random.default_rng(seed)
  starts = np.asarray(window_starts(round(seconds * FS), round(window * FS), round(hop * FS))) / FS
  ends = np.minimum(starts + window, seconds)
  probs = rng.dirichlet(np.ones(num_classes), len(starts)).astype(np.float32) * 0.1
  for i in range(len(starts)):
    probs[i, i % num_classes] += 0.9 - 0.01 * (i % num_classes)
  probs /= probs.sum(axis=1, keepdims=True)
  spec = None
  if spectrogram:
    builder = overview.OverviewBuilder(max_columns)
    builder.add(_noise_with_tones(min(seconds, 3.0), seed))  # the picture's content does not matter here
    spec = builder.finish()
  names = [f"sound number {i}" for i in range(num_classes)]
  return Tags("/recordings/field $1.flac", seconds, starts, ends, probs, np.zeros((len(starts), 4)), names, spec)


def test_timeline_of_a_clip_names_its_top_classes_best_first(tmp_path):
  tags = _tags(10.0)  # one window
  fig = plots.timeline_figure(tags, k=5)
  labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
  top = np.argsort(-tags.max_probs)[:5]
  assert labels == [f"sound number {i}  {tags.max_probs[i]:.2f}" for i in top]
  # One window fills the whole recording: one column from 0 to 10 s, not an empty plot.
  (mesh,) = [c for c in fig.axes[1].collections if isinstance(c, QuadMesh)]
  assert mesh.get_array().shape == (5, 1)
  np.testing.assert_allclose(mesh.get_coordinates()[0, :, 0], [0.0, 10.0])
  texts = _texts(fig)
  assert r"field \$1.flac: 0:10.0, one window" in texts  # drawn as '$', not as the start of TeX math
  assert {"0:00", "0:05", "0:10"} <= set(texts) and "time (m:ss)" in texts
  path = plots.plot_timeline(tags, tmp_path / "clip.png", k=5)
  assert _png_size(path) == _expected_size(fig) and plots.written_by_us(path)
  assert [p.name for p in tmp_path.iterdir()] == ["clip.png"]  # the temporary sibling is gone


def test_timeline_of_hours_has_a_bounded_size_and_keeps_brief_sounds(tmp_path):
  tags = _tags(3 * 3600.0, hop=5.0, num_classes=12, max_columns=64)  # 2,159 windows
  spike = 1234
  probs = tags.window_probs.copy()
  probs[:, 11] = 0.0
  probs[spike, 11] = 1.0  # a sound in one window of the 2,159
  tags = Tags(tags.source, tags.duration, tags.starts, tags.ends, probs, tags.window_embeddings, tags.class_names)
  fig = plots.timeline_figure(tags, k=12)
  (mesh,) = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]  # no spectrogram kept: one panel
  values = mesh.get_array()
  assert values.shape == (12, plots.MAX_HEAT_COLUMNS)
  # Pooled by the maximum: the one window's sound is in one column, at full strength.
  assert fig.axes[0].get_yticklabels()[0].get_text() == "sound number 11  1.00"
  assert values[0].max() == 1.0 and np.count_nonzero(values[0]) == 1
  texts = _texts(fig)
  assert "time (h:mm:ss)" in texts and {"0:00:00", "1:00:00", "3:00:00"} <= set(texts)
  assert r"field \$1.flac: 3:00:00, 2159 windows of 10 s every 5 s" in texts
  assert any("maximum of a run of windows" in t for t in texts)
  path = plots.plot_timeline(tags, tmp_path / "hours.png", k=12)
  assert _png_size(path) == _expected_size(fig) == (1200, round(plots.DPI * fig.get_size_inches()[1]))


def test_timeline_spectrogram_panel_spans_the_recording():
  tags = _tags(3.5)  # shorter than a window: one tiled window; the spectrogram is of the 3.5 s
  fig = plots.timeline_figure(tags)
  spec_ax = fig.axes[0]
  (image,) = spec_ax.get_images()
  left, right, bottom, top = image.get_extent()
  assert (left, bottom, top) == (0, 0, 8.0) and right == pytest.approx(3.0, abs=0.05)  # 3 s of noise fed
  assert spec_ax.get_xlim() == pytest.approx((0.0, 3.5))
  assert "frequency (kHz)" in _texts(fig)


def test_timeline_of_two_windows_and_many_classes():
  tags = _tags(12.0, num_classes=60, spectrogram=False)  # a window, and one closing the recording
  names = ["a name far longer than any class name of VGGSound's, which would squeeze the plot", *tags.class_names[1:]]
  fig = plots.timeline_figure(dataclasses.replace(tags, class_names=names), k=60)
  labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
  assert len(labels) == plots.MAX_TIMELINE_CLASSES  # as many rows as fit a screen
  assert labels[0] == "a name far longer than any class name o\u2026  0.90"
  assert r"field \$1.flac: 0:12.0, 2 windows of 10 s" in _texts(fig)  # no hop: the second window closes


@pytest.mark.parametrize(
  ("starts", "ends", "duration", "edges"),
  [
    ([0.0], [3.5], 3.5, [0.0, 3.5]),
    ([0.0, 10.0, 15.0], [10.0, 20.0, 25.0], 25.0, [0.0, 10.0, 17.5, 25.0]),  # a closing window
    ([0.0, 5.0, 10.0], [10.0, 15.0, 20.0], 20.0, [0.0, 7.5, 12.5, 20.0]),  # overlapping windows
  ],
)
def test_heat_columns_meet_at_midpoints(starts, ends, duration, edges):
  values = np.arange(len(starts) * 2, dtype=float).reshape(-1, 2)
  got_edges, got = plots.heat_columns(np.array(starts), np.array(ends), duration, values)
  np.testing.assert_allclose(got_edges, edges)
  np.testing.assert_array_equal(got, values)


def test_heat_columns_pool_by_the_maximum():
  rng = np.random.default_rng(0)
  values = rng.uniform(size=(10, 3))
  starts = np.arange(10) * 10.0
  edges, got = plots.heat_columns(starts, starts + 10, 100.0, values, max_columns=4)
  firsts = [0, 2, 5, 7, 10]
  np.testing.assert_allclose(edges, [0.0, 20.0, 50.0, 70.0, 100.0])
  np.testing.assert_array_equal(got, [values[a:b].max(axis=0) for a, b in zip(firsts, firsts[1:])])


@pytest.mark.parametrize(
  ("seconds", "hours", "decimals", "text"),
  [(0, False, 0, "0:00"), (65.25, False, 2, "1:05.25"), (59.996, False, 2, "1:00.00"), (3725, True, 0, "1:02:05")],
)
def test_clock(seconds, hours, decimals, text):
  assert plots.clock(seconds, hours, decimals) == text


@pytest.mark.parametrize(("duration", "step"), [(0.02, 0.01), (10.0, 1), (95.0, 10), (3 * 3600.0, 900)])
def test_time_step_gives_a_dozen_ticks_at_most(duration, step):
  assert plots.time_step(duration) == step


# ----------------------------------------------------------------------------- evaluation pictures


def test_per_class_ap_names_the_best_and_the_worst(tmp_path):
  rng = np.random.default_rng(0)
  names = [f"class {i:02d}" for i in range(60)]
  ap = rng.uniform(0.05, 1.0, 60)
  ap[7] = np.nan  # no positive clip
  fig = plots.per_class_ap_figure(names, ap, float(np.nanmean(ap)))
  order = [i for i in np.argsort(-np.nan_to_num(ap, nan=-1)) if i != 7]
  best = [t.get_text() for t in fig.axes[1].get_yticklabels()]
  worst = [t.get_text() for t in fig.axes[2].get_yticklabels()]
  assert best == [names[i] for i in order[:15]] and worst == [names[i] for i in order[-15:]]
  texts = _texts(fig)
  assert any("59 classes" in t and "1 without a positive clip left out" in t for t in texts)
  assert "best 15" in texts and "worst 15" in texts and f"{ap[order[0]]:.3f}" in texts
  path = plots.plot_per_class_ap(tmp_path / "ap.png", names, ap, float(np.nanmean(ap)))
  assert _png_size(path) == _expected_size(fig)


def test_per_class_ap_of_few_classes_names_them_all():
  names = ["dog barking", "cat purring", "rain"]
  fig = plots.per_class_ap_figure(names, np.array([0.5, 0.9, 0.1]), 0.5)
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["cat purring", "dog barking", "rain"]


def test_confusions_count_top1_mistakes():
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(200, 6))
  labels = rng.integers(0, 6, 200)
  expected = np.zeros((6, 6), int)
  for p, y in zip(probs, labels):  # the plain definition, clip by clip
    expected[y, int(np.flatnonzero(p == p.max())[0])] += 1
  got = metrics.top1_confusions(probs, labels)
  np.testing.assert_array_equal(got, expected)
  pairs = metrics.most_confused(got)
  assert sum(c for _, _, c in pairs) == 200 - np.trace(expected)
  assert [c for _, _, c in pairs] == sorted((c for _, _, c in pairs), reverse=True)
  assert all(t != p and expected[t, p] == c for t, p, c in pairs)
  multi = np.zeros((2, 3), int)
  multi[0, [0, 1]] = 1
  multi[1, 2] = 1
  got = metrics.top1_confusions(np.array([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7]]), multi)
  np.testing.assert_array_equal(got, [[0, 0, 1], [0, 0, 1], [0, 0, 1]])  # once per positive class


def test_confusions_picture_names_the_pairs(tmp_path):
  names = ["dog", "wolf", "cat", "lion"]
  confusions = np.array([[5, 3, 0, 0], [1, 6, 0, 0], [0, 0, 9, 2], [0, 0, 0, 4]])
  fig = plots.confusions_figure(confusions, names, n=2)
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["dog \u2192 wolf", "cat \u2192 lion"]
  texts = _texts(fig)
  assert "3 (38%)" in texts and "2 (18%)" in texts and any("2 most frequent of 6 mistakes" in t for t in texts)
  path = plots.plot_confusions(tmp_path / "c.png", np.diag([3, 4]), ["a", "b"])  # no mistakes: still a picture
  assert _png_size(path)[0] == 1000


def test_cross_validation_picture(tmp_path):
  folds, accuracy = ["fold 1", "fold 2", "fold 3"], [0.8, 0.7, 0.9]
  path = plots.plot_cross_validation(folds, accuracy, tmp_path / "cv.png")
  fig = plots.cross_validation_figure(folds, accuracy)
  assert _png_size(path) == _expected_size(fig)
  texts = _texts(fig)
  mean, std = statistics.fmean(accuracy), statistics.pstdev(accuracy)
  assert f"Cross-validation: 3 folds, accuracy {mean:.3f} \u00b1 {std:.3f}" in texts
  assert {"fold 1", "fold 2", "fold 3", "0.800", "0.700", "0.900", f"mean {mean:.3f}"} <= set(texts)
  with pytest.raises(ValueError, match="one accuracy per fold"):
    plots.cross_validation_figure(["a", "b"], [0.5])


# ----------------------------------------------------------------------------- files


def test_pictures_are_replaced_only_if_ours(tmp_path):
  folder = tmp_path / "pictures"
  paths = plots.timeline_paths(folder, ["/a/x.wav", "/b/x.wav", "/a/x.flac"])
  assert [p.name for p in paths] == ["x.wav.png", "x.wav-2.png", "x.flac.png"] and folder.is_dir()
  plots.plot_cross_validation(["f"], [0.5], paths[0])
  assert plots.timeline_paths(folder, ["/a/x.wav"]) == paths[:1]  # ours: replaced
  paths[1].write_bytes(b"\x89PNG\r\n\x1a\n someone else's")
  with pytest.raises(PathError, match="x.wav-2.png: exists and is not a picture written by vggsound-jax"):
    plots.timeline_paths(folder, ["/a/x.wav", "/b/x.wav"])
  (tmp_path / "file").write_text("")
  with pytest.raises(PathError, match="is not a directory"):
    plots.timeline_paths(tmp_path / "file", ["x.wav"])


def test_a_picture_that_cannot_be_written_is_one_line(tmp_path):
  fig = plots.cross_validation_figure(["f"], [0.5])
  with pytest.raises(PathError, match=r"missing/cv.png: cannot write the picture \(No such file"):
    plots.save_figure(fig, tmp_path / "missing" / "cv.png")
