"""Host-side audio: any file to 16 kHz mono int16, the samples of the original's
`ffmpeg -acodec pcm_s16le -ac 1 -ar 16000` (docs/decoding.md), streamed in chunks; tiling to 10 s.

Invariants: memory is bounded by the chunk whatever the file's length; a small hostile file
takes neither gigabytes nor minutes (sample rate and channel count are checked from the header
and on every frame; `decode_audio` reads at most `max_seconds`); float audio with NaN or inf is
refused, never turned into -32768.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from vggsound_jax.audio.ffmpeg_compat import DEFAULT_LAYOUTS, MonoResampler, input_layout, pick_audio_stream
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
# Chunks in which `decode_audio` collects a file; any size gives the same samples.
_DECODE_CHUNK_SECONDS = 10.0
# In-memory waveforms go through the resampler in pieces of this many input samples, so that
# converting one costs little more memory than the waveform itself.
_WAVEFORM_BLOCK = 65_536
_FLOAT_FORMATS = ("flt", "fltp", "dbl", "dblp")
# Sample formats of in-memory waveforms: those a wav file can hold, as FFmpeg decodes them.
_WAVEFORM_FORMATS = {
  np.dtype(np.uint8): "u8",
  np.dtype(np.int16): "s16",
  np.dtype(np.int32): "s32",
  np.dtype(np.float32): "flt",
  np.dtype(np.float64): "dbl",
}


class AudioDecodeError(PathError):
  """A file that cannot be turned into audio."""


def stream_audio(
  path: str | os.PathLike, *, chunk_seconds: float = 10.0, max_seconds: float | None = None
) -> Iterator[np.ndarray]:
  """Decodes an audio or video file to 16 kHz mono int16, in 1-D chunks of `chunk_seconds`.

  The last chunk is shorter. The chunks together are what `ffmpeg -ac 1 -ar 16000 -acodec
  pcm_s16le` (5.1) gives, cut at `max_seconds` (None: the whole file). Only a chunk or two are
  held in memory at a time. The iterator raises AudioDecodeError for a missing, unreadable,
  non-regular, empty or out-of-limits file, and for float audio with non-finite samples.
  """
  chunk_samples = int(chunk_seconds * SAMPLE_RATE)
  if chunk_samples < 1:
    raise ValueError(f"chunk_seconds must be at least 1/{SAMPLE_RATE}, got {chunk_seconds}")
  if max_seconds is not None and max_seconds < 0:
    raise ValueError(f"max_seconds must be >= 0 or None, got {max_seconds}")
  max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
  path = Path(path)
  return _stream(path, path.suffix, chunk_samples, max_samples)


def decode_audio(path: str | os.PathLike, max_seconds: float = MAX_SECONDS) -> np.ndarray:
  """Decodes the first `max_seconds` of an audio or video file to 1-D int16 at 16 kHz, mono.

  The concatenated chunks of `stream_audio`; raises AudioDecodeError as it does.
  """
  return np.concatenate(list(stream_audio(path, chunk_seconds=_DECODE_CHUNK_SECONDS, max_seconds=max_seconds)))


def _stream(path: Path, suffix: str, chunk_samples: int, max_samples: int | None) -> Iterator[np.ndarray]:
  _check_readable(path)
  blocks = None
  if suffix.lower() in LOSSLESS_EXTENSIONS:
    blocks = _read_native_pcm16(path, chunk_samples, max_samples)
  if blocks is None:
    blocks = _decode_with_pyav(path, chunk_samples, max_samples)
  empty = True
  for block in blocks:
    if block.size:
      empty = False
      yield block
  if empty:
    raise AudioDecodeError(path, "no audio samples")


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


def _format_problem(rate: int | None, channels: int | None) -> str | None:
  if rate is not None and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
    return f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
  if channels is not None and not 1 <= channels <= MAX_CHANNELS:
    return f"{channels} channels (1 to {MAX_CHANNELS} are read)"
  return None


def _check_format(path: Path, rate: int | None, channels: int | None) -> None:
  problem = _format_problem(rate, channels)
  if problem:
    raise AudioDecodeError(path, problem)


def _read_native_pcm16(path: Path, chunk_samples: int, max_samples: int | None) -> Iterator[np.ndarray] | None:
  """Reads a 16 kHz mono PCM-16 wav/flac as it is (what ffmpeg gives too); None when it needs converting."""
  # soundfile encodes str names strictly; the bytes of the name work for any name.
  name = os.fsencode(path)
  try:
    info = sf.info(name)
  except (sf.LibsndfileError, RuntimeError):
    return None  # PyAV gets a chance, and gives the error if it fails too.
  _check_format(path, info.samplerate, info.channels)
  if (info.samplerate, info.channels, info.subtype) != (SAMPLE_RATE, 1, "PCM_16"):
    return None
  return _native_blocks(path, name, chunk_samples, max_samples)


def _native_blocks(path: Path, name: bytes, chunk_samples: int, max_samples: int | None) -> Iterator[np.ndarray]:
  try:
    yield from sf.blocks(
      name, blocksize=chunk_samples, frames=-1 if max_samples is None else max_samples, dtype="int16"
    )
  except (sf.LibsndfileError, RuntimeError) as e:
    raise AudioDecodeError(path, f"cannot decode: {e}") from None


class _Chunker:
  """Cuts a sequence of arrays into chunks of one size, keeping at most `limit` samples."""

  def __init__(self, chunk_samples: int, limit: int | None) -> None:
    self._chunk = chunk_samples
    self._left = limit
    self._parts: list[np.ndarray] = []
    self._size = 0

  @property
  def full(self) -> bool:
    return self._left == 0

  def add(self, arrays: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for array in arrays:
      if self._left is not None:
        array = array[: self._left]
        self._left -= array.size
      self._parts.append(array)
      self._size += array.size
    while self._size >= self._chunk:
      joined = np.concatenate(self._parts)
      yield joined[: self._chunk]
      self._parts, self._size = [joined[self._chunk :]], self._size - self._chunk

  def finish(self) -> Iterator[np.ndarray]:
    if self._size:
      yield np.concatenate(self._parts)


def _decode_with_pyav(path: Path, chunk_samples: int, max_samples: int | None) -> Iterator[np.ndarray]:
  chunker = _Chunker(chunk_samples, max_samples)
  try:
    with av.open(str(path)) as container:
      stream = pick_audio_stream(container)
      if stream is None:
        raise AudioDecodeError(path, "no audio stream")
      _check_format(path, stream.sample_rate or None, stream.channels or None)
      resampler = None
      for frame in container.decode(stream):
        # A stream may change format mid-way: every frame is held to the same limits.
        _check_format(path, frame.sample_rate, frame.layout.nb_channels)
        if frame.format.name in _FLOAT_FORMATS and not np.isfinite(frame.to_ndarray()).all():
          raise AudioDecodeError(path, "non-finite samples")
        layout = input_layout(frame.layout)
        if layout is None:
          raise AudioDecodeError(path, f"{frame.layout.nb_channels} channels of no known layout cannot be downmixed")
        key = (frame.sample_rate, frame.format.name, layout)
        if resampler is None or resampler.key != key:
          # As ffmpeg does on a format change: finish the old conversion, start a new one.
          if resampler is not None:
            yield from chunker.add(resampler.push(None))
          resampler = MonoResampler(*key, SAMPLE_RATE)
        yield from chunker.add(resampler.push(frame))
        if chunker.full:
          # What was produced is final: the resampler's output does not depend on what follows.
          break
      else:
        if resampler is not None:
          yield from chunker.add(resampler.push(None))
      yield from chunker.finish()
  except AudioDecodeError:
    raise
  except (av.FFmpegError, ValueError, OSError) as e:
    raise AudioDecodeError(path, f"cannot decode: {e}") from None


def convert_waveform(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """Converts an in-memory waveform to 1-D int16 at 16 kHz, mono, as ffmpeg converts a wav file of it.

  `samples` has shape (T,) or (T, channels) and dtype uint8, int16, int32, float32 or float64
  (floats in [-1, 1]; beyond is clipped). Raises ValueError (one line) for other shapes and
  types, non-finite samples, and rates or channel counts outside the decoding limits.
  """
  samples = np.asarray(samples)
  sample_format = _WAVEFORM_FORMATS.get(samples.dtype.newbyteorder("="))
  if sample_format is None:
    raise ValueError(f"waveform of dtype {samples.dtype}: expected uint8, int16, int32, float32 or float64")
  if samples.ndim not in (1, 2):
    raise ValueError(f"waveform of shape {samples.shape}: expected (samples,) or (samples, channels)")
  samples = (samples[:, None] if samples.ndim == 1 else samples).astype(samples.dtype.newbyteorder("="), copy=False)
  if not isinstance(sample_rate, (int, np.integer)):
    raise ValueError(f"sample rate {sample_rate!r} is not an integer")
  problem = _format_problem(int(sample_rate), samples.shape[1])
  if problem:
    raise ValueError(f"waveform: {problem}")
  if sample_format in _FLOAT_FORMATS and not np.isfinite(samples).all():
    raise ValueError("waveform: non-finite samples")
  if (sample_rate, samples.shape[1], sample_format) == (SAMPLE_RATE, 1, "s16") or not samples.size:
    return samples[:, 0].astype(np.int16)
  # A wav file does not say which channels it holds: ffmpeg takes the default layout.
  layout = DEFAULT_LAYOUTS.get(samples.shape[1])
  if layout is None:
    raise ValueError(f"waveform: {samples.shape[1]} channels of no known layout cannot be downmixed")
  resampler = MonoResampler(int(sample_rate), sample_format, layout, SAMPLE_RATE)
  out = []
  for start in range(0, samples.shape[0], _WAVEFORM_BLOCK):
    block = np.ascontiguousarray(samples[start : start + _WAVEFORM_BLOCK])
    frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format=sample_format, layout=layout)
    frame.sample_rate = int(sample_rate)
    out.extend(resampler.push(frame))
  out.extend(resampler.push(None))
  return np.concatenate(out) if out else np.zeros(0, np.int16)


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
      return np.concatenate(list(_stream(path, Path(name).suffix, CLIP_SAMPLES, max_samples)))
    except AudioDecodeError as e:
      # FFmpeg's messages quote the path it opened: the member's name means something.
      raise AudioDecodeError(name, e.problem.replace(str(path), name)) from None
  finally:
    os.close(fd)
