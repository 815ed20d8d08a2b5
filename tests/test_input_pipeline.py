"""Grain batches: defined by global position, so independent of processes, workers and restarts."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from vggsound_jax import input_pipeline
from vggsound_jax.audio.decode import to_clip
from vggsound_jax.errors import ConfigError

NUM_SAMPLES = 1600  # short clips keep the tests fast; tiling is the same at any length
BATCH = 4


def _source(n=12):
  """Example i: a ramp of 100 + 37 i samples (distinct content and length), label i."""
  return [{"audio": (np.arange(100 + 37 * i) * (i + 1) % 30000).astype(np.int16), "label": i} for i in range(n)]


def _train(source, *, steps=8, start_step=0, rows=range(BATCH), **kwargs):
  kwargs = {"global_batch_size": BATCH, "seed": 7, "num_samples": NUM_SAMPLES, **kwargs}
  return list(input_pipeline.train_batches(source, rows=list(rows), start_step=start_step, num_steps=steps, **kwargs))


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_are_tiled_examples_with_the_contract_dtypes():
  source = _source()
  batch = _train(source, steps=1)[0]
  assert batch["audio"].shape == (BATCH, NUM_SAMPLES) and batch["audio"].dtype == np.int16
  assert batch["label"].shape == (BATCH,) and batch["label"].dtype == np.int32
  for audio, label in zip(batch["audio"], batch["label"], strict=True):
    np.testing.assert_array_equal(audio, to_clip(source[label]["audio"], NUM_SAMPLES))


def test_random_crop_is_a_window_of_the_tiled_clip():
  source = _source()
  starts = set()
  for batch in _train(source, steps=6, crop_samples=500):
    assert batch["audio"].shape == (BATCH, 500)
    for audio, label in zip(batch["audio"], batch["label"], strict=True):
      clip = to_clip(source[label]["audio"], NUM_SAMPLES)
      windows = np.lib.stride_tricks.sliding_window_view(clip, 500)
      match = np.flatnonzero((windows == audio).all(axis=1))
      assert match.size >= 1
      starts.add(int(match[0]))
  assert len(starts) > 5  # offsets really are random
  with pytest.raises(ConfigError, match="crop_samples"):
    _train(source, crop_samples=NUM_SAMPLES + 1)


def test_same_seed_same_batches_other_seed_other_batches():
  source = _source()
  a, b = _train(source, crop_samples=300), _train(source, crop_samples=300)
  c = _train(source, crop_samples=300, seed=8)
  _assert_same_batches(a, b)
  assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, c, strict=True))


def test_epochs_cover_everything_and_reshuffle():
  labels = [b["label"] for b in _train(_source(12), steps=9)]
  epochs = [np.concatenate(labels[i : i + 3]) for i in range(0, 9, 3)]
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(12))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


@pytest.mark.parametrize("start_step", [2, 4])  # mid-epoch, and across the epoch boundary
def test_starting_at_a_step_continues_identically(start_step):
  source = _source(12)
  reference = _train(source, steps=start_step + 4, crop_samples=400)
  resumed = _train(source, start_step=start_step, steps=start_step + 4, crop_samples=400)  # as after a restart
  _assert_same_batches(resumed, reference[start_step:])


@pytest.mark.parametrize("split", [[[0, 1], [2, 3]], [[0], [1], [2], [3]]])
def test_processes_reading_their_rows_make_the_same_global_batches(split):
  """However the rows are split between processes, together they read the one-process batches."""
  source = _source(12)
  whole = _train(source, crop_samples=300)
  parts = [_train(source, rows=rows, crop_samples=300) for rows in split]
  for step, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), batch[key])


@pytest.mark.slow
def test_loader_workers_change_nothing():
  source = _source(12)
  reference = _train(source, steps=6, crop_samples=300)
  _assert_same_batches(_train(source, steps=6, crop_samples=300, worker_count=2), reference)
  _assert_same_batches(_train(source, steps=6, crop_samples=300, worker_count=3, start_step=2), reference[2:])


def test_bad_batch_sizes_are_config_errors():
  with pytest.raises(ConfigError, match="batch_size"):
    _train(_source(), global_batch_size=0, rows=[0])
  with pytest.raises(ValueError, match="not rows of a global batch"):
    _train(_source(), rows=[3, 4])


@pytest.mark.parametrize(
  "n, global_batch, split",
  [(10, 4, [[0, 1, 2, 3]]), (10, 4, [[0, 1], [2, 3]]), (7, 6, [[0, 1], [2, 3], [4, 5]]), (8, 4, [[0, 1], [2, 3]])],
)
def test_eval_visits_every_example_once_with_a_mask(n, global_batch, split):
  source = _source(n)
  steps = -(-n // global_batch)
  indices = []
  for rows in split:
    batches = list(
      input_pipeline.eval_batches(source, global_batch_size=global_batch, rows=rows, num_samples=NUM_SAMPLES)
    )
    assert len(batches) == steps  # every process runs the same number of steps
    for b in batches:
      assert b["audio"].shape == (len(rows), NUM_SAMPLES) and b["audio"].dtype == np.int16
      assert b["mask"].dtype == np.bool_ and b["index"].dtype == np.int64
      assert b["label"].dtype == np.int32
      np.testing.assert_array_equal(b["mask"], b["index"] >= 0)
      for audio, label, index, mask in zip(b["audio"], b["label"], b["index"], b["mask"], strict=True):
        if mask:
          assert label == index
          np.testing.assert_array_equal(audio, to_clip(source[index]["audio"], NUM_SAMPLES))
      indices.extend(b["index"][b["mask"]].tolist())
  assert sorted(indices) == list(range(n))


@pytest.mark.slow
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
      batches = list(ip.train_batches(train, global_batch_size=8, seed=0, rows=range(8), start_step=0,
                                      num_steps=3, crop_samples=16000))
      again = list(ip.train_batches(train, global_batch_size=8, seed=0, rows=range(8), start_step=2,
                                    num_steps=3, crop_samples=16000))
      assert np.array_equal(again[0]["audio"], batches[2]["audio"])
      assert batches[0]["audio"].shape == (8, 16000) and batches[0]["audio"].dtype == np.int16
      assert batches[0]["label"].max() < len(names)
      seen = []
      for b in ip.eval_batches(test, global_batch_size=10, rows=range(10), num_samples=32000):
        seen += b["index"][b["mask"]].tolist()
        assert all(len(c) > 0 for c, m in zip(b["clip_id"], b["mask"]) if m)
      assert sorted(seen) == list(range(len(test)))
      assert "tensorflow" not in sys.modules, "TensorFlow was imported"
      print("ok", len(names), len(train), len(test))
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", timeout=170)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split()[-4:] == ["ok", "8", "288", "96"]


@pytest.mark.slow
def test_two_builds_at_once_build_once(tmp_path):
  """Two processes asking for the synthetic set on one empty data_dir: one builds, both find it."""
  code = f"from vggsound_jax import input_pipeline as ip; ip.ensure_synthetic({str(tmp_path)!r}); print('ok')"
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"
    )
    for _ in range(2)
  ]
  outputs = [p.communicate(timeout=170) for p in procs]
  for p, (out, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0 and out.strip().endswith("ok"), err[-2000:]
  assert not list(tmp_path.rglob("incomplete*"))
  assert len(input_pipeline.data_source(tmp_path, "test", "synthetic")) == 96


def test_missing_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not built.*vggsound-build"):
    input_pipeline.data_source(tmp_path, "train", "synthetic")


def _stat(pid: int | str) -> list[str] | None:
  """Fields of /proc/PID/stat after the command name: [state, ppid, ...]; None once it is gone."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  except OSError:
    return None


def _children(pid: int) -> set[int]:
  return {int(e) for e in os.listdir("/proc") if e.isdigit() and (st := _stat(e)) and int(st[1]) == pid}


@pytest.mark.slow
def test_loader_workers_exit_when_the_training_process_is_killed():
  code = textwrap.dedent("""
      import sys, time
      import numpy as np
      from vggsound_jax import input_pipeline
      source = [{"audio": np.arange(400, dtype=np.int16), "label": i % 3} for i in range(12)]
      it = input_pipeline.train_batches(source, global_batch_size=4, seed=0, rows=range(4), start_step=0,
                                        num_steps=10_000, num_samples=400, worker_count=2)
      next(it)
      print("ready", flush=True)
      time.sleep(600)
  """)
  parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, encoding="utf-8")
  try:
    assert parent.stdout.readline().strip() == "ready"
    workers = _children(parent.pid)
    assert len(workers) >= 2, workers
  finally:
    parent.kill()  # SIGKILL: nothing of the parent runs any more
    parent.wait()
  deadline = time.monotonic() + 20
  while alive := [pid for pid in workers if (st := _stat(pid)) and st[0] != "Z"]:
    assert time.monotonic() < deadline, f"workers {alive} outlived the killed process"
    time.sleep(0.2)
