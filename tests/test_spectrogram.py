"""The jnp front end against scipy.signal.spectrogram in float64, as the original computes it."""

import jax
import numpy as np
import pytest
import scipy.signal

from vggsound_jax.audio.spectrogram import log_spectrogram
from vggsound_jax.audio.stft import NPERSEG, TUKEY_ALPHA, WINDOW, num_frames, periodic_tukey

FS = 16000
N = 160000  # 10 s


def scipy_reference(x16: np.ndarray) -> np.ndarray:
  """The original front end, written out from docs/original_pipeline.md#front-end, in float64."""
  x = np.clip(x16.astype(np.float64) / 32768.0, -1.0, 1.0)
  _, _, s = scipy.signal.spectrogram(x, fs=FS, nperseg=512, noverlap=353)
  s = np.log(s + 1e-7)
  return (s - s.mean()) / (s.std() + 1e-9)


def _signals() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  t = np.arange(N) / FS
  envelope = (np.sin(2 * np.pi * 3 * t) > 0.3) * np.abs(np.sin(2 * np.pi * 1.7 * t))
  voiced = sum(np.sin(2 * np.pi * k * 140 * t) / k for k in range(1, 12))
  click = np.zeros(N)
  click[N // 2] = 20000
  signals = {
    "tone": 0.8 * 32767 * np.sin(2 * np.pi * 1000 * t),
    "two_tones": 32767 * (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 3100 * t)),
    "white_noise": rng.normal(0, 0.2 * 32767, N),
    "speech_like_bursts": 8000 * envelope * voiced + rng.normal(0, 30, N),
    "silence_with_click": click,
    "near_silent": rng.integers(-2, 3, N),
    "offset_near_silent": 1000 + rng.integers(-1, 2, N),
    "full_scale_square": 32767 * np.sign(np.sin(2 * np.pi * 50 * t)),
  }
  return {k: np.clip(np.round(v), -32768, 32767).astype(np.int16) for k, v in signals.items()}


SIGNALS = _signals()


def test_matches_scipy_on_many_kinds_of_signal():
  batch = np.stack(list(SIGNALS.values()))
  out = np.asarray(jax.jit(log_spectrogram)(batch))
  assert out.shape == (len(SIGNALS), 257, 1004)
  for i, (name, x) in enumerate(SIGNALS.items()):
    err = np.max(np.abs(out[i] - scipy_reference(x)))
    assert err <= 1e-3, f"{name}: max abs error {err}"


def test_all_zero_clip_is_all_zero_not_nan():
  out = np.asarray(log_spectrogram(np.zeros((1, 16000), np.int16)))
  assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_float_input_is_clipped_like_int16():
  x16 = SIGNALS["white_noise"][:32000]
  as_float = x16.astype(np.float32) / 32768.0
  np.testing.assert_allclose(
    np.asarray(log_spectrogram(as_float * 4.0)),  # clipped to [-1, 1] first
    scipy_reference(np.clip(x16.astype(np.int64) * 4, -32768, 32767).astype(np.int16)),
    atol=1e-3,
  )


@pytest.mark.parametrize("num_samples", [512, 671, 16000, 160000])
def test_frame_count_matches_scipy(num_samples):
  _, t, _ = scipy.signal.spectrogram(np.zeros(num_samples), fs=FS, nperseg=512, noverlap=353)
  assert num_frames(num_samples) == len(t)


def test_window_is_scipys_periodic_tukey():
  np.testing.assert_array_equal(WINDOW, scipy.signal.get_window(("tukey", TUKEY_ALPHA), NPERSEG))
  for length, alpha in [(400, 0.5), (513, 0.25), (64, 0.1)]:
    np.testing.assert_allclose(
      periodic_tukey(length, alpha), scipy.signal.get_window(("tukey", alpha), length), atol=1e-15
    )
