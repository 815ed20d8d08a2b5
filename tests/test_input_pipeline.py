"""Grain loaders: determinism, resume, shards, padded evaluation; TFDS source without TF."""

import gc
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vggsound_jax import input_pipeline
from vggsound_jax.audio import to_clip

REPO = Path(__file__).resolve().parent.parent
NUM_SAMPLES = 1600  # short clips keep the tests fast; tiling is the same at any length


def _source(n=12):
  """Example i: a ramp of 100 + 37 i samples (distinct content and length), label i."""
  return [{"audio": (np.arange(100 + 37 * i) * (i + 1) % 30000).astype(np.int16), "label": i} for i in range(n)]


def _train(source, **kwargs):
  kwargs = {"global_batch_size": 4, "seed": 7, "num_samples": NUM_SAMPLES, "shard_index": 0, "shard_count": 1, **kwargs}
  return input_pipeline.train_loader(source, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_are_tiled_examples_with_the_contract_dtypes():
  source = _source()
  batch = next(iter(_train(source)))
  assert batch["audio"].shape == (4, NUM_SAMPLES) and batch["audio"].dtype == np.int16
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
  for audio, label in zip(batch["audio"], batch["label"]):
    np.testing.assert_array_equal(audio, to_clip(source[label]["audio"], NUM_SAMPLES))


def test_random_crop_is_a_window_of_the_tiled_clip():
  source = _source()
  batches = _take(iter(_train(source, crop_samples=500)), 6)
  starts = set()
  for batch in batches:
    assert batch["audio"].shape == (4, 500)
    for audio, label in zip(batch["audio"], batch["label"]):
      clip = to_clip(source[label]["audio"], NUM_SAMPLES)
      windows = np.lib.stride_tricks.sliding_window_view(clip, 500)
      match = np.flatnonzero((windows == audio).all(axis=1))
      assert match.size >= 1
      starts.add(int(match[0]))
  assert len(starts) > 5  # offsets really are random
  with pytest.raises(ValueError, match="crop_samples"):
    _train(source, crop_samples=NUM_SAMPLES + 1)


def test_same_seed_same_batches_other_seed_other_batches():
  source = _source()
  a = _take(iter(_train(source, crop_samples=300)), 8)
  b = _take(iter(_train(source, crop_samples=300)), 8)
  c = _take(iter(_train(source, crop_samples=300, seed=8)), 8)
  _assert_same_batches(a, b)
  assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))


def test_epochs_cover_everything_and_reshuffle():
  source = _source(12)
  labels = [b["label"] for b in _take(iter(_train(source)), 9)]
  epochs = [np.concatenate(labels[i : i + 3]) for i in range(0, 9, 3)]
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(12))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


@pytest.mark.parametrize("stop_after", [2, 4])  # mid-epoch, and across the epoch boundary
def test_resume_from_state_continues_identically(stop_after):
  source = _source(12)
  reference = _take(iter(_train(source, crop_samples=400)), stop_after + 4)
  first = iter(_train(source, crop_samples=400))
  _take(first, stop_after)
  state = first.get_state()
  resumed = iter(_train(source, crop_samples=400))  # a new loader, as after a restart
  resumed.set_state(state)
  _assert_same_batches(_take(resumed, 4), reference[stop_after:])


