"""Input pipeline: Grain over the built TFDS data, for training and evaluation.

Reading goes through `tfds.data_source` (ArrayRecord random access), which needs neither
TensorFlow nor tf.data. Each JAX process reads a disjoint shard and yields its local part
of the global batch (`global_batch_size // shard_count` examples); the trainer assembles the
global array for the device mesh from those.

Training is an infinite, seeded stream: a new shuffle every epoch, the waveform tiled to
10 s exactly as `vggsound_jax.audio.to_clip` (docs/original_pipeline.md#front-end), then optionally a random
crop whose offset comes from Grain's per-record generator, so a resumed iterator
(`get_state()` / `set_state()`) replays exactly the examples and crops it would have seen.
Evaluation is one pass in order; the last batch is padded and carries a mask.

`source` may be any random-access sequence of dicts with "audio" (1-D int16) and "label".
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from vggsound_jax.audio import CLIP_SAMPLES, to_clip
from vggsound_jax.datasets import vggsound as vggsound_builder

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
      f" scripts/build_dataset.py --data_dir {data_dir}"
      + (" --config synthetic" if config == SYNTHETIC else " --manual_dir DIR")
    )
  return builder.as_data_source(split=split)


def ensure_synthetic(data_dir: str | os.PathLike) -> None:
  """Builds vggsound/synthetic into data_dir unless it is already there (a few seconds)."""
  if not _builder(data_dir, SYNTHETIC).is_prepared():
    vggsound_builder.build(data_dir, config=SYNTHETIC)


def class_names(data_dir: str | os.PathLike, config: str = "full") -> tuple[str, ...]:
  """The label names of a config, in model output order."""
  return tuple(_builder(data_dir, config).info.features["label"].names)


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} is not in [0, {shard_count})")
  return shard_index, shard_count


def _check_worker_count(worker_count: int) -> None:
  # Grain's worker processes read absl flags; outside an absl app (a notebook, pytest)
  # nothing has parsed them, so they are taken at their defaults.
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _local_batch(global_batch_size: int, shard_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % shard_count:
    raise ValueError(
      f"global_batch_size {global_batch_size} is not a positive multiple of the shard count {shard_count}"
    )
  return global_batch_size // shard_count


class TileAndCrop(grain.transforms.RandomMap):
  """Tiles the waveform to `num_samples`, then takes a random `crop_samples` window."""

  def __init__(self, num_samples: int = CLIP_SAMPLES, crop_samples: int | None = None) -> None:
    if crop_samples is not None and not 0 < crop_samples <= num_samples:
      raise ValueError(f"crop_samples {crop_samples} is not in (0, num_samples={num_samples}]")
    self.num_samples = num_samples
    self.crop_samples = crop_samples

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    audio = to_clip(np.asarray(element["audio"], np.int16), self.num_samples)
    if self.crop_samples is not None:
      start = rng.integers(0, self.num_samples - self.crop_samples + 1)
      audio = audio[start : start + self.crop_samples]
    return {"audio": audio, "label": np.int32(element["label"])}


def train_loader(
  source: Sequence[dict],
  *,
  global_batch_size: int,
  seed: int,
  num_samples: int = CLIP_SAMPLES,
  crop_samples: int | None = None,
  worker_count: int = 0,
  shard_index: int | None = None,
  shard_count: int | None = None,
  worker_buffer_size: int = 1,
) -> grain.DataLoader:
  """Infinite shuffled training batches of this process's shard.

  iter(loader) yields {"audio": int16 (local_batch, crop_samples or num_samples),
  "label": int32 (local_batch,)}. The shards are disjoint (records beyond an even split are
  left out of every shard); each epoch reshuffles. The iterator's get_state()/set_state()
  resume exactly; the state is only valid for a loader built with the same arguments.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  local_batch = _local_batch(global_batch_size, shard_count)
  _check_worker_count(worker_count)
  shard_options = grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True)
  if len(source) // shard_count == 0:
    raise ValueError(f"{len(source)} examples cannot be split into {shard_count} shards")
  sampler = grain.samplers.IndexSampler(
    num_records=len(source), shard_options=shard_options, shuffle=True, num_epochs=None, seed=seed
  )
  return grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[TileAndCrop(num_samples, crop_samples), grain.transforms.Batch(local_batch, drop_remainder=True)],
    worker_count=worker_count,
    worker_buffer_size=worker_buffer_size,
    shard_options=shard_options,
  )


