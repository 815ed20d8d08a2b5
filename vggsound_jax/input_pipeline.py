"""Input pipeline: Grain over the built TFDS data, for training and evaluation.

Reading goes through `tfds.data_source` (ArrayRecord random access), which needs neither
TensorFlow nor tf.data. Every batch is defined globally: example g of the run is at row
g % B of global batch g // B, and each JAX process reads only the rows its devices hold
(`sharding.process_rows`). What example g is, and its random crop, depend only on the seed
and g, so the same config trains the same model whatever the split of devices into processes
and whatever the number of loader workers, and a run resumes from a step number alone: no
iterator state is saved.

Training: a new shuffle every epoch, the waveform tiled to 10 s exactly as
`vggsound_jax.audio.decode.to_clip` (docs/original_pipeline.md#front-end), then optionally a random
crop; a whole batch is the unit of work (each clip copied once, straight into its row), and
each Grain worker process makes whole batches. Evaluation: one pass in order, the last global
batch padded and marked with `mask`.

`source` may be any random-access sequence of dicts with "audio" (1-D int16) and "label".
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from vggsound_jax import distributed
from vggsound_jax.audio.decode import CLIP_SAMPLES, to_clip
from vggsound_jax.datasets import audioset as audioset_builder
from vggsound_jax.datasets import vggsound as vggsound_builder
from vggsound_jax.errors import ConfigError

SYNTHETIC = "synthetic"
# Stands in for a missing example in a padded evaluation batch.
PAD_INDEX = -1


def _builder(data_dir: str | os.PathLike, config: str) -> tfds.core.DatasetBuilder:
  return tfds.builder(f"{vggsound_builder.NAME}/{config}", data_dir=os.fspath(data_dir))


def data_source(data_dir: str | os.PathLike, split: str, config: str = "full") -> Sequence[dict]:
  """Random-access source of a built split: element i is a dict of numpy values."""
  builder = _builder(data_dir, config)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"{builder.data_path}: {vggsound_builder.NAME}/{config} is not built; build it with"
      f" vggsound-build --data_dir {data_dir}" + (" --config synthetic" if config == SYNTHETIC else " --manual_dir DIR")
    )
  return builder.as_data_source(split=split)


def ensure_synthetic(data_dir: str | os.PathLike) -> None:
  """Builds vggsound/synthetic into data_dir unless it is already there (a few seconds).

  Runs started at once on the same data_dir build it once: the builder holds a lock file in
  data_dir, and whoever comes second finds it built.
  """
  data_dir = Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  with open(data_dir / f".{vggsound_builder.NAME}-{SYNTHETIC}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
    if not _builder(data_dir, SYNTHETIC).is_prepared():
      vggsound_builder.build(data_dir, config=SYNTHETIC)


def class_names(data_dir: str | os.PathLike, config: str = "full") -> tuple[str, ...]:
  """The label names of a config, in model output order."""
  return tuple(_builder(data_dir, config).info.features["label"].names)


def _check_worker_count(worker_count: int) -> None:
  if worker_count < 0:
    raise ConfigError("data.worker_count", f"{worker_count} is negative")
  # Grain's worker processes read absl flags; outside an absl app (a notebook, pytest)
  # nothing has parsed them, so they are taken at their defaults.
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# Set in Grain worker processes only (by their start-up, `_start_worker`): a batch made there is
# allocated in shared memory, which Grain hands to the training process without copying it.
_in_worker = {"shared_memory": False}


def _start_worker(parent: int, worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: batches into shared memory, and exit when the training process
  `parent` dies (even by SIGKILL).

  `parent` is the pid the training process gave, not this worker's parent at start-up: a
  worker still starting when the training process died has been handed to init already.
  """
  del worker_index, worker_count
  _in_worker["shared_memory"] = True

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)  # reparented: the parent is gone, nobody will read what this worker makes

  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _iterate(examples: grain.MapDataset, local_batch: int, worker_count: int) -> Iterator[dict]:
  """Batches of `examples` in order; worker processes change only the speed, never the batches."""
  _check_worker_count(worker_count)
  dataset = examples.to_iter_dataset()
  if worker_count > 0:
    # Workers take interleaved slices of single examples and Grain merges them back in order;
    # batching after the merge keeps the batches independent of the number of workers.
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=worker_count),
      worker_init_fn=functools.partial(_start_worker, os.getpid()),
    )
  return iter(dataset.batch(local_batch, drop_remainder=True))


def _iterate_batches(batches: grain.MapDataset, worker_count: int, read_threads: int, prefetch: int) -> Iterator[dict]:
  """`batches` in order; each worker process makes whole batches (every worker_count-th one),
  with `read_threads` threads and up to `prefetch` batches made ahead (Grain's default, 500
  elements, would be 40 GB of 10 s batches of 256)."""
  _check_worker_count(worker_count)
  dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
  if worker_count > 0:
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=worker_count),
      worker_init_fn=functools.partial(_start_worker, os.getpid()),
    )
  return iter(dataset)


