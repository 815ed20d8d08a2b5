"""VGGish's front end on the device: waveform -> log-mel patches, as a batched jnp function.

It computes under jit what Google's numpy front end (`vggish_input.waveform_to_examples` with
`mel_features.py`, also shipped by `torchvggish`) computes per clip
(docs/original_pipeline.md#vggish-rows-ac): 25 ms frames every 10 ms with a periodic Hann
window, the magnitude of a 512-point FFT, 64 HTK mel bands from 125 to 7500 Hz, the natural
log with an offset of 0.01, then patches of 96 frames (0.96 s) that do not overlap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vggsound_jax.audio.decode import INT16_SCALE, SAMPLE_RATE

FRAME_LENGTH = 400  # samples: 25 ms at 16 kHz
FRAME_HOP = 160  # samples: 10 ms
FFT_LENGTH = 512  # the power of two at or above FRAME_LENGTH
NUM_FFT_BINS = FFT_LENGTH // 2 + 1  # 257, one-sided
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # 0.96 s of frames: the network's input height
PATCH_HOP = 96  # patches do not overlap
# HTK's mel scale: mel(f) = 1127 ln(1 + f / 700).
MEL_BREAK_HZ = 700.0
MEL_HIGH_Q = 1127.0

# Periodic ("fftbins") Hann: a whole period of a cosine of period FRAME_LENGTH.
WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi / FRAME_LENGTH * np.arange(FRAME_LENGTH))


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
  return MEL_HIGH_Q * np.log(1.0 + np.asarray(hertz, np.float64) / MEL_BREAK_HZ)


def mel_matrix() -> np.ndarray:
  """(257, 64) float64 weights taking FFT magnitudes to mel bands (HTK triangles).

  Band i rises linearly in mel from edge i to edge i + 1 and falls to edge i + 2, the 66
  edges evenly spaced in mel from MEL_MIN_HZ to MEL_MAX_HZ. The DC bin contributes nothing.
  """
  bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, NUM_FFT_BINS))
  edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_MEL_BANDS + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bins_mel[:, None] - lower) / (center - lower)
  falling = (upper - bins_mel[:, None]) / (upper - center)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights[0, :] = 0.0
  return weights


_MEL_MATRIX = mel_matrix().astype(np.float32)


def num_frames(num_samples: int) -> int:
  """Frames of a waveform of this length, with no padding: 998 for 10 s."""
  return 1 + (num_samples - FRAME_LENGTH) // FRAME_HOP


MIN_SAMPLES = FRAME_LENGTH + (PATCH_FRAMES - 1) * FRAME_HOP  # 15,600 (0.975 s): one patch


def num_patches(num_samples: int) -> int:
  """Whole patches of a waveform of this length (a partial last patch is dropped): 10 for 10 s."""
  frames = num_frames(num_samples)
  return 0 if frames < PATCH_FRAMES else 1 + (frames - PATCH_FRAMES) // PATCH_HOP


def log_mel(waveform: jax.Array) -> jax.Array:
  """(..., T) int16 (or float in [-1, 1]) -> (..., num_frames(T), 64) float32 log-mel frames."""
  x = jnp.asarray(waveform)
  # The original reads int16 and divides by 32768; floats are taken as already scaled.
  x = x.astype(jnp.float32) / INT16_SCALE if x.dtype == jnp.int16 else x.astype(jnp.float32)
  starts = np.arange(num_frames(x.shape[-1])) * FRAME_HOP
  frames = x[..., starts[:, None] + np.arange(FRAME_LENGTH)]  # (..., F, 400)
  magnitude = jnp.abs(jnp.fft.rfft(frames * WINDOW.astype(np.float32), n=FFT_LENGTH, axis=-1))
  mel = jnp.matmul(magnitude, _MEL_MATRIX, precision=jax.lax.Precision.HIGHEST)
  return jnp.log(mel + LOG_OFFSET)


def log_mel_patches(waveform: jax.Array) -> jax.Array:
  """VGGish's input for a batch of waveforms: (..., T) -> (..., P, 96, 64, 1) float32.

  P = num_patches(T): 10 for a 10 s clip. Time runs down the patch (96 frames), mel bands
  across (64), as in the original's (num_examples, 96, 64).
  """
  length = waveform.shape[-1]
  patches = num_patches(length)
  if patches == 0:
    raise ValueError(f"VGGish needs at least {MIN_SAMPLES} samples (0.975 s) for one patch, got {length}")
  frames = log_mel(waveform)
  starts = np.arange(patches) * PATCH_HOP
  return frames[..., starts[:, None] + np.arange(PATCH_FRAMES), :][..., None]
