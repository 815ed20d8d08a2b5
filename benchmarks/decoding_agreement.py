"""How closely decoding agrees with the original's conversion, the ffmpeg command line, per codec.

  python benchmarks/decoding_agreement.py [--seconds 3] [--timing_seconds 10] [--timing_repeats 20]

Writes short sources with the ffmpeg command line (PCM wav of several sample types, rates and
layouts, FLAC, MP3, AAC, Opus, Vorbis), converts each with `ffmpeg -acodec pcm_s16le -ac 1 -ar
16000` and with `vggsound_jax.audio.decode.decode_audio`, and prints the fraction of identical samples
and the largest difference, next to those of PyAV's resampler with its default settings (what
this project did before, docs/decoding.md). Then times both ways on one wav. A benchmark, not a
test; needs `ffmpeg` on PATH.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import benchmark_utils
import numpy as np
import soundfile as sf
from absl import app, flags

from vggsound_jax.audio.decode import SAMPLE_RATE, decode_audio

_SECONDS = flags.DEFINE_float("seconds", 3.0, "Length of each source.", lower_bound=0.1)
_TIMING_REPEATS = flags.DEFINE_integer("timing_repeats", 20, "Timed runs of each way.", lower_bound=1)
_TIMING_SECONDS = flags.DEFINE_float("timing_seconds", 10.0, "Length of the 44.1 kHz stereo wav timed.", lower_bound=1)

# name: (source rate, channels (one count per audio stream), ffmpeg output options, file extension)
SOURCES = {
  **{
    f"wav {fmt} {rate / 1000:g} kHz {layout}": (rate, (channels,), ["-c:a", codec], "wav")
    for fmt, codec in (("s16", "pcm_s16le"), ("s24", "pcm_s24le"), ("f32", "pcm_f32le"))
    for rate in (44100, 48000)
    for layout, channels in (("stereo", 2), ("5.1", 6))
  },
  "flac s16 48 kHz stereo": (48000, (2,), ["-c:a", "flac", "-sample_fmt", "s16"], "flac"),
  "flac s24 48 kHz 5.1": (48000, (6,), ["-c:a", "flac", "-sample_fmt", "s32"], "flac"),
  "mp3 44.1 kHz stereo": (44100, (2,), ["-c:a", "libmp3lame", "-b:a", "192k"], "mp3"),
  "aac (m4a) 44.1 kHz stereo": (44100, (2,), ["-c:a", "aac", "-b:a", "192k"], "m4a"),
  "aac (m4a) 48 kHz 5.1": (48000, (6,), ["-c:a", "aac", "-b:a", "384k"], "m4a"),
  "opus 48 kHz stereo": (48000, (2,), ["-c:a", "libopus", "-b:a", "128k"], "opus"),
  # Neither stream marked default: ffmpeg converts the one with the most channels, the earlier
  # decoding the first one.
  "mka, s16 stereo + 5.1 streams": (48000, (2, 6), ["-c:a", "pcm_s16le", "-disposition:a", "0"], "mka"),
  "vorbis 44.1 kHz stereo": (44100, (2,), ["-c:a", "libvorbis", "-q:a", "5"], "ogg"),
}
_CONVERSION = ["-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE)]


def _ffmpeg(*args: str) -> bytes:
  return subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True, check=True).stdout


def _ffmpeg_version() -> str:
  return subprocess.run(
    ["ffmpeg", "-version"], capture_output=True, text=True, encoding="utf-8", check=True
  ).stdout.split()[2]


def _write_source(
  directory: Path, name: str, rate: int, channel_counts: tuple[int, ...], options: list, ext: str
) -> Path:
  inputs, maps = [], []
  t = np.arange(int(_SECONDS.value * rate)) / rate
  for i, channels in enumerate(channel_counts):
    tones = np.stack([np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    noise = np.random.default_rng(channels).normal(size=tones.shape)
    master = directory / f"master{i}.wav"
    sf.write(master, np.clip(0.3 * tones + 0.1 * noise, -1, 1).astype(np.float32), rate, subtype="FLOAT")
    inputs += ["-i", str(master)]
    maps += ["-map", f"{i}:a"]
  path = directory / f"{name.replace(' ', '_').replace('(', '').replace(')', '').replace(',', '')}.{ext}"
  _ffmpeg(*inputs, *maps, *options, str(path))
  return path


def _pyav_default(path: Path) -> np.ndarray:
  """The earlier decoding: the first audio stream through PyAV's resampler with its defaults."""
  chunks = []
  with av.open(str(path)) as container:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    for frame in container.decode(container.streams.audio[0]):
      chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
  return np.concatenate(chunks)


def _agreement(ours: np.ndarray, reference: np.ndarray) -> tuple[str, int]:
  """Fraction of identical samples (over the longer of the two) and the largest difference."""
  n = min(ours.size, reference.size)
  same = np.count_nonzero(ours[:n] == reference[:n]) / max(ours.size, reference.size, 1)
  diff = int(np.abs(ours[:n].astype(np.int32) - reference[:n]).max()) if n else 0
  length = "" if ours.size == reference.size else f" ({ours.size - reference.size:+d} samples)"
  return f"{same:.4f}{length}", diff


def main(argv):
  del argv
  if shutil.which("ffmpeg") is None:
    sys.exit("needs the ffmpeg command line: apt-get install ffmpeg")
  print(f"ffmpeg command line {_ffmpeg_version()}; PyAV {av.__version__} with {av.library_versions}")
  print(benchmark_utils.machine())
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    directory = Path(tmp)
    for name, (rate, channel_counts, options, ext) in SOURCES.items():
      path = _write_source(directory, name, rate, channel_counts, options, ext)
      reference = np.frombuffer(_ffmpeg("-i", str(path), *_CONVERSION, "-f", "s16le", "-"), np.int16)
      ours = _agreement(decode_audio(path, max_seconds=_SECONDS.value + 1), reference)
      rows.append([name, *ours, *_agreement(_pyav_default(path), reference)])
    benchmark_utils.print_table(
      f"Agreement with the ffmpeg command line ({_SECONDS.value:g} s sources)",
      ["source", "identical", "max abs diff", "identical (PyAV default)", "max abs diff (PyAV default)"],
      rows,
    )

    rate = 44100
    wav = directory / "timing.wav"
    x = np.random.default_rng(0).normal(scale=3000, size=(int(_TIMING_SECONDS.value * rate), 2))
    sf.write(wav, x.astype(np.int16), rate, subtype="PCM_16")
    ways = {
      "decode_audio (ffmpeg 5.1 recipe)": lambda: decode_audio(wav),
      "PyAV resampler, defaults": lambda: _pyav_default(wav),
      "ffmpeg command line (a process)": lambda: _ffmpeg("-i", str(wav), *_CONVERSION, "-f", "s16le", "-"),
    }
    # Interleaved, so that the load of a shared machine falls on every way alike.
    times = {name: [] for name in ways}
    for _ in range(_TIMING_REPEATS.value):
      for name, way in ways.items():
        start = time.perf_counter()
        way()
        times[name].append(time.perf_counter() - start)
    benchmark_utils.print_table(
      f"Decoding a {_TIMING_SECONDS.value:g} s 44.1 kHz stereo PCM-16 wav ({_TIMING_REPEATS.value} runs each)",
      ["way", "min seconds", "median seconds"],
      [[name, f"{min(t):.4f}", f"{statistics.median(t):.4f}"] for name, t in times.items()],
    )


if __name__ == "__main__":
  app.run(main)
