"""Data benchmark: dataset build throughput and input-pipeline throughput, on generated clips.

  python benchmarks/benchmark_data.py [--num_clips 64] [--format wav|flac|mp4|wav44k]
                                      [--build_workers 1,2] [--loader_workers 0,1,2]

Writes `num_clips` 10 s fixture clips of one format into a temporary manual_dir, builds
`vggsound/full` from them with each decoding-process count (clips/s, and clips/s per
process), then times the training loader over the built data with each Grain worker count
(clips/s delivered, 10 s clips, batch --batch_size). A benchmark, not a test.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

from absl import app, flags

_NUM_CLIPS = flags.DEFINE_integer("num_clips", 64, "Fixture clips to build.", lower_bound=1)
_FORMAT = flags.DEFINE_enum("format", "mp4", ["wav", "flac", "mp4", "wav44k"], "Clip format.")
_BUILD_WORKERS = flags.DEFINE_list("build_workers", ["1", str(os.cpu_count() or 1)], "Decoding process counts to time.")
_LOADER_WORKERS = flags.DEFINE_list("loader_workers", ["0", "1", "2"], "Grain worker counts.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Loader batch size.", lower_bound=1)
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per worker count.", lower_bound=1)


def _write_fixtures(manual_dir: Path, num_clips: int, fmt: str) -> None:
  import av  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import soundfile as sf  # noqa: PLC0415

  from vggsound_jax.audio.decode import CLIP_SECONDS, SAMPLE_RATE  # noqa: PLC0415
  from vggsound_jax.labels import class_names  # noqa: PLC0415

  names = class_names()
  rng = np.random.default_rng(0)
  rate = 44100 if fmt == "wav44k" else SAMPLE_RATE
  rows = []
  for i in range(num_clips):
    samples = (rng.standard_normal(CLIP_SECONDS * rate) * 3000).astype(np.int16)
    stem = f"bench{i:05d}_000000"
    if fmt == "mp4":
      with av.open(str(manual_dir / f"{stem}.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
          container.mux(packet)
    elif fmt == "wav44k":
      sf.write(manual_dir / f"{stem}.wav", np.stack([samples, samples], 1), rate, subtype="PCM_16")
    else:
      sf.write(manual_dir / f"{stem}.{fmt}", samples, rate, subtype="PCM_16")
    rows.append([f"bench{i:05d}", 0, names[i % len(names)], "train"])
  with open(manual_dir / "vggsound.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)


def main(argv):
  del argv
  from vggsound_jax import input_pipeline  # noqa: PLC0415
  from vggsound_jax.datasets import vggsound  # noqa: PLC0415

  root = Path(tempfile.mkdtemp(prefix="vggsound_bench_"))
  try:
    manual_dir = root / "manual"
    manual_dir.mkdir()
    _write_fixtures(manual_dir, _NUM_CLIPS.value, _FORMAT.value)
    print(f"{_NUM_CLIPS.value} clips of 10 s, {_FORMAT.value}; {os.cpu_count()} cores")
    print("build (decode + write array_record):")
    data_dir = None
    for workers in (int(w) for w in _BUILD_WORKERS.value):
      data_dir = root / f"data{workers}"
      start = time.perf_counter()
      vggsound.build(data_dir, manual_dir=manual_dir, num_workers=workers)
      seconds = time.perf_counter() - start
      rate = _NUM_CLIPS.value / seconds
      print(
        f"  {workers} processes: {rate:8.1f} clips/s  {rate / workers:8.1f} clips/s per process"
        f"  ({seconds:.1f} s, including process start-up)"
      )

    print(f"train loader (10 s clips, batch {_BATCH_SIZE.value}):")
    source = input_pipeline.data_source(data_dir, "train")
    for workers in (int(w) for w in _LOADER_WORKERS.value):
      iterator = input_pipeline.train_batches(
        source,
        global_batch_size=_BATCH_SIZE.value,
        seed=0,
        rows=range(_BATCH_SIZE.value),
        start_step=0,
        num_steps=_BATCHES.value + 1,
        worker_count=workers,
      )
      next(iterator)  # start-up (worker processes) is not throughput
      start = time.perf_counter()
      for _ in range(_BATCHES.value):
        next(iterator)
      rate = _BATCHES.value * _BATCH_SIZE.value / (time.perf_counter() - start)
      print(f"  {workers} workers: {rate:8.1f} clips/s")
      del iterator
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
