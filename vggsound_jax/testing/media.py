"""Writing media files for test and benchmark fixtures."""

from __future__ import annotations

import os

import av
import numpy as np

from vggsound_jax.audio.decode import SAMPLE_RATE


def write_mp4(path: str | os.PathLike, samples: np.ndarray, fs: int = SAMPLE_RATE) -> None:
  """An mp4 holding `samples` (1-D int16) as AAC audio, as the VGGSound videos carry it."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream("aac", rate=fs)
    stream.layout = "mono"
    frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
    frame.sample_rate = fs
    for packet in stream.encode(frame):
      container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)
