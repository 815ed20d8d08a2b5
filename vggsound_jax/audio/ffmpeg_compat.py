"""The choices the ffmpeg 5.1 command line makes for `-acodec pcm_s16le -ac 1 -ar 16000`, redone on PyAV.

The original converted every file with Debian's ffmpeg 5.1; PyAV bundles a newer FFmpeg whose
defaults differ. Three choices decide the samples (docs/decoding.md):

- the audio stream: with several, ffmpeg takes the one with the highest score, channels plus
  5,000,000 for the default disposition, the first one on ties;
- the channel layout: a stream that does not say which channels it holds (a wav without a
  channel mask) gets the default layout for its channel count, so 6 channels downmix as 5.1;
- the precision libswresample works in: 5.1 resamples and downmixes 8- and 16-bit audio in int16
  and everything else in float (double for 64-bit input), where newer versions use float for
  16-bit audio too, which moves a third to two thirds of the samples by 1 to 3.
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.filter
import numpy as np

# What ffmpeg 5.1 adds to a stream's score for the default disposition (channels are the rest).
_DEFAULT_DISPOSITION_SCORE = 5_000_000
# FFmpeg 5.1's default layout for each channel count, the first of its list of layouts with that
# count; newer versions have more (10 channels are 5.1.4, 16 are 9.1.6 instead of hexadecagonal).
DEFAULT_LAYOUTS = {
  1: "mono",
  2: "stereo",
  3: "2.1",
  4: "4.0",
  5: "5.0",
  6: "5.1",
  7: "6.1",
  8: "7.1",
  16: "hexadecagonal",
  24: "22.2",
}


def pick_audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
  """The audio stream ffmpeg 5.1 converts when no `-map` is given; None for a file without audio.

  5.1 also adds 100,000,000 for a stream that had packets while the file was probed; PyAV does
  not expose that flag, which only matters for a file with an audio stream that holds nothing.
  """
  best, best_score = None, 0
  for stream in container.streams.audio:
    score = stream.channels + _DEFAULT_DISPOSITION_SCORE * bool(stream.disposition & av.stream.Disposition.default)
    if score > best_score:  # strictly: the first stream wins ties
      best, best_score = stream, score
  return best


def internal_sample_format(sample_format: str) -> str:
  """libswresample 5.1's working format for converting `sample_format` to int16.

  With int16 output its rule reduces to: int16 for input of at most 2 bytes a sample, float up
  to 4 bytes, double beyond.
  """
  size = av.AudioFormat(sample_format).bytes
  if size <= 2:
    return "s16p"
  return "fltp" if size <= 4 else "dblp"


def input_layout(layout: av.AudioLayout) -> str | None:
  """The layout ffmpeg 5.1 assumes for a stream: its own, or the default one for its channel count.

  None when the stream does not name its channels and 5.1 has no default for their count: its
  command line cannot downmix those.
  """
  if layout.channels and all(channel.name == "NONE" for channel in layout.channels):
    return DEFAULT_LAYOUTS.get(layout.nb_channels)
  return layout.name


class MonoResampler:
  """Converts audio frames of one format to int16 mono at `output_rate`, as the ffmpeg 5.1 command line does.

  One `aresample` filter does the format conversion, downmix and resampling in a single
  libswresample context, as the filter that ffmpeg inserts does, with the working format of 5.1.
  """

  def __init__(self, sample_rate: int, sample_format: str, layout: str, output_rate: int) -> None:
    self.key = (sample_rate, sample_format, layout)
    self._graph = av.filter.Graph()
    source = self._graph.add(
      "abuffer",
      sample_rate=str(sample_rate),
      sample_fmt=sample_format,
      channel_layout=layout,
      time_base=f"1/{sample_rate}",
    )
    resample = self._graph.add(
      "aresample",
      osr=str(output_rate),
      ochl="mono",
      osf="s16",
      internal_sample_fmt=internal_sample_format(sample_format),
    )
    sink = self._graph.add("abuffersink")
    self._graph.link_nodes(source, resample, sink)
    self._graph.configure()
    self._time_base = Fraction(1, sample_rate)
    self._next_pts = 0

  def push(self, frame: av.AudioFrame | None) -> list[np.ndarray]:
    """Converts one frame (None: the end of the audio, which flushes the resampler)."""
    if frame is not None:
      # Timestamps renumbered from the sample count: they cannot change the samples (ffmpeg's
      # default resampler never stretches audio to fit them), and gaps or missing ones in a
      # file then never reach the filter.
      frame.pts, frame.time_base = self._next_pts, self._time_base
      self._next_pts += frame.samples
    self._graph.push(frame)
    out = []
    while True:
      try:
        out.append(self._graph.pull().to_ndarray().reshape(-1))
      except (av.BlockingIOError, EOFError):
        return out
