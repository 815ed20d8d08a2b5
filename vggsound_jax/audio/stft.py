"""The original's short-time Fourier transform parameters and their numpy pieces, without jax.

`spectrogram.py` (the model's front end, under jit) and `overview.py` (the picture of a whole
recording, on the host, where the OpenVINO path must not import jax) both frame a waveform
with these: `scipy.signal.spectrogram(x, fs=16000, nperseg=512, noverlap=353)`.
"""

from __future__ import annotations

import numpy as np

from vggsound_jax.audio.decode import INT16_SCALE, SAMPLE_RATE

NPERSEG = 512
NOVERLAP = 353
HOP = NPERSEG - NOVERLAP  # 159
NUM_FREQ_BINS = NPERSEG // 2 + 1  # 257, one-sided
TUKEY_ALPHA = 0.25  # scipy.signal.spectrogram's default window is ('tukey', 0.25)
LOG_EPS = 1e-7
STD_EPS = 1e-9  # the per-clip standardisation: (S - mean) / (std + STD_EPS)


def periodic_tukey(length: int, alpha: float) -> np.ndarray:
  """scipy.signal.get_window(("tukey", alpha), length): the symmetric window one sample longer,
  its last sample dropped. Built here because importing scipy.signal takes most of a second."""
  n = length + 1
  width = int(np.floor(alpha * (n - 1) / 2.0))
  k = np.arange(n)
  window = np.ones(n)
  rise, fall = k[: width + 1], k[n - width - 1 :]
  window[: width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * rise / alpha / (n - 1))))
  window[n - width - 1 :] = 0.5 * (1 + np.cos(np.pi * (-2.0 / alpha + 1 + 2.0 * fall / alpha / (n - 1))))
  return window[:-1]


WINDOW = periodic_tukey(NPERSEG, TUKEY_ALPHA)


def _power_to_log_scale() -> np.ndarray:
  """Per-bin factor taking |rfft|^2 of int16-unit frames to (density PSD) / LOG_EPS."""
  density = 1.0 / (SAMPLE_RATE * np.sum(WINDOW**2) * INT16_SCALE**2)
  # One-sided density: every bin but DC and Nyquist carries its negative twin.
  one_sided = np.full(NUM_FREQ_BINS, 2.0)
  one_sided[[0, -1]] = 1.0
  return (density * one_sided / LOG_EPS).astype(np.float32)


POWER_TO_LOG_SCALE = _power_to_log_scale()


def num_frames(num_samples: int) -> int:
  """Frames scipy produces for a waveform of this length (no padding): 1004 for 10 s."""
  return 1 + (num_samples - NPERSEG) // HOP
