"""A coarse picture of a whole recording's spectrogram, built while it streams: `OverviewBuilder`.

The frames are the model's (`stft.py`: 512 samples every 159, Tukey window, constant detrend),
their power is pooled into `BANDS` frequency bands and shown as the model's log(S + 1e-7), in
dB, before its per-window standardisation. Memory is bounded whatever the length: frames are
averaged into at most `MAX_COLUMNS` time columns, and whenever a recording outgrows them, pairs
of neighbouring columns are merged and every later column holds twice as many frames. A 10 s
clip keeps every frame (1004 columns of 10 ms); a 3-hour recording gets about 1000 columns
of 10 s; 1 MB of sums either way. Samples are consumed chunk by chunk: between chunks, only
the samples of the next frame (fewer than 512) are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np

from vggsound_jax.audio import stft
from vggsound_jax.audio.decode import SAMPLE_RATE

BANDS = 128  # pairs of the 256 lowest FFT bins: 62.5 Hz each, 0-8 kHz
MAX_COLUMNS = 2048  # time columns at most: a wide picture's pixels, and ~1 MB of float32
_FRAMES_PER_BLOCK = 256  # frames transformed at once: bounds the temporary arrays (~2 MB in all)
_BINS_PER_BAND = (stft.NUM_FREQ_BINS - 1) // BANDS  # the Nyquist bin is left out
_WINDOW = stft.WINDOW.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Overview:
  """(BANDS, columns) log power in dB, lowest band first, NaN where no frame fell. The columns
  evenly divide [0, seconds], the span of the recording's frames (frame g covers samples
  [g * HOP, g * HOP + NPERSEG)); each averages `frames_per_column` frames (the last maybe fewer)."""

  power_db: np.ndarray
  seconds: float
  frames_per_column: int
  max_hz: float = SAMPLE_RATE / 2


def band_power(samples: np.ndarray) -> np.ndarray:
  """(frames, BANDS) mean density power per band of the model's frames of int16 `samples`, in
  units of LOG_EPS (the model's log(S + eps) - log(eps) is log1p of it)."""
  frames = np.lib.stride_tricks.sliding_window_view(samples, stft.NPERSEG)[:: stft.HOP].astype(np.float32)
  frames -= frames.mean(axis=1, keepdims=True)  # scipy's detrend='constant'
  frames *= _WINDOW
  spectrum = np.fft.rfft(frames, axis=1)[:, : BANDS * _BINS_PER_BAND]
  power = np.square(spectrum.real) + np.square(spectrum.imag)
  power *= stft.POWER_TO_LOG_SCALE[: BANDS * _BINS_PER_BAND]
  return power.reshape(len(frames), BANDS, _BINS_PER_BAND).mean(axis=2)


class OverviewBuilder:
  """Feed a recording's int16 chunks in order with `add` (or pass a stream through `feed`), then
  `finish()` for its `Overview`. See the module doc for the bound on memory."""

  def __init__(self, max_columns: int = MAX_COLUMNS) -> None:
    if max_columns < 2 or max_columns % 2:
      raise ValueError(f"max_columns {max_columns}: an even number, at least 2")
    self.max_columns = max_columns
    self._sums = np.zeros((max_columns, BANDS), np.float32)  # 1 MB; a picture needs no more precision
    self._counts = np.zeros(max_columns, np.int64)
    self._frames_per_column = 1
    self._frames = 0  # frames added so far; frame g starts at sample g * HOP
    self._pending = np.zeros(0, np.int16)  # samples from the next frame's start on
    self._samples = 0

  def add(self, chunk: np.ndarray) -> None:
    chunk = np.asarray(chunk, np.int16).reshape(-1)
    self._samples += chunk.size
    block_samples = (_FRAMES_PER_BLOCK - 1) * stft.HOP + stft.NPERSEG
    for begin in range(0, max(chunk.size, 1), block_samples):
      self._pending = np.concatenate([self._pending, chunk[begin : begin + block_samples]])
      frames = stft.num_frames(self._pending.size) if self._pending.size >= stft.NPERSEG else 0
      if frames:
        self._add_frames(band_power(self._pending[: (frames - 1) * stft.HOP + stft.NPERSEG]))
        self._pending = self._pending[frames * stft.HOP :]

  def feed(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The chunks, unchanged, each added on its way through."""
    for chunk in chunks:
      self.add(chunk)
      yield chunk

  def _add_frames(self, power: np.ndarray) -> None:
    while (self._frames + len(power) - 1) // self._frames_per_column >= self.max_columns:
      self._halve()
    columns = (self._frames + np.arange(len(power))) // self._frames_per_column
    firsts = np.flatnonzero(np.diff(columns, prepend=-1))
    self._sums[columns[firsts]] += np.add.reduceat(power, firsts, axis=0)
    self._counts[columns[firsts]] += np.diff(np.append(firsts, len(power)))
    self._frames += len(power)

  def _halve(self) -> None:
    half = self.max_columns // 2
    self._sums[:half] = self._sums[0::2] + self._sums[1::2]
    self._counts[:half] = self._counts[0::2] + self._counts[1::2]
    self._sums[half:], self._counts[half:] = 0, 0
    self._frames_per_column *= 2

  def finish(self) -> Overview:
    """The overview so far. A recording shorter than one frame (32 ms) shows as that one
    frame, zero-padded, so that no recording has an empty picture."""
    if self._frames == 0 and self._pending.size:
      padded = np.zeros(stft.NPERSEG, np.int16)
      padded[: self._pending.size] = self._pending[: stft.NPERSEG]
      self._add_frames(band_power(padded))
    used = -(-self._frames // self._frames_per_column)
    counts = self._counts[:used, None]
    with np.errstate(invalid="ignore", divide="ignore"):
      mean = np.where(counts > 0, self._sums[:used] / np.maximum(counts, 1), np.nan)
    # The model's log(S + eps), in dB: 10 log10(eps) + 10 log10(1 + S / eps).
    power_db = 10 * np.log10(stft.LOG_EPS) + 10 * np.log1p(mean) / np.log(10)
    span = (self._frames - 1) * stft.HOP + stft.NPERSEG if self._frames else 0
    return Overview(power_db.T.astype(np.float32), span / SAMPLE_RATE, self._frames_per_column)
