"""Host-side audio: decode any file to 16 kHz mono int16, and cut it to a 10 s clip.

The original converts every file with `ffmpeg -acodec pcm_s16le -ac 1 -ar 16000` and then tiles
the waveform to 10 s (docs/original_pipeline.md#front-end). Here, 16 kHz mono 16-bit wav/flac
files are read as they are with soundfile (bit-exact); everything else (other rates, stereo,
mp4, mkv, webm, m4a, ...) goes through PyAV, whose resampler is the same libswresample with the
same default settings that the ffmpeg command line inserts for `-ac 1 -ar 16000`. Results then
match the original's conversion up to differences between FFmpeg versions and decoders.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from vggsound_jax.errors import PathError

SAMPLE_RATE = 16_000
CLIP_SECONDS = 10
CLIP_SAMPLES = SAMPLE_RATE * CLIP_SECONDS
# The original reads its int16 wav as int16 / 32768, in [-1, 1).
INT16_SCALE = 32768.0

LOSSLESS_EXTENSIONS = (".wav", ".flac")


class AudioDecodeError(PathError):
  """A file that cannot be turned into audio."""


def decode_audio(path: str | os.PathLike) -> np.ndarray:
  """Decodes an audio or video file to a 1-D int16 array at 16 kHz, mono.

  Raises AudioDecodeError for a missing, unreadable or empty file.
  """
  path = Path(path)
  if not path.is_file():
    raise AudioDecodeError(path, "no such file")
  if path.suffix.lower() in LOSSLESS_EXTENSIONS:
    samples = _read_native_pcm16(path)
    if samples is None:
      samples = _decode_with_pyav(path)
  else:
    samples = _decode_with_pyav(path)
  if samples.size == 0:
    raise AudioDecodeError(path, "no audio samples")
  return samples


def _read_native_pcm16(path: Path) -> np.ndarray | None:
  """Reads a 16 kHz mono PCM-16 wav/flac bit-exactly; None when it needs converting."""
  try:
    info = sf.info(str(path))
  except (sf.LibsndfileError, RuntimeError):
    return None  # PyAV gets a chance, and gives the error if it fails too.
  if (info.samplerate, info.channels, info.subtype) != (SAMPLE_RATE, 1, "PCM_16"):
    return None
  try:
    return sf.read(str(path), dtype="int16", always_2d=False)[0]
  except (sf.LibsndfileError, RuntimeError) as e:
    raise AudioDecodeError(path, f"cannot decode: {e}") from None


def _decode_with_pyav(path: Path) -> np.ndarray:
  try:
    with av.open(str(path)) as container:
      if not container.streams.audio:
        raise AudioDecodeError(path, "no audio stream")
      stream = container.streams.audio[0]
      resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
      chunks = []
      for frame in container.decode(stream):
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
      chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
  except AudioDecodeError:
    raise
  except (av.FFmpegError, ValueError, OSError) as e:
    raise AudioDecodeError(path, f"cannot decode: {e}") from None
  if not chunks:
    return np.zeros(0, np.int16)
  return np.concatenate(chunks).astype(np.int16, copy=False)


def to_clip(samples: np.ndarray, num_samples: int = CLIP_SAMPLES) -> np.ndarray:
  """Repeats the waveform end to end and cuts it to `num_samples` (docs/original_pipeline.md#front-end).

  For clips of at least a tenth of `num_samples` this is the original's
  `tile(samples, 10)[:160000]`. Shorter clips (under 1 s), which the original leaves short,
  keep being tiled until they fill the clip, so that every clip has the same length.
  """
  if samples.size == 0:
    raise ValueError("cannot tile an empty waveform")
  return np.resize(samples, num_samples)


def load_clip(path: str | os.PathLike) -> np.ndarray:
  """Decodes a file and returns the 10 s int16 clip the model sees."""
  return to_clip(decode_audio(path))