def _check_rows(rows: Sequence[int], global_batch_size: int) -> np.ndarray:
  rows = np.asarray(rows, np.int64)
  if global_batch_size <= 0:
    raise ConfigError("batch_size", f"{global_batch_size} is not a positive number of clips")
  if not len(rows) or rows.min() < 0 or rows.max() >= global_batch_size:
    raise ValueError(f"rows {rows.tolist()} are not rows of a global batch of {global_batch_size}")
  return rows


def _fill_tiled(out: np.ndarray, clip: np.ndarray, start: int) -> None:
  """`out[:] = to_clip(clip, n)[start : start + len(out)]` for any n that holds the window: the
  clip repeated end to end, read from `start`, copied once without building the tiled clip."""
  if clip.size == 0:
    raise ValueError("cannot tile an empty waveform")
  position, filled = start % clip.size, 0
  while filled < out.size:
    take = min(clip.size - position, out.size - filled)
    out[filled : filled + take] = clip[position : position + take]
    filled, position = filled + take, 0


class _TrainBatch:
  """Rows `rows` of global training batch `step`, made whole: each clip is copied once,
  straight into its row (a batch, not single examples, is the unit of work: no per-example
  pipeline overhead, no tiled copy, no stacking).

  Everything is a function of an example's global position g = step * global_batch_size + row:
  which record (a new shuffle every epoch), and its random crop (a generator seeded with
  (seed, g)). So the batches, and the model trained on them, depend neither on how the devices
  are split into processes nor on the number of loader workers, and a run resumes at any step
  by starting from it.
  """

  def __init__(
    self,
    source: Sequence[dict],
    *,
    seed: int,
    global_batch_size: int,
    rows: np.ndarray,
    num_samples: int,
    crop_samples: int | None,
  ) -> None:
    if crop_samples is not None and not 0 < crop_samples <= num_samples:
      raise ConfigError("data.crop_samples", f"{crop_samples} is not in (0, num_samples={num_samples}]")
    self.source, self.seed, self.global_batch_size, self.rows = source, seed, global_batch_size, rows
    self.num_samples, self.crop_samples = num_samples, crop_samples
    self._epoch, self._order = -1, np.empty(0, np.int64)

  def _record(self, position: int) -> int:
    """The record at `position` of an endless stream of per-epoch shuffles. One numpy
    permutation per epoch, kept: looking each position up in Grain's shuffle cost ~100 us."""
    epoch, i = divmod(position, len(self.source))
    if epoch != self._epoch:
      self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
    return int(self._order[i])

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    positions = int(step) * self.global_batch_size + self.rows
    # One record at a time: ArrayRecord's batched read (`__getitems__`, a thread pool) was
    # slower per clip on one core (benchmarks/benchmark_data.py).
    elements = [self.source[self._record(int(g))] for g in positions]
    # In a worker, the batch is made in shared memory: 80 MB of 10 s clips at batch 256 would
    # otherwise be copied there once more by Grain.
    allocate = grain.multiprocessing.SharedMemoryArray if _in_worker["shared_memory"] else np.empty
    audio = allocate((len(self.rows), self.crop_samples or self.num_samples), np.int16)
    for row, (element, position) in enumerate(zip(elements, positions, strict=True)):
      start = 0
      if self.crop_samples is not None:
        rng = np.random.default_rng([self.seed, int(position)])
        start = int(rng.integers(0, self.num_samples - self.crop_samples + 1))
      _fill_tiled(audio[row], np.asarray(element["audio"], np.int16), start)
    label = np.stack([np.asarray(element["label"], np.int32) for element in elements])
    return {"audio": audio, "label": label}


def train_batches(
  source: Sequence[dict],
  *,
  global_batch_size: int,
  seed: int,
  rows: Sequence[int],
  start_step: int,
  num_steps: int,
  num_samples: int = CLIP_SAMPLES,
  crop_samples: int | None = None,
  worker_count: int = 0,
  read_threads: int = 2,
  prefetch_batches: int = 2,
) -> Iterator[dict]:
  """This process's part of the training batches `start_step` .. `num_steps - 1`.

  Yields {"audio": int16 (len(rows), crop_samples or num_samples), "label": int32 (len(rows),)}:
  rows `rows` of each global batch, which `sharding.process_rows` gives for the mesh.
  """
  rows = _check_rows(rows, global_batch_size)
  if not len(source):
    raise ValueError("the training split has no examples")
  make_batch = _TrainBatch(
    source,
    seed=seed,
    global_batch_size=global_batch_size,
    rows=rows,
    num_samples=num_samples,
    crop_samples=crop_samples,
  )
  batches = grain.MapDataset.range(start_step, num_steps).map(make_batch)
  return _iterate_batches(batches, worker_count, read_threads, prefetch_batches)