@pytest.mark.parametrize("shard_count", [2, 3])
def test_shards_are_disjoint_and_cover_the_data(shard_count):
  n, local_batch = 12, 2
  source = _source(n)
  per_shard = n // shard_count
  seen = []
  for shard in range(shard_count):
    loader = _train(source, global_batch_size=local_batch * shard_count, shard_index=shard, shard_count=shard_count)
    batches = _take(iter(loader), per_shard // local_batch)
    assert all(b["label"].shape == (local_batch,) for b in batches)
    labels = np.concatenate([b["label"] for b in batches]).tolist()
    assert len(set(labels)) == per_shard  # one epoch of this shard, no repeats
    seen.append(set(labels))
  for a, b in itertools.combinations(seen, 2):
    assert not a & b
  assert set().union(*seen) == set(range(n))


def test_batch_size_must_split_over_shards():
  with pytest.raises(ValueError, match="multiple of the shard count"):
    _train(_source(), global_batch_size=5, shard_count=2)


@pytest.mark.parametrize("n, global_batch, shard_count", [(10, 4, 1), (10, 4, 2), (7, 6, 3), (8, 4, 2)])
def test_eval_visits_every_example_once_with_a_mask(n, global_batch, shard_count):
  source = _source(n)
  steps = -(-n // global_batch)
  indices = []
  for shard in range(shard_count):
    batches = list(
      input_pipeline.eval_loader(
        source, global_batch_size=global_batch, num_samples=NUM_SAMPLES, shard_index=shard, shard_count=shard_count
      )
    )
    assert len(batches) == steps  # every process runs the same number of steps
    for b in batches:
      local = global_batch // shard_count
      assert b["audio"].shape == (local, NUM_SAMPLES) and b["audio"].dtype == np.int16
      assert b["mask"].dtype == np.bool_ and b["index"].dtype == np.int64
      assert b["label"].dtype == np.int32
      np.testing.assert_array_equal(b["mask"], b["index"] >= 0)
      for audio, label, index, mask in zip(b["audio"], b["label"], b["index"], b["mask"]):
        if mask:
          assert label == index
          np.testing.assert_array_equal(audio, to_clip(source[index]["audio"], NUM_SAMPLES))
      indices.extend(b["index"][b["mask"]].tolist())
  assert sorted(indices) == list(range(n))
  padding = steps * global_batch - n
  assert len(indices) + padding == steps * global_batch


def test_worker_processes_are_deterministic_and_resume():
  source = _source(12)
  first = iter(_train(source, crop_samples=300, worker_count=2))
  head = _take(first, 2)
  state = first.get_state()
  tail = _take(first, 4)
  resumed = iter(_train(source, crop_samples=300, worker_count=2))
  resumed.set_state(state)
  _assert_same_batches(_take(resumed, 4), tail)
  # Each worker batches its own share of the indices: 6 batches are two whole epochs.
  labels = np.concatenate([b["label"] for b in head + tail]).tolist()
  assert sorted(labels) == sorted(list(range(12)) * 2)
  del first, resumed
  gc.collect()  # stops the worker processes now, not at interpreter exit


def test_tfds_source_end_to_end_without_tensorflow(tmp_path):
  """Build, read and iterate in a fresh process: TensorFlow must never be imported."""
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from vggsound_jax import input_pipeline as ip
      ip.ensure_synthetic({str(tmp_path)!r})
      names = ip.class_names({str(tmp_path)!r}, "synthetic")
      train = ip.data_source({str(tmp_path)!r}, "train", "synthetic")
      test = ip.data_source({str(tmp_path)!r}, "test", "synthetic")
      it = iter(ip.train_loader(train, global_batch_size=8, seed=0, crop_samples=16000,
                                shard_index=0, shard_count=1))
      batch = next(it); next(it)
      state = it.get_state()
      expected = next(it)
      again = iter(ip.train_loader(train, global_batch_size=8, seed=0, crop_samples=16000,
                                   shard_index=0, shard_count=1))
      again.set_state(state)
      assert np.array_equal(next(again)["audio"], expected["audio"])
      assert batch["audio"].shape == (8, 16000) and batch["audio"].dtype == np.int16
      assert batch["label"].max() < len(names)
      seen = []
      for b in ip.eval_loader(test, global_batch_size=10, num_samples=32000):
        seen += b["index"][b["mask"]].tolist()
      assert sorted(seen) == list(range(len(test)))
      assert "tensorflow" not in sys.modules, "TensorFlow was imported"
      print("ok", len(names), len(train), len(test))
  """)
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=170)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split()[-4:] == ["ok", "8", "288", "96"]


def test_missing_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not built"):
    input_pipeline.data_source(tmp_path, "train", "synthetic")
