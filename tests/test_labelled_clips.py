"""Labelled clips of the user's own: the four layouts read (ESC-50, UrbanSound8K, a csv, folders),
the builder (the shared decoder's samples, report, fingerprint), bad input as one line with
nothing written, and a probe over a built data set."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from vggsound_jax import crossval, default_config
from vggsound_jax.audio.decode import decode_audio
from vggsound_jax.datasets import build as build_lib
from vggsound_jax.datasets import clip_tables, labelled
from vggsound_jax.errors import PathError
from vggsound_jax.testing import labelled_clips

REPO = Path(__file__).resolve().parents[1]

NAMES = tuple(labelled_clips.class_names(3))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
  root = tmp_path_factory.mktemp("clips")
  return {
    "esc50": labelled_clips.write_esc50(root / "ESC-50", num_classes=3, clips_per_class=5, seconds=1.0),
    "urbansound8k": labelled_clips.write_urbansound8k(
      root / "UrbanSound8K", num_classes=3, clips_per_class=4, num_folds=2, seconds=1.0
    ),
    "folders": labelled_clips.write_folders(root / "mine", num_classes=3, clips_per_class=6),
    "csv": labelled_clips.write_plain_csv(root / "plain", num_classes=3, clips_per_class=5),
    "csv_folds": labelled_clips.write_plain_csv(root / "plain_folds", num_classes=3, clips_per_class=4, folds=2),
  }


def test_each_layout_gives_its_clips_classes_and_folds(fixtures):
  esc = clip_tables.read_clips(fixtures["esc50"])
  assert esc.layout == "esc50" and esc.class_names == NAMES and esc.folds == [1, 2, 3, 4, 5]
  assert not esc.folds_assigned and len(esc.clips) == 15
  first = esc.clips[0]
  assert first.clip_id == "audio/1-0-A-0.wav" and first.fold == 1 and first.label == "sound_0"
  us = clip_tables.read_clips(fixtures["urbansound8k"] / "metadata" / "UrbanSound8K.csv")  # the table itself
  assert us.layout == "urbansound8k" and us.folds == [1, 2]
  assert all(c.clip_id.startswith(f"audio/fold{c.fold}/") for c in us.clips)
  assert clip_tables.read_clips(fixtures["csv_folds"]).folds == [1, 2]
  for key in ("folders", "csv"):
    table = clip_tables.read_clips(fixtures[key])
    assert table.class_names == NAMES and table.folds_assigned and table.layout == key.split("_")[0]
    # Assigned folds: each class spread over them in turn, by path.
    for name in NAMES:
      ids = sorted(c.clip_id for c in table.clips if c.label == name)
      folds = {c.clip_id: c.fold for c in table.clips}
      assert [folds[i] for i in ids] == [i % clip_tables.ASSIGNED_FOLDS + 1 for i in range(len(ids))]


def test_class_order_follows_the_tables_class_ids(tmp_path, fixtures):
  root = shutil.copytree(fixtures["esc50"], tmp_path / "esc")
  table = root / "meta" / "esc50.csv"
  rows = list(csv.reader(table.open()))
  renamed = {"sound_0": "zebra", "sound_1": "apple", "sound_2": "mango"}  # target order is not name order
  with table.open("w", newline="") as f:
    csv.writer(f).writerows([rows[0]] + [r[:3] + [renamed[r[3]]] + r[4:] for r in rows[1:]])
  assert clip_tables.read_clips(root).class_names == ("zebra", "apple", "mango")


def _write_table(path, header, rows):
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header, *rows])
  return path


@pytest.mark.parametrize(
  ("header", "rows", "problem"),
  [
    (["file", "class"], [["a.wav", "x"]], r"columns file,class are those of no known layout: esc50 \(filename"),
    (["path", "label"], [["files/sound_0/take0/clip000.flac", "x"]] * 2, r"TABLE:3: .* listed again"),
    (["path", "label"], [["nowhere.wav", "x"], ["gone.wav", "y"]], r"TABLE:2: .*nowhere\.wav: no such file \(and 1"),
    (["path", "label", "fold"], [["files/sound_0/take0/clip000.flac", "x", "two"]], r"fold 'two' is not a whole"),
    (["path", "label"], [["files/sound_0/take0/clip000.flac", "x"]], r"TABLE: all 1 clips are of one class \('x'\)"),
  ],
)
def test_bad_tables_are_one_line_and_nothing_is_written(fixtures, tmp_path, header, rows, problem):
  # Beside the good table, so that its paths name the fixture's files.
  bad = _write_table(fixtures["csv"].parent / f"{tmp_path.name}.csv", header, rows)
  with pytest.raises(PathError, match=problem.replace("TABLE", bad.stem + r"\.csv")) as e:
    labelled.build(tmp_path / "data", name="bad", source=bad, num_workers=1)
  assert "\n" not in str(e.value)
  assert not (tmp_path / "data" / labelled.NAME).exists()


def test_bad_names_and_sources_are_one_line(tmp_path):
  with pytest.raises(PathError, match="no such file or directory"):
    clip_tables.read_clips(tmp_path / "nothing")
  with pytest.raises(PathError, match="no clips"):
    clip_tables.read_clips(tmp_path)
  with pytest.raises(ValueError, match="data set name '../x'"):
    labelled.check_name("../x")
  with pytest.raises(labelled.NotBuiltError, match="vggsound-build-clips --name esc50"):
    labelled.open_clips(tmp_path, "esc50")


def test_build_stores_the_shared_decoders_samples_and_reports(fixtures, tmp_path):
  source = shutil.copytree(fixtures["urbansound8k"], tmp_path / "us")
  broken = source / "audio" / "fold1" / "0-0-0-0.wav"
  broken.write_bytes(b"RIFF not really a wav")
  report = labelled.build(tmp_path / "data", name="us8k", source=source, num_workers=1)
  assert report.layout == "urbansound8k" and report.folds == [1, 2]
  assert report.splits[labelled.SPLIT].written == 11 and len(report.skipped) == 1
  assert report.skipped[0]["clip_id"] == "audio/fold1/0-0-0-0.wav" and report.skipped[0]["path"] == str(broken)
  data = labelled.open_clips(tmp_path / "data", "us8k")
  assert data.class_names == NAMES and len(data.source) == 11
  table = {c.clip_id: c for c in clip_tables.read_clips(source).clips}
  for i in range(len(data.source)):
    element = data.source[i]
    clip = table[element["clip_id"].decode()]
    # 24-bit stereo 44.1 kHz, float 22.05 kHz, ...: what every builder's decoder gives.
    np.testing.assert_array_equal(element["audio"], decode_audio(clip.path))
    assert NAMES[element["label"]] == clip.label and element["fold"] == clip.fold == data.folds[i]
  # The same inputs again: kept. Other inputs: one line pointing at --overwrite.
  assert labelled.build(tmp_path / "data", name="us8k", source=source, num_workers=1).to_json() == report.to_json()
  labelled_clips.write_urbansound8k(tmp_path / "other", num_classes=3, clips_per_class=2, num_folds=2, seconds=1.0)
  with pytest.raises(build_lib.InputsChangedError, match="--overwrite"):
    labelled.build(tmp_path / "data", name="us8k", source=tmp_path / "other", num_workers=1)


def test_a_probe_over_a_built_data_set_is_above_chance(fixtures, tmp_path, monkeypatch):
  from flax import nnx  # noqa: F401 - jax first: the model fixture below needs it

  from vggsound_jax.model_dir import save_model
  from vggsound_jax.models import ModelConfig
  from vggsound_jax.testing.random_model import random_model, with_unit_statistics

  monkeypatch.setenv("VGGSOUND_JAX_CACHE", str(tmp_path / "cache"))
  labelled.build(tmp_path / "data", name="esc", source=fixtures["esc50"], num_workers=1)
  model = with_unit_statistics(random_model(ModelConfig(width=4, num_classes=2), seed=2, std=0.3))
  save_model(tmp_path / "model", model, class_names=["x", "y"])
  config = default_config.get_config()
  config.init_from = str(tmp_path / "model")
  config.data.clips = "esc"
  config.probe.backend = "jax"
  summary = crossval.run(config, tmp_path / "run", labelled.open_clips(tmp_path / "data", "esc"), mode="probe")
  assert len(summary["folds"]) == 5 and summary["mean_accuracy"] > 0.8


def _command(module, *args):
  import subprocess
  import sys

  code = f"from vggsound_jax.cli.{module} import run; run()"
  return subprocess.run(
    [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, encoding="utf-8", check=False
  )


@pytest.mark.slow
def test_the_build_command_says_one_line_per_problem_and_keeps_a_build(fixtures, tmp_path):
  bad = _write_table(tmp_path / "bad.csv", ["file", "class"], [["a.wav", "x"]])
  result = _command("build_clips", "--source", bad, "--name", "x", "--data_dir", tmp_path / "data")
  assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: columns")
  args = ("--source", fixtures["esc50"], "--name", "esc", "--data_dir", tmp_path / "data", "--num_workers", 1)
  first = _command("build_clips", *args)
  assert first.returncode == 0, first.stderr[-2000:]
  assert "labelled_clips/esc: 15 clips written, 0 skipped" in first.stdout
  again = _command("build_clips", *args)
  assert again.returncode == 0 and "already built: nothing done" in again.stdout


@pytest.mark.slow
def test_the_crossval_command_fine_tunes_a_fold_into_a_model_directory(fixtures, tmp_path):
  from vggsound_jax.model_dir import load_metadata, save_model
  from vggsound_jax.models import ModelConfig
  from vggsound_jax.testing.random_model import random_model

  labelled.build(tmp_path / "data", name="esc", source=fixtures["esc50"], num_workers=1)
  save_model(tmp_path / "model", random_model(ModelConfig(width=4, num_classes=2), seed=2), class_names=["x", "y"])
  config = REPO / f"configs/transfer.py:{tmp_path / 'model'}"
  overrides = ["--config.data.clips=esc", f"--config.data.data_dir={tmp_path / 'data'}", "--config.crossval.folds=1"]
  overrides += ["--config.num_train_steps=2", "--config.batch_size=4", "--config.eval.batch_size=4"]
  overrides += ["--config.data.worker_count=0", "--config.data.num_samples=16000"]
  result = _command("crossval", "--mode", "finetune", "--config", config, "--workdir", tmp_path / "run", *overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "cross-validation (finetune" in result.stdout
  assert load_metadata(tmp_path / "run" / "fold_1" / "model")["class_names"] == list(
    labelled.open_clips(tmp_path / "data", "esc").class_names
  )
