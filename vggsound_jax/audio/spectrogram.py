"""Device-side front end: waveform -> standardised log-spectrogram, as a batched jnp function.

It reproduces, under jit, what the original computes per clip with
`scipy.signal.spectrogram(x, fs=16000, nperseg=512, noverlap=353)` followed by
`log(S + 1e-7)` and per-clip standardisation (docs/original_pipeline.md#front-end).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vggsound_jax.audio.decode import INT16_SCALE

# The framing is defined once, in stft.py (numpy only, for the host side too).
from vggsound_jax.audio.stft import HOP, NPERSEG, POWER_TO_LOG_SCALE, STD_EPS, WINDOW, num_frames


def _frame_means(x: jnp.ndarray, starts: np.ndarray) -> jnp.ndarray:
  """Mean of every frame, from a running sum of the int16 signal: one pass over the signal
  instead of a reduction over the (3.2x larger) framed array. Exact: int32 wrap-around cancels
  in the difference, a frame's sum fits in float32's 24 bits, and 512 is a power of two."""
  running = jnp.cumsum(x.astype(jnp.int32), axis=-1)
  running = jnp.concatenate([jnp.zeros_like(running[..., :1]), running], axis=-1)
  sums = running[..., starts + NPERSEG] - running[..., starts]
  return sums.astype(jnp.float32) / NPERSEG


def log_spectrogram(waveform: jnp.ndarray) -> jnp.ndarray:
  """Standardised log-spectrogram of a batch of waveforms.

  Args:
    waveform: (..., T) int16 samples, or floats in [-1, 1], which are clipped and quantised
      to int16 first, as the original's 16-bit conversion does.

  Returns:
    (..., 257, num_frames(T)) float32, frequency first, each clip standardised over its
    whole array to zero mean and unit (population) standard deviation.
  """
  # float32 has to match scipy's float64 on near-silent clips too, where standardisation
  # magnifies every rounding error. Two exact rewrites keep the precision:
  # - samples stay in int16 units, so the frame mean (a sum of 512 int16 values, divided by
  #   a power of two) and the detrended frame are exact in float32;
  # - log(S + eps) = log(eps) + log1p(S / eps), and the constant log(eps) cancels in the
  #   standardisation, while log1p keeps the S far below eps that log(S + eps) rounds away.
  x = jnp.asarray(waveform)
  if x.dtype != jnp.int16:
    x = jnp.round(jnp.clip(x.astype(jnp.float32), -1.0, 1.0) * INT16_SCALE)
    x = jnp.clip(x, -INT16_SCALE, INT16_SCALE - 1).astype(jnp.int16)

  starts = np.arange(num_frames(x.shape[-1])) * HOP
  frames = x.astype(jnp.float32)[..., starts[:, None] + np.arange(NPERSEG)]  # (..., F, 512)
  frames = frames - _frame_means(x, starts)[..., None]  # detrend='constant'
  spectrum = jnp.fft.rfft(frames * WINDOW.astype(np.float32), axis=-1)
  power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
  log_power = jnp.log1p(power * POWER_TO_LOG_SCALE)  # log(S + eps) - log(eps)
  log_power = jnp.swapaxes(log_power, -1, -2)  # (..., 257, F)

  mean = jnp.mean(log_power, axis=(-2, -1), keepdims=True)
  std = jnp.std(log_power, axis=(-2, -1), keepdims=True)
  return (log_power - mean) / (std + STD_EPS)
