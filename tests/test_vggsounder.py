"""VGGSounder scores, checked against the `vggsounder` package's own benchmark function."""

import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from flax import nnx, traverse_util
from vggsounder import VGGSounder
from vggsounder.benchmark import benchmark, compare_labels_logits, get_gt_for_modality

from vggsound_jax import evaluation, labels, vggsounder
from vggsound_jax.datasets import vggsound
from vggsound_jax.model_dir import save_model
from vggsound_jax.models import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[1]
NAMES = labels.class_names()
PACKAGE_FILE = "data/vggsounder+background-music.csv"
METRICS = [f"{m}@{k}" for k in vggsounder.TOP_K for m in ("hit_rate", "precision", "recall", "f1")] + [
  "auc_roc",
  "auc_pr",
]


@pytest.fixture(scope="module")
def shipped_csv(tmp_path_factory):
  """The annotation the project ships, as a plain csv for the package to read."""
  path = tmp_path_factory.mktemp("vggsounder") / "annotation.csv"
  data = resources.files("vggsound_jax").joinpath(vggsounder.ANNOTATION_RESOURCE).read_bytes()
  path.write_bytes(gzip.decompress(data))
  return path


def _reference(shipped_csv, *, background_music):
  return VGGSounder(shipped_csv, background_music=background_music, voice_over=None, static_image=None)


def _in_package_order(reference, probs):
  """The package takes scores in its own class order (its classes.csv)."""
  return probs[:, [NAMES.index(name) for name in reference.get_all_labels()]]


def _predictions(seed, *, clips=800, extra_ids=()):
  """Scores for some annotated clips (some with background music, some with no audible label),
  plus clips the annotation lacks; better than chance, so that every score is informative."""
  annotation = vggsounder.load_annotation()
  rng = np.random.default_rng(seed)
  rows = rng.choice(len(annotation.clip_ids), clips, replace=False)
  rows = np.union1d(rows, np.flatnonzero(~annotation.audible.any(axis=1))[:5])
  probs = rng.random((len(rows), len(NAMES)))
  probs += 0.6 * annotation.audible[rows] * rng.random((len(rows), len(NAMES)))
  ids = [annotation.clip_ids[i] for i in rows] + list(extra_ids)
  probs = np.concatenate([probs, rng.random((len(extra_ids), len(NAMES)))])
  return probs, ids


def test_shipped_annotation_is_the_packages_file_and_its_classes_are_ours(shipped_csv):
  package_file = resources.files("vggsounder").joinpath(PACKAGE_FILE).read_bytes()
  assert hashlib.sha256(shipped_csv.read_bytes()).digest() == hashlib.sha256(package_file).digest()
  package_classes = _reference(shipped_csv, background_music=None).get_all_labels()
  assert sorted(package_classes) == list(NAMES)
  assert list(package_classes) != list(NAMES)  # its order is not the model's: matching by name matters


@pytest.mark.slow
def test_scores_match_the_package_benchmark(tmp_path, shipped_csv):
  """The package's `benchmark`, its modality "a" (audible labels), background music left out."""
  probs, ids = _predictions(0, extra_ids=["notannotated_000001"])
  ours = vggsounder.score(probs, ids)
  reference = _reference(shipped_csv, background_music=False)
  with open(tmp_path / "ours.pkl", "wb") as f:
    package_probs = _in_package_order(reference, probs)
    pickle.dump({c: {"logits": {m: p.tolist() for m in ("a", "v", "av")}} for c, p in zip(ids, package_probs)}, f)
  table = benchmark(str(tmp_path), {"ours": "ours"}, [(m, ["a"]) for m in METRICS], vggsounder=reference, verbose=False)
  for name in METRICS:  # the table is in percent
    assert ours["metrics"][name] == pytest.approx(table.loc["ours", (name, "a")] / 100, rel=1e-9), name
  assert 0.3 < ours["metrics"]["hit_rate@1"] < 0.95 and 0.6 < ours["metrics"]["auc_roc"] < 0.99


def test_scores_with_background_music_match_the_package(shipped_csv):
  """What `benchmark` computes for logits (`compare_labels_logits` on its ground truth for "a"),
  with the clips that have background music kept."""
  probs, ids = _predictions(1, extra_ids=["notannotated_000001"])
  ours = vggsounder.score(probs, ids, include_background_music=True)
  reference = _reference(shipped_csv, background_music=None)
  predictions = pd.DataFrame({"id": ids, "logits": list(_in_package_order(reference, probs))})
  expected = compare_labels_logits(get_gt_for_modality(reference, "a"), predictions, reference.get_all_labels())
  for name in METRICS:
    assert ours["metrics"][name] == pytest.approx(expected[name], rel=1e-9), name
  assert ours["clips"]["background_music_left_out"] == 0


