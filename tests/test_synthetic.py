"""The synthetic sounds and the `vggsound/synthetic` config built from them."""

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vggsound_jax import input_pipeline
from vggsound_jax.audio.decode import SAMPLE_RATE
from vggsound_jax.datasets import synthetic


def test_at_least_8_classes_in_sorted_order():
  assert len(synthetic.CLASS_NAMES) >= 8
  assert list(synthetic.CLASS_NAMES) == sorted(set(synthetic.CLASS_NAMES))


def test_deterministic_for_a_seed_and_independent_of_count():
  a = list(synthetic.generate_split("train", seed=3, clips_per_class=2))
  b = list(synthetic.generate_split("train", seed=3, clips_per_class=1))
  c = list(synthetic.generate_split("train", seed=4, clips_per_class=1))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.audio, y.audio)
  assert not np.array_equal(a[0].audio[:1000], c[0].audio[:1000])
  test = list(synthetic.generate_split("test", seed=3, clips_per_class=1))
  assert not np.array_equal(a[0].audio[:1000], test[0].audio[:1000])


def test_clips_are_int16_varied_length_and_levels():
  clips = list(synthetic.generate_split("test", clips_per_class=3))
  assert [c.label for c in clips[: len(synthetic.CLASS_NAMES)]] == list(range(len(synthetic.CLASS_NAMES)))
  lengths = np.array([c.audio.size for c in clips]) / SAMPLE_RATE
  assert lengths.min() >= synthetic.MIN_SECONDS and lengths.max() <= synthetic.MAX_SECONDS
  assert lengths.std() > 0.3  # varied lengths exercise tiling
  peaks = np.array([np.abs(c.audio.astype(int)).max() for c in clips])
  assert all(c.audio.dtype == np.int16 for c in clips)
  assert peaks.min() > 500 and peaks.max() / peaks.min() > 3  # loudness carries no class
  assert len({c.clip_id for c in clips}) == len(clips)


def _features(audio):
  """Shift- and level-invariant features of the standardised log-spectrogram.

  The standardisation is the front end's (docs/original_pipeline.md#front-end).
  """
  x = audio[: 2 * SAMPLE_RATE].astype(np.float64) / 32768
  _, _, s = scipy.signal.spectrogram(x, fs=SAMPLE_RATE, nperseg=512, noverlap=353)
  log = np.log(s + 1e-7)
  log = (log - log.mean()) / (log.std() + 1e-9)
  energy = np.log(np.exp(log).sum(0))
  energy -= energy.mean()
  track = np.argmax(log, 0)
  return np.concatenate(
    [
      np.sort(log.mean(1))[::8],
      np.sort(log.std(1))[::8],
      np.quantile(energy, np.linspace(0, 1, 9)),
      [np.std(np.diff(energy)), np.std(track), np.mean(np.abs(np.diff(track)))],
    ]
  )


def test_classes_are_distinguishable_from_the_log_spectrogram():
  train = list(synthetic.generate_split("train", clips_per_class=12))
  test = list(synthetic.generate_split("test"))
  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
  clf.fit(np.stack([_features(c.audio) for c in train]), [c.label for c in train])
  predicted = clf.predict(np.stack([_features(c.audio) for c in test]))
  assert np.mean(predicted == np.array([c.label for c in test])) >= 0.9


@pytest.mark.slow
def test_built_dataset_is_small_fast_and_matches_the_generator(tmp_path):
  start = time.perf_counter()
  input_pipeline.ensure_synthetic(tmp_path)
  assert time.perf_counter() - start < 60
  size = sum(f.stat().st_size for f in Path(tmp_path).rglob("*") if f.is_file())
  assert size < 60e6
  assert input_pipeline.class_names(tmp_path, "synthetic") == synthetic.CLASS_NAMES
  for split, per_class in synthetic.DEFAULT_CLIPS_PER_CLASS.items():
    source = input_pipeline.data_source(tmp_path, split, "synthetic")
    assert len(source) == per_class * len(synthetic.CLASS_NAMES)
    expected = {c.clip_id: c for c in synthetic.generate_split(split)}
    for i in range(0, len(source), 17):
      e = source[i]
      clip = expected[e["clip_id"].decode()]
      np.testing.assert_array_equal(e["audio"], clip.audio)
      assert e["label"] == clip.label
  mtime = Path(tmp_path, "vggsound", "synthetic").stat().st_mtime_ns
  input_pipeline.ensure_synthetic(tmp_path)  # already there: a no-op
  assert Path(tmp_path, "vggsound", "synthetic").stat().st_mtime_ns == mtime