class _EvalExample:
  """Local example `i`: global position g in one ordered pass, padded with masked dummies."""

  def __init__(self, source: Sequence[dict], *, global_batch_size: int, rows: np.ndarray, num_samples: int) -> None:
    self.source, self.global_batch_size, self.rows, self.num_samples = source, global_batch_size, rows, num_samples

  def __call__(self, i: int) -> dict[str, Any]:
    step, k = divmod(int(i), len(self.rows))
    position = step * self.global_batch_size + int(self.rows[k])
    if position < len(self.source):
      element = self.source[position]
      audio, label, mask, index = element["audio"], element["label"], True, position
      clip_id = element.get("clip_id", b"")
    else:
      audio, label, mask, index, clip_id = np.zeros(1, np.int16), 0, False, PAD_INDEX, b""
    return {
      "audio": to_clip(np.asarray(audio, np.int16), self.num_samples),
      "label": np.int32(label),
      "mask": np.bool_(mask),
      "index": np.int64(index),
      "clip_id": clip_id if isinstance(clip_id, bytes) else str(clip_id).encode(),
    }


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return max(math.ceil(num_examples / global_batch_size), 1)


def eval_batches(
  source: Sequence[dict],
  *,
  global_batch_size: int,
  rows: Sequence[int],
  num_samples: int = CLIP_SAMPLES,
  worker_count: int = 0,
) -> Iterator[dict]:
  """This process's part of one ordered pass in which every example appears exactly once.

  Yields {"audio", "label", "mask": bool, "index": int64, "clip_id": bytes} for rows `rows` of
  each global batch. The data is padded to a whole number of global batches, so every process
  yields the same number of batches (collectives stay in step); padding has mask False and
  index -1.
  """
  rows = _check_rows(rows, global_batch_size)
  example = _EvalExample(source, global_batch_size=global_batch_size, rows=rows, num_samples=num_samples)
  examples = grain.MapDataset.range(num_eval_batches(len(source), global_batch_size) * len(rows)).map(example)
  return _iterate(examples, len(rows), worker_count)


# ----------------------------------------------------------------------------- what a run reads


@dataclasses.dataclass
class Data:
  """What a run reads: the class names and a random-access source per split."""

  class_names: tuple[str, ...]
  train: Sequence[dict] | None
  eval: dict[str, Sequence[dict]]


def load_data(config: ml_collections.ConfigDict, *, train: bool = True) -> Data:
  """Opens the configured data set (`config.data`), building the synthetic one on first use.

  In a multi-process run process 0 builds it while the others wait, then all open it.
  """
  data_dir = os.path.expanduser(config.data.data_dir)
  if config.data.config == SYNTHETIC:
    if jax.process_index() == 0:
      ensure_synthetic(data_dir)
    distributed.barrier("synthetic data set built")
  names = class_names(data_dir, config.data.config)
  if not train:
    train_source = None
  elif config.data.get("train_dataset", vggsound_builder.NAME) == audioset_builder.NAME:
    train_source = audioset_builder.data_source(data_dir, config.data.train_split)  # row A: multi-hot labels
  else:
    train_source = data_source(data_dir, config.data.train_split, config.data.config)
  eval_sources = {split: data_source(data_dir, split, config.data.config) for split in config.eval.splits}
  return Data(names, train_source, eval_sources)


def train_iterator(
  config: ml_collections.ConfigDict, source: Sequence[dict], rows: Sequence[int], *, start_step: int, num_steps: int
) -> Iterator[dict]:
  """The training batches `config` asks for, from `start_step` on, rows `rows` of each."""
  return train_batches(
    source,
    global_batch_size=config.batch_size,
    seed=config.seed,
    rows=rows,
    start_step=start_step,
    num_steps=num_steps,
    num_samples=config.data.num_samples,
    crop_samples=config.data.crop_samples or None,
    worker_count=config.data.worker_count,
    read_threads=config.data.read_threads,
    prefetch_batches=config.data.prefetch_batches,
  )


def eval_iterator(config: ml_collections.ConfigDict, source: Sequence[dict], rows: Sequence[int]) -> Iterator[dict]:
  """One padded pass over `source`, as `config.eval` asks, rows `rows` of each global batch."""
  return eval_batches(
    source,
    global_batch_size=config.eval.batch_size,
    rows=rows,
    num_samples=config.eval.num_samples,
    worker_count=config.data.worker_count,
  )