def test_clips_are_counted_not_refused(shipped_csv):
  probs, ids = _predictions(2, clips=3000, extra_ids=["notannotated_000001", "other_000002"])
  result = vggsounder.score(probs, ids)
  reference = _reference(shipped_csv, background_music=None)
  annotated = [c for c in ids if c in reference]
  music = [c for c in annotated if reference[c].meta_labels["background_music"]]
  heard = {c for c in annotated if any(m in ("A", "AV") for m in reference[c].modalities)}
  scored = [c for c in annotated if c in heard and c not in music]
  reference.set_meta_filters(background_music=False)
  reference.set_modality("A")  # the package's audible labels: A and AV
  assert result["clips"] == {
    "predicted": len(ids),
    "not_in_annotation": 2,
    "background_music_left_out": len(music),
    "no_audible_label": len(annotated) - len(music) - len(scored),
    "scored": len(scored),
    "annotated_without_prediction": len(reference) - len(scored),
  }
  assert result["clips"]["no_audible_label"] > 0 and result["clips"]["background_music_left_out"] > 0
  empty = vggsounder.score(np.zeros((1, len(NAMES))), ["notannotated_000001"])
  assert empty["clips"]["scored"] == 0 and np.isnan(empty["metrics"]["auc_roc"])


def test_write_results_hook_writes_vggsounder_json_next_to_metrics(tmp_path):
  probs, ids = _predictions(3, clips=100)
  probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
  predictions = {"probs": probs, "labels": probs.argmax(1), "index": np.arange(len(ids)), "clip_id": np.asarray(ids)}
  evaluation.write_results(tmp_path, predictions, NAMES, vggsounder=True)
  assert (tmp_path / "metrics.json").is_file()
  written = json.loads((tmp_path / vggsounder.RESULT_NAME).read_text())
  expected = vggsounder.score(probs, ids)
  assert written["clips"] == expected["clips"]
  assert written["metrics"] == pytest.approx(expected["metrics"])
  assert "hit_rate" in vggsounder.format_results(written)
  with pytest.raises(ValueError, match="need the 309 VGGSound classes"):
    vggsounder.write_results(tmp_path, probs[:, :8], ids, NAMES[:8])
  with pytest.raises(ValueError, match="need clip ids"):
    vggsounder.write_results(tmp_path, probs, None, NAMES)


def test_config_that_cannot_be_scored_is_refused(load_config):
  config = load_config("configs/demo.py", "eval.vggsounder=True")
  with pytest.raises(vggsounder.ConfigError, match="config.eval.vggsounder: needs VGGSound's 309 classes"):
    vggsounder.check_config(config)


def _random_model():
  """A tiny model with random parameters, built from shapes (eager initialisation is slow)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(ModelConfig(width=4))))
  rng = np.random.default_rng(0)
  values = {
    path: (rng.uniform(0.5, 1.5, leaf.shape) if path[-1] == "var" else 0.3 * rng.standard_normal(leaf.shape))
    for path, leaf in traverse_util.flatten_dict(nnx.to_pure_dict(state)).items()
  }
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in values.items()}))
  return nnx.merge(graphdef, state)


@pytest.mark.slow
def test_evaluate_command_with_vggsounder_flag(tmp_path):
  """`vggsound-evaluate ... --vggsounder` on a model directory and a built test split."""
  annotation = vggsounder.load_annotation()
  heard = np.flatnonzero(annotation.audible.any(axis=1) & ~annotation.background_music)
  music = np.flatnonzero(annotation.background_music)
  ids = [annotation.clip_ids[i] for i in [*heard[:5], music[0]]] + ["notannotated_000001"]
  manual = tmp_path / "manual"
  manual.mkdir()
  rng = np.random.default_rng(0)
  rows = []
  for clip in ids:
    sf.write(manual / f"{clip}.wav", rng.integers(-3000, 3000, 8000).astype(np.int16), 16000, subtype="PCM_16")
    youtube_id, start = clip.rsplit("_", 1)
    rows.append(f'{youtube_id},{int(start)},"{NAMES[0]}",test\n')
  (manual / "vggsound.csv").write_text("".join(rows))
  vggsound.build(tmp_path / "data", manual_dir=manual, num_workers=1)
  save_model(tmp_path / "model", _random_model(), class_names=NAMES)

  env = dict(os.environ, JAX_PLATFORMS="cpu", VGGSOUND_JAX_CACHE=str(tmp_path / "cache"))
  args = [
    f"--config={REPO / 'configs' / 'paper.py'}:eval_H",
    f"--checkpoint={tmp_path / 'model'}",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.data_dir={tmp_path / 'data'}",
    "--config.eval.num_samples=8000",
    "--config.eval.batch_size=8",
    "--vggsounder",
  ]
  proc = subprocess.run(
    [sys.executable, str(REPO / "scripts" / "evaluate.py"), *args],
    env=env,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=400,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  out_dir = tmp_path / "run" / "eval" / "test"
  written = json.loads((out_dir / vggsounder.RESULT_NAME).read_text())
  assert (out_dir / "metrics.json").is_file()
  assert written["clips"] == {
    "predicted": 7,
    "not_in_annotation": 1,
    "background_music_left_out": 1,
    "no_audible_label": 0,
    "scored": 5,
    "annotated_without_prediction": len(heard) - 5,
  }
  predictions = np.load(out_dir / "predictions.npz")
  expected = vggsounder.score(predictions["probs"], list(predictions["clip_id"]))
  assert written["metrics"] == pytest.approx(expected["metrics"], nan_ok=True)
  assert "5 of 7 clips scored" in proc.stdout and "ROC-AUC" in proc.stdout
