"""Evaluation: every example counted once through the padded eval loader, and the files."""

import collections
import csv
import json

import jax
import numpy as np
import pytest
import sklearn.metrics

from vggsound_jax import evaluation, input_pipeline, sharding
from vggsound_jax.models import ModelConfig, build_model, forward, split_model

NUM_CLASSES = 5
NAMES = tuple(f"sound {i}" for i in range(NUM_CLASSES))


@pytest.fixture(scope="module")
def source():
  rng = np.random.default_rng(0)
  return [
    {
      "audio": rng.integers(-2000, 2000, rng.integers(3000, 8000)).astype(np.int16),
      "label": i % NUM_CLASSES,
      "clip_id": f"vid{i:03d}_000030".encode(),
    }
    for i in range(23)
  ]


@pytest.fixture(scope="module")
def model():
  m = build_model(ModelConfig(width=4, num_classes=NUM_CLASSES), seed=3)
  m.eval()
  return m


@pytest.fixture(scope="module")
def predictions(source, model):
  mesh = sharding.make_mesh()  # all CPU devices (conftest.py) share a batch of 8
  graphdef, state = split_model(model)
  batches = input_pipeline.eval_batches(
    source, global_batch_size=8, rows=sharding.process_rows(mesh, 8), num_samples=8000
  )
  return evaluation.predict(evaluation.make_eval_step(graphdef, mesh), state, batches, mesh)


def test_every_example_counted_once(source, model, predictions):
  """23 clips in batches of 8: three batches, the last one padded; padding is dropped."""
  np.testing.assert_array_equal(predictions["index"], np.arange(len(source)))
  np.testing.assert_array_equal(predictions["labels"], [e["label"] for e in source])
  # The same model applied to all clips at once, outside the eval loop.
  clips = np.stack([np.resize(e["audio"], 8000) for e in source])
  expected, _ = jax.jit(forward)(model, clips)
  np.testing.assert_allclose(predictions["probs"], np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_duplicates_are_an_error(model):
  mesh = sharding.make_mesh(jax.devices()[:1])
  graphdef, state = split_model(model)
  batch = {
    "audio": np.zeros((2, 4000), np.int16),
    "label": np.zeros(2, np.int32),
    "mask": np.ones(2, bool),
    "index": np.array([4, 4]),
  }
  with pytest.raises(ValueError, match="more than once"):
    evaluation.predict(evaluation.make_eval_step(graphdef, mesh), state, [batch], mesh)


def test_files_written(tmp_path, source, predictions):
  out = tmp_path / "eval" / "test"
  metrics = evaluation.write_results(out, predictions, NAMES, export_clip_npy=True)

  stored = json.loads((out / "metrics.json").read_text())
  assert set(stored) == {"mAP", "mAUC", "d_prime", "top1", "top5", "num_clips", "classes_left_out"}
  assert stored["num_clips"] == 23 and stored["classes_left_out"] == 0
  probs, labels = predictions["probs"], predictions["labels"]
  ap = [sklearn.metrics.average_precision_score(labels == k, probs[:, k]) for k in range(NUM_CLASSES)]
  assert stored["mAP"] == pytest.approx(np.mean(ap), abs=1e-9)
  assert metrics["top1"] == pytest.approx(np.mean(probs.argmax(1) == labels))

  with open(out / "per_class.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["class"] for r in rows] == list(NAMES)
  assert [int(r["count"]) for r in rows] == [5, 5, 5, 4, 4]
  np.testing.assert_allclose([float(r["ap"]) for r in rows], ap, atol=1e-6)

  assert (out / "per_class_ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (out / "confusions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with open(out / "confusions.csv") as f:
    confusions = list(csv.DictReader(f))
  mistakes = collections.Counter(
    (NAMES[y], NAMES[p]) for y, p in zip(labels, probs.argmax(axis=1)) if y != p
  )  # counted clip by clip
  assert {(r["true_class"], r["predicted_class"]): int(r["count"]) for r in confusions} == mistakes
  assert [int(r["count"]) for r in confusions] == sorted(mistakes.values(), reverse=True)
  for r in confusions:
    assert float(r["share"]) == pytest.approx(int(r["count"]) / np.sum(labels == NAMES.index(r["true_class"])))

  saved = np.load(out / "predictions.npz")
  np.testing.assert_array_equal(saved["index"], np.arange(23))
  np.testing.assert_array_equal(saved["probs"], probs)
  assert saved["clip_id"][5] == "vid005_000030"
  clip = np.load(out / "clips" / "vid007_000030.npy")
  np.testing.assert_array_equal(clip, probs[7])
  assert len(list((out / "clips").iterdir())) == 23


def test_a_class_missing_from_the_split_is_reported(tmp_path, predictions):
  """Drop every clip of class 4: it has no positives, so it is left out and counted."""
  keep = predictions["labels"] != 4
  subset = {k: v[keep] for k, v in predictions.items()}
  metrics = evaluation.write_results(tmp_path, subset, NAMES)
  assert metrics["classes_left_out"] == 1 and metrics["num_clips"] == int(keep.sum())
  with open(tmp_path / "per_class.csv") as f:
    last = list(csv.DictReader(f))[-1]
  assert last["class"] == "sound 4" and last["auc"] == "" and last["count"] == "0"
