"""Procedurally generated sounds: a small data set that trains and tests like VGGSound.

Each class is a different kind of sound whose identity shows in the shape of its
log-spectrogram (harmonic structure, bandwidth, temporal pattern, frequency motion), never
in its loudness: every clip gets a random gain and background noise at a random SNR, and
the model standardises each clip anyway. Parameters (pitch, rate, depth, ...) are drawn
per clip, so a classifier has to learn the pattern, not memorise a waveform.

Everything is deterministic for a seed: clip `i` of a split depends only on
(seed, split, i), not on how many clips are drawn or in which order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from vggsound_jax.audio.decode import SAMPLE_RATE

# Clip lengths vary so that the pipeline's tiling to 10 s is exercised.
MIN_SECONDS = 2.0
MAX_SECONDS = 5.0
# Background noise level relative to the sound, and the overall level, both random.
SNR_DB_RANGE = (10.0, 30.0)
PEAK_DBFS_RANGE = (-30.0, -3.0)
INT16_PEAK = 32767

SPLIT_IDS = {"train": 0, "test": 1}
DEFAULT_SEED = 0
DEFAULT_CLIPS_PER_CLASS = {"train": 36, "test": 12}


def _time(num_samples: int) -> np.ndarray:
  return np.arange(num_samples) / SAMPLE_RATE


def _pure_tone(rng: np.random.Generator, n: int) -> np.ndarray:
  f = rng.uniform(300.0, 3000.0)
  return np.sin(2 * np.pi * f * _time(n) + rng.uniform(0, 2 * np.pi))


def _chirp(rng: np.random.Generator, n: int) -> np.ndarray:
  """Repeated exponential sweeps, up or down, a few per second."""
  f0, f1 = rng.uniform(300.0, 600.0), rng.uniform(2500.0, 5000.0)
  if rng.random() < 0.5:
    f0, f1 = f1, f0
  period = int(rng.uniform(0.25, 0.6) * SAMPLE_RATE)
  tau = (np.arange(n) % period) / SAMPLE_RATE
  duration = period / SAMPLE_RATE
  k = np.log(f1 / f0) / duration
  phase = 2 * np.pi * f0 * (np.exp(k * tau) - 1) / k
  return np.sin(phase)


def _noise_bursts(rng: np.random.Generator, n: int) -> np.ndarray:
  """White noise switched on for 80-200 ms, two or three times a second."""
  period = int(rng.uniform(0.3, 0.6) * SAMPLE_RATE)
  width = int(rng.uniform(0.08, 0.2) * SAMPLE_RATE)
  offset = rng.integers(period)
  gate = ((np.arange(n) + offset) % period) < width
  return rng.standard_normal(n) * gate


def _click_train(rng: np.random.Generator, n: int) -> np.ndarray:
  """Isolated broadband clicks (a few samples long), 5-15 per second."""
  out = np.zeros(n)
  period = int(SAMPLE_RATE / rng.uniform(5.0, 15.0))
  click = rng.choice([-1.0, 1.0]) * np.array([0.5, 1.0, -0.7, 0.3])
  for start in range(int(rng.integers(period)), n - len(click), period):
    out[start : start + len(click)] += click
  return out


def _am_tone(rng: np.random.Generator, n: int) -> np.ndarray:
  """A tone whose loudness pulses slowly (2-6 Hz), almost to silence."""
  t = _time(n)
  f = rng.uniform(400.0, 3000.0)
  rate, depth = rng.uniform(2.0, 6.0), rng.uniform(0.9, 1.0)
  envelope = 1 - depth * 0.5 * (1 + np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
  return envelope * np.sin(2 * np.pi * f * t)


def _harmonic_stack(rng: np.random.Generator, n: int) -> np.ndarray:
  """A low fundamental with many harmonics, like a sustained voiced sound."""
  t = _time(n)
  f0 = rng.uniform(100.0, 250.0)
  num_harmonics = int(min(rng.integers(12, 25), (SAMPLE_RATE / 2 - 100) // f0))
  out = np.zeros(n)
  for h in range(1, num_harmonics + 1):
    out += np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) / h**0.7
  return out


def _vibrato(rng: np.random.Generator, n: int) -> np.ndarray:
  """A tone whose pitch wobbles by 6-12 % at 4-8 Hz."""
  t = _time(n)
  f, rate, depth = rng.uniform(800.0, 2500.0), rng.uniform(4.0, 8.0), rng.uniform(0.06, 0.12)
  # Phase is the integral of f * (1 + depth * sin(2 pi rate t)).
  phase = 2 * np.pi * f * (t - depth * np.cos(2 * np.pi * rate * t) / (2 * np.pi * rate))
  return np.sin(phase)


def _noise_band(rng: np.random.Generator, n: int) -> np.ndarray:
  """Steady noise filtered to a band a few hundred Hz wide."""
  centre, width = rng.uniform(1000.0, 5000.0), rng.uniform(300.0, 900.0)
  spectrum = np.fft.rfft(rng.standard_normal(n))
  freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
  spectrum[np.abs(freqs - centre) > width / 2] = 0
  return np.fft.irfft(spectrum, n)


@dataclasses.dataclass(frozen=True)
class SoundClass:
  name: str
  generate: Callable[[np.random.Generator, int], np.ndarray]


SOUND_CLASSES = (
  SoundClass("pure tone", _pure_tone),
  SoundClass("chirp", _chirp),
  SoundClass("noise bursts", _noise_bursts),
  SoundClass("click train", _click_train),
  SoundClass("am tone", _am_tone),
  SoundClass("harmonic stack", _harmonic_stack),
  SoundClass("vibrato", _vibrato),
  SoundClass("noise band", _noise_band),
)
# Model order = sorted, as for the real labels.
CLASS_NAMES = tuple(sorted(c.name for c in SOUND_CLASSES))
_BY_NAME = {c.name: c for c in SOUND_CLASSES}


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / max(np.max(np.abs(x)), 1e-12)


def generate_clip(label: int, rng: np.random.Generator) -> np.ndarray:
  """One clip of class `CLASS_NAMES[label]`: 1-D int16 at 16 kHz, 2-5 s long."""
  n = int(rng.uniform(MIN_SECONDS, MAX_SECONDS) * SAMPLE_RATE)
  sound = _normalise(_BY_NAME[CLASS_NAMES[label]].generate(rng, n))
  snr = 10 ** (rng.uniform(*SNR_DB_RANGE) / 20)
  mix = _normalise(sound + rng.standard_normal(n) * np.std(sound) / snr)
  peak = 10 ** (rng.uniform(*PEAK_DBFS_RANGE) / 20) * INT16_PEAK
  return np.round(mix * peak).astype(np.int16)


@dataclasses.dataclass(frozen=True)
class SyntheticClip:
  youtube_id: str
  start_seconds: int
  label: int
  audio: np.ndarray

  @property
  def clip_id(self) -> str:
    return f"{self.youtube_id}_{self.start_seconds:06d}"


def generate_split(
  split: str, *, seed: int = DEFAULT_SEED, clips_per_class: int | None = None
) -> Iterator[SyntheticClip]:
  """Yields the clips of a split, classes interleaved (clip i has label i % num_classes)."""
  if split not in SPLIT_IDS:
    raise ValueError(f"unknown synthetic split {split!r}; expected one of {sorted(SPLIT_IDS)}")
  if clips_per_class is None:
    clips_per_class = DEFAULT_CLIPS_PER_CLASS[split]
  num_classes = len(CLASS_NAMES)
  for i in range(clips_per_class * num_classes):
    rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
    label = i % num_classes
    yield SyntheticClip(f"synthetic-{split}-{i:05d}", 0, label, generate_clip(label, rng))
