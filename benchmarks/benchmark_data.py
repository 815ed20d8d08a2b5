"""Data benchmark: dataset build throughput and input-pipeline throughput, on generated clips.

  python benchmarks/benchmark_data.py [--num_clips 64] [--format wav|flac|mp4|wav44k]
                                      [--build_workers 1,2] [--loader_workers 0,1,2]
                                      [--batch_size 256] [--crop_samples 0]

Writes `num_clips` 10 s fixture clips of one format into a temporary manual_dir, builds
`vggsound/full` from them with each decoding-process count (clips/s, and clips/s per
process), then measures where a training clip's time goes on one core (record read, feature
decoding, crop into the batch) and times the training loader over the built data with each
Grain worker count (clips/s delivered, batch --batch_size). A benchmark, not a test.
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
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Loader batch size.", lower_bound=1)
_READ_THREADS = flags.DEFINE_integer(
  "read_threads", 0, "Threads per loader process (data.read_threads).", lower_bound=0
)
_CROP = flags.DEFINE_integer("crop_samples", 0, "Random training crop in samples; 0: whole 10 s clips.", lower_bound=0)
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per worker count.", lower_bound=1)


def _write_fixtures(manual_dir: Path, num_clips: int, fmt: str) -> None:
  import av
  import numpy as np
  import soundfile as sf

  from vggsound_jax.audio.decode import CLIP_SECONDS, SAMPLE_RATE
  from vggsound_jax.labels import class_names

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


def _per_clip(seconds: float, clips: int) -> str:
  return f"{seconds / clips * 1e6:8.1f} us/clip  ({clips / seconds:8.0f} clips/s)"


def _best_of(repeats: int, fn):  # noqa: ANN001, ANN202
  best, result = float("inf"), None
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def _uncompressed_reads(records: list, indices: list, data_dir: Path) -> list:
  """Reads `records` back one at a time from an ArrayRecord file written without compression
  (the build's files use zstd level 3): what the read would cost with that choice."""
  from array_record.python import array_record_data_source, array_record_module

  path = data_dir / "uncompressed.array_record"
  if not path.exists():
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1,uncompressed")
    for record in records:
      writer.write(record)
    writer.close()
  source = array_record_data_source.ArrayRecordDataSource([str(path)])
  return [source[i] for i in range(len(indices))]


def _stages(data_dir: Path, source) -> None:  # noqa: ANN001
  """Where one training batch's time goes, on one core: each stage of the loader on its own."""
  import numpy as np
  import tensorflow_datasets as tfds

  from vggsound_jax import input_pipeline

  builder = tfds.builder("vggsound/full", data_dir=str(data_dir))
  raw = builder.as_data_source("train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  features = builder.info.features
  n = min(_BATCH_SIZE.value, len(raw))
  indices = np.random.default_rng(0).permutation(len(raw))[:n].tolist()
  print(f"one core, stage by stage ({n} clips a batch, best of 3):")
  seconds, records = _best_of(3, lambda: [raw[i] for i in indices])
  print(f"  record read, one at a time     {_per_clip(seconds, n)}  ({len(records[0]) / 1e3:.0f} kB a record)")
  seconds, records = _best_of(3, lambda: raw.__getitems__(indices))
  print(f"  record read, batched           {_per_clip(seconds, n)}")
  seconds, _ = _best_of(3, lambda: _uncompressed_reads(records, indices, data_dir))
  print(f"  record read, uncompressed file {_per_clip(seconds, n)}  (the same records, written without zstd)")
  seconds, elements = _best_of(3, lambda: [features.deserialize_example_np(r) for r in records])
  print(f"  feature decoding (tf.Example)  {_per_clip(seconds, n)}")
  length = _CROP.value or input_pipeline.CLIP_SAMPLES
  out = np.empty((n, length), np.int16)

  def crop() -> None:
    for row, element in enumerate(elements):
      input_pipeline._fill_tiled(out[row], element["audio"], 1000)  # noqa: SLF001 - the stage itself

  seconds, _ = _best_of(3, crop)
  print(f"  tile/crop into the batch       {_per_clip(seconds, n)}")
  make_batch = input_pipeline._TrainBatch(  # noqa: SLF001
    source,
    seed=0,
    global_batch_size=n,
    rows=np.arange(n),
    num_samples=input_pipeline.CLIP_SAMPLES,
    crop_samples=_CROP.value or None,
  )
  seconds, _ = _best_of(3, lambda: make_batch(0))
  print(f"  the whole batch (all stages)   {_per_clip(seconds, n)}")


def main(argv):
  del argv
  from vggsound_jax import input_pipeline
  from vggsound_jax.datasets import vggsound

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

    source = input_pipeline.data_source(data_dir, "train")
    _stages(data_dir, source)
    length = f"{_CROP.value / 16000:g} s crops" if _CROP.value else "10 s clips"
    print(f"train loader ({length}, batch {_BATCH_SIZE.value}, {_READ_THREADS.value} read threads per process):")
    for workers in (int(w) for w in _LOADER_WORKERS.value):
      iterator = input_pipeline.train_batches(
        source,
        global_batch_size=_BATCH_SIZE.value,
        seed=0,
        rows=range(_BATCH_SIZE.value),
        start_step=0,
        num_steps=_BATCHES.value + 1,
        crop_samples=_CROP.value or None,
        worker_count=workers,
        read_threads=_READ_THREADS.value,
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