class PaddedSource:
  """`source` with "mask" and "index" added, padded with masked dummies to `length`."""

  def __init__(self, source: Sequence[dict], length: int) -> None:
    self.source = source
    self.length = length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict[str, Any]:
    if index < len(self.source):
      element = self.source[index]
      return {"audio": element["audio"], "label": element["label"], "mask": True, "index": index}
    if index < self.length:
      return {"audio": np.zeros(1, np.int16), "label": 0, "mask": False, "index": PAD_INDEX}
    raise IndexError(f"index {index} out of range for {self.length} elements")

  def __repr__(self) -> str:
    # Grain checks a restored state against repr(source); never print in-memory data.
    inner = self.source if not isinstance(self.source, (list, tuple)) else type(self.source)
    return f"PaddedSource({inner!r}, length={self.length})"


class EvalTransform(grain.transforms.Map):
  """Tiles to `num_samples` and fixes the dtypes of label, mask and index."""

  def __init__(self, num_samples: int = CLIP_SAMPLES) -> None:
    self.num_samples = num_samples

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    return {
      "audio": to_clip(np.asarray(element["audio"], np.int16), self.num_samples),
      "label": np.int32(element["label"]),
      "mask": np.bool_(element["mask"]),
      "index": np.int64(element["index"]),
    }


def eval_loader(
  source: Sequence[dict],
  *,
  global_batch_size: int,
  num_samples: int = CLIP_SAMPLES,
  worker_count: int = 0,
  shard_index: int | None = None,
  shard_count: int | None = None,
  worker_buffer_size: int = 1,
) -> grain.DataLoader:
  """One ordered pass in which, over all shards, every example appears exactly once.

  Yields {"audio", "label", "mask": bool, "index": int64} of shape (local_batch, ...). The
  data is padded to a whole number of global batches, so every shard yields the same
  number of batches (collectives stay in step); padding has mask False and index -1.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  local_batch = _local_batch(global_batch_size, shard_count)
  _check_worker_count(worker_count)
  num_batches = max(math.ceil(len(source) / global_batch_size), 1)
  padded = PaddedSource(source, num_batches * global_batch_size)
  shard_options = grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True)
  sampler = grain.samplers.IndexSampler(
    num_records=len(padded), shard_options=shard_options, shuffle=False, num_epochs=1
  )
  return grain.DataLoader(
    data_source=padded,
    sampler=sampler,
    operations=[EvalTransform(num_samples), grain.transforms.Batch(local_batch, drop_remainder=False)],
    worker_count=worker_count,
    worker_buffer_size=worker_buffer_size,
    shard_options=shard_options,
  )


# ----------------------------------------------------------------------------- what a run reads


@dataclasses.dataclass
class Data:
  """What a run reads: the class names and a random-access source per split."""

  class_names: tuple[str, ...]
  train: Sequence[dict] | None
  eval: dict[str, Sequence[dict]]


def load_data(config: ml_collections.ConfigDict, *, train: bool = True) -> Data:
  """Opens the configured data set (`config.data`), building the synthetic one on first use."""
  data_dir = os.path.expanduser(config.data.data_dir)
  if config.data.config == SYNTHETIC:
    ensure_synthetic(data_dir)
  names = class_names(data_dir, config.data.config)
  train_source = data_source(data_dir, config.data.train_split, config.data.config) if train else None
  eval_sources = {split: data_source(data_dir, split, config.data.config) for split in config.eval.splits}
  return Data(names, train_source, eval_sources)


def train_iterator(config: ml_collections.ConfigDict, source: Sequence[dict]) -> Iterator[dict]:
  """This process's training batches as `config` asks; checkpointable (`get_state`)."""
  return iter(
    train_loader(
      source,
      global_batch_size=config.batch_size,
      seed=config.seed,
      num_samples=config.data.num_samples,
      crop_samples=config.data.crop_samples or None,
      worker_count=config.data.worker_count,
    )
  )


def eval_batches(config: ml_collections.ConfigDict, source: Sequence[dict]) -> Iterator[dict]:
  """This process's share of one padded pass over `source`, as `config.eval` asks."""
  return iter(
    eval_loader(
      source,
      global_batch_size=config.eval.batch_size,
      num_samples=config.eval.num_samples,
      worker_count=config.data.worker_count,
    )
  )
