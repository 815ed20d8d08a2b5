"""Host-side audio: decode any file to 16 kHz mono int16, and cut it to a 10 s clip.

The original converts every file with `ffmpeg -acodec pcm_s16le -ac 1 -ar 16000` and then tiles
the waveform to 10 s (docs/original_pipeline.md#front-end). Here, 16 kHz mono 16-bit wav/flac
files are read as they are with soundfile (bit-exact); everything else (other rates, stereo,
mp4, mkv, webm, m4a, ...) goes through PyAV, whose resampler is the same libswresample with the
same default settings that the ffmpeg command line inserts for `-ac 1 -ar 16000`. Results then
match the original's conversion up to differences between FFmpeg versions and decoders.

Limits, so that a small hostile file can take neither gigabytes nor minutes: the declared
sample rate must lie in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] and the channel count be at most
MAX_CHANNELS (checked from the header before decoding, and again on every decoded frame), and
only the first `max_seconds` (MAX_SECONDS unless asked otherwise) are decoded: a longer file is
cut, not refused. Float audio holding NaN or inf is refused ("non-finite samples") instead of
being turned into -32768.
"""

from __future__ import annotations

import os
import stat
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

# VGGSound clips are 10 s; a minute leaves room for longer recordings while bounding what one
# file costs (1.9 MB of int16 output, a few seconds of decoding at the worst rate and channels).
MAX_SECONDS = 60.0
# Declared sample rates outside this range are damaged or hostile headers: a 64 KB wav claiming
# 1 Hz would resample to gigabytes. 768 kHz is the highest rate of common professional formats.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
# More than any real recording format (7.1.4 and ambisonics of order 6 fit).
MAX_CHANNELS = 64
# Decoding goes on this far past `max_seconds` before the resampler is flushed, so that the
# samples kept are those of decoding the whole file (its filter looks a few samples ahead).
_RESAMPLER_MARGIN_SECONDS = 1.0
_FLOAT_FORMATS = ("flt", "fltp", "dbl", "dblp")


class AudioDecodeError(PathError):
  """A file that cannot be turned into audio."""


def decode_audio(path: str | os.PathLike, max_seconds: float = MAX_SECONDS) -> np.ndarray:
  """Decodes the first `max_seconds` of an audio or video file to 1-D int16 at 16 kHz, mono.

  Raises AudioDecodeError for a missing, unreadable, non-regular, empty or out-of-limits file,
  and for float audio with non-finite samples.
  """
  path = Path(path)
  _check_readable(path)
  max_samples = int(max_seconds * SAMPLE_RATE)
  samples = None
  if path.suffix.lower() in LOSSLESS_EXTENSIONS:
    samples = _read_native_pcm16(path, max_samples)
  if samples is None:
    samples = _decode_with_pyav(path, max_seconds)[:max_samples]
  if samples.size == 0:
    raise AudioDecodeError(path, "no audio samples")
  return samples


def _check_readable(path: Path) -> None:
  """The reason a path is not a readable regular file, as one line."""
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    raise AudioDecodeError(path, "no such file") from None
  except OSError as e:
    raise AudioDecodeError(path, f"cannot read: {e.strerror or e}") from None
  if stat.S_ISDIR(mode):
    raise AudioDecodeError(path, "is a directory")
  if not stat.S_ISREG(mode):
    # A fifo or a device (/dev/zero) never ends, or blocks forever.
    raise AudioDecodeError(path, "not a regular file")
  try:
    with open(path, "rb"):
      pass
  except OSError as e:
    raise AudioDecodeError(path, f"cannot read: {e.strerror or e}") from None


def _check_format(path: Path, rate: int | None, channels: int | None) -> None:
  if rate is not None and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
    raise AudioDecodeError(path, f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
  if channels is not None and not 1 <= channels <= MAX_CHANNELS:
    raise AudioDecodeError(path, f"{channels} channels (1 to {MAX_CHANNELS} are read)")


def _read_native_pcm16(path: Path, max_samples: int) -> np.ndarray | None:
  """Reads a 16 kHz mono PCM-16 wav/flac bit-exactly; None when it needs converting."""
  # soundfile encodes str names strictly; the bytes of the name work for any name.
  name = os.fsencode(path)
  try:
    info = sf.info(name)
  except (sf.LibsndfileError, RuntimeError):
    return None  # PyAV gets a chance, and gives the error if it fails too.
  _check_format(path, info.samplerate, info.channels)
  if (info.samplerate, info.channels, info.subtype) != (SAMPLE_RATE, 1, "PCM_16"):
    return None
  try:
    return sf.read(name, frames=max_samples, dtype="int16", always_2d=False)[0]
  except (sf.LibsndfileError, RuntimeError) as e:
    raise AudioDecodeError(path, f"cannot decode: {e}") from None


def _decode_with_pyav(path: Path, max_seconds: float) -> np.ndarray:
  try:
    with av.open(str(path)) as container:
      if not container.streams.audio:
        raise AudioDecodeError(path, "no audio stream")
      stream = container.streams.audio[0]
      _check_format(path, stream.sample_rate or None, stream.channels or None)
      resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
      chunks, decoded_seconds = [], 0.0
      for frame in container.decode(stream):
        # A stream may change format mid-way: every frame is held to the same limits.
        _check_format(path, frame.sample_rate, frame.layout.nb_channels)
        if frame.format.name in _FLOAT_FORMATS and not np.isfinite(frame.to_ndarray()).all():
          raise AudioDecodeError(path, "non-finite samples")
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        decoded_seconds += frame.samples / frame.sample_rate
        if decoded_seconds >= max_seconds + _RESAMPLER_MARGIN_SECONDS:
          break
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
  """Decodes the first 10 s of a file (all the model sees) and returns the 10 s int16 clip."""
  return to_clip(decode_audio(path, max_seconds=CLIP_SECONDS))


def decode_audio_bytes(data: bytes, name: str, max_seconds: float = MAX_SECONDS) -> np.ndarray:
  """`decode_audio` of a file's contents held in memory, such as a member read from an archive.

  `name` (the member's name) picks the reader by its extension, as a path does, and names the
  file in errors. The bytes go through an anonymous in-memory file (Linux memfd), so that they
  meet the same readers and limits as a file on disk and nothing is left behind if the process
  dies; elsewhere through a temporary file.
  """
  if not hasattr(os, "memfd_create"):
    import tempfile  # noqa: PLC0415

    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as f:
      f.write(data)
      f.flush()
      try:
        return decode_audio(f.name, max_seconds)
      except AudioDecodeError as e:
        raise AudioDecodeError(name, e.problem) from None
  fd = os.memfd_create("vggsound-jax-clip")
  try:
    with open(fd, "wb", closefd=False) as f:
      f.write(data)
    path = Path(f"/proc/self/fd/{fd}")
    max_samples = int(max_seconds * SAMPLE_RATE)
    try:
      samples = _read_native_pcm16(path, max_samples) if Path(name).suffix.lower() in LOSSLESS_EXTENSIONS else None
      if samples is None:
        samples = _decode_with_pyav(path, max_seconds)[:max_samples]
    except AudioDecodeError as e:
      # FFmpeg's messages quote the path it opened: the member's name means something.
      raise AudioDecodeError(name, e.problem.replace(str(path), name)) from None
  finally:
    os.close(fd)
  if samples.size == 0:
    raise AudioDecodeError(name, "no audio samples")
  return samples
