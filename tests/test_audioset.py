"""The TFDS builder `audioset` over a manual_dir made on the fly, and the VGGSound-AudioSet class table."""

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from vggsound_jax.audio.decode import SAMPLE_RATE
from vggsound_jax.datasets import audioset, clip_lists
from vggsound_jax.datasets import build as build_lib
from vggsound_jax.errors import PathError
from vggsound_jax.labels import NUM_CLASSES, class_index, class_names

REPO = Path(__file__).resolve().parent.parent

INDEX = class_index()
# From the package's class table: every method column must hold what its rule gives.
TABLE = audioset.read_class_table()
BY_VGGSOUND = {m.vggsound_class: m for m in TABLE}
BARK = BY_VGGSOUND["dog barking"].audioset_mid
HOWL = BY_VGGSOUND["dog howling"].audioset_mid
PIANO = BY_VGGSOUND["playing piano"].audioset_mid
SPEECH = "/m/09x0r"  # "Speech": no VGGSound class is matched to it
MUSIC = "/m/04rlf"


def _clip(seconds, seed):
  t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  x = 0.3 * np.sin(2 * np.pi * (200 + 100 * seed) * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
  return np.round(x * 32767).astype(np.int16)


def _write_segments(path, rows):
  lines = [
    "# Segments csv created Sun Mar  5 10:54:25 2017",
    f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=527, num_positive_labels=0",
    "# YTID, start_seconds, end_seconds, positive_labels",
  ]
  lines += [f'{ytid}, {start:.3f}, {end:.3f}, "{",".join(mids)}"' for ytid, start, end, mids in rows]
  path.write_text("\n".join(lines) + "\n")


CLIPS = {"--aaaaaaaaa": _clip(1.0, 1), "b_b-bbbbbbb": _clip(1.5, 2), "ccccccccccc": _clip(1.0, 3)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("audioset")
  manual, data = root / "manual", root / "data"
  (manual / "sub").mkdir(parents=True)
  sf.write(manual / "--aaaaaaaaa.wav", CLIPS["--aaaaaaaaa"], SAMPLE_RATE, subtype="PCM_16")
  sf.write(manual / "sub" / "Yb_b-bbbbbbb.flac", CLIPS["b_b-bbbbbbb"], SAMPLE_RATE, subtype="PCM_16")
  sf.write(manual / "ccccccccccc_30000_40000.wav", CLIPS["ccccccccccc"], SAMPLE_RATE, subtype="PCM_16")
  sf.write(manual / "ddddddddddd.wav", _clip(1.0, 4), SAMPLE_RATE, subtype="PCM_16")  # speech only
  (manual / "eeeeeeeeeee.wav").write_bytes(b"not audio at all")
  _write_segments(
    manual / "balanced_train_segments.csv",
    [
      ("--aaaaaaaaa", 0, 10, [BARK, HOWL, MUSIC]),
      ("b_b-bbbbbbb", 20, 30, [PIANO]),
      ("ddddddddddd", 0, 10, [SPEECH]),  # no shared class: left out
      ("fffffffffff", 0, 10, [BARK]),  # no file
      ("eeeeeeeeeee", 0, 10, [PIANO]),  # undecodable
    ],
  )
  _write_segments(manual / "unbalanced_train_segments.csv", [("ccccccccccc", 30, 40, [HOWL])])
  report = audioset.build(data, manual_dir=manual, num_workers=1)
  return data, report


def _read(data, split):
  source = audioset.data_source(data, split)
  return {e["youtube_id"].decode(): e for e in (source[i] for i in range(len(source)))}


def test_segments_of_the_shared_classes_with_multi_hot_labels(built):
  data, _ = built
  train = _read(data, "balanced_train")
  assert set(train) == {"--aaaaaaaaa", "b_b-bbbbbbb"}
  label = train["--aaaaaaaaa"]["label"]
  assert label.shape == (NUM_CLASSES,) and label.dtype == np.bool_
  assert set(np.flatnonzero(label)) == {INDEX["dog barking"], INDEX["dog howling"], INDEX["dog baying"]}
  assert set(np.flatnonzero(train["b_b-bbbbbbb"]["label"])) == {INDEX["playing piano"]}
  assert train["--aaaaaaaaa"]["audioset_labels"].decode() == f"{BARK},{HOWL},{MUSIC}"
  assert train["b_b-bbbbbbb"]["start_seconds"] == 20.0
  np.testing.assert_array_equal(train["b_b-bbbbbbb"]["audio"], CLIPS["b_b-bbbbbbb"])
  assert set(_read(data, "unbalanced_train")) == {"ccccccccccc"}


def test_both_training_lists_read_as_one_split(built):
  data, _ = built
  both = audioset.data_source(data, "balanced_train+unbalanced_train")
  assert len(both) == 3
  assert {both[i]["youtube_id"].decode() for i in range(3)} == {"--aaaaaaaaa", "b_b-bbbbbbb", "ccccccccccc"}


def test_report_lists_what_was_left_out(built):
  data, report = built
  assert report.outside_common == {"balanced_train": 1, "unbalanced_train": 0}
  reasons = {s["clip_id"]: s["reason"] for s in report.skipped}
  assert reasons["fffffffffff_0.000"] == build_lib.MISSING_FILE
  assert "eeeeeeeeeee_0.000" in reasons
  stored = audioset.read_report(tfds.builder("audioset/common", data_dir=data).data_path)
  assert stored.outside_common == report.outside_common and len(stored.skipped) == 2
  summary = report.summary()
  assert summary.startswith("audioset/common: 3 clips written, 2 skipped")
  assert "1 listed segments have none of the shared classes" in summary
  json.dumps(report.to_json())


def test_a_malformed_row_names_file_and_line(tmp_path):
  _write_segments(tmp_path / "eval_segments.csv", [("aaaaaaaaaaa", 0, 10, [BARK])])
  with open(tmp_path / "eval_segments.csv", "a") as f:
    f.write('bbbbbbbbbbb, ten, 20.000, "/m/05tny_"\n')
  with pytest.raises(clip_lists.ClipListError, match=r"eval_segments\.csv:5: start 'ten'"):
    audioset.plan_build(tmp_path)
  with pytest.raises(build_lib.ManualDirError, match="none of balanced_train_segments.csv"):
    audioset.plan_build(tmp_path / "empty")


def test_file_names_give_the_youtube_id(tmp_path):
  names = ("abcdefghijk.wav", "Yabcdefghij_.flac", "a-b_c-d_e-f_30.000_40.000.mp4", "x.wav", "Yzzzzzzzzzz.wav")
  for name in names:
    (tmp_path / name).write_bytes(b"")
  found = {k: v.name for k, v in audioset.index_clip_files(tmp_path).items()}
  assert found == {
    "abcdefghijk": "abcdefghijk.wav",
    "abcdefghij_": "Yabcdefghij_.flac",
    "a-b_c-d_e-f": "a-b_c-d_e-f_30.000_40.000.mp4",
    "Yzzzzzzzzzz": "Yzzzzzzzzzz.wav",  # 11 characters: an id that starts with Y
  }


# ----------------------------------------------------------------------------- the shared build


def _small_manual_dir(manual):
  manual.mkdir(parents=True)
  sf.write(manual / "aaaaaaaaaaa.wav", _clip(0.5, 1), SAMPLE_RATE, subtype="PCM_16")
  _write_segments(manual / "eval_segments.csv", [("aaaaaaaaaaa", 0, 10, [BARK]), ("bbbbbbbbbbb", 0, 10, [PIANO])])


def _run_build(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  command = [sys.executable, str(REPO / "scripts" / "build_dataset.py"), "--dataset", "audioset", *args]
  return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=env, timeout=120)


def test_report_records_the_inputs(built):
  _, report = built
  lists = {"balanced_train_segments.csv", "unbalanced_train_segments.csv", "eval_segments.csv"}
  assert set(report.inputs) == lists | {"clip files"}
  assert report.inputs["eval_segments.csv"] is None  # absent
  assert report.inputs["clip files"]["count"] == 4  # a, b, c and the undecodable e; not the speech-only d


@pytest.mark.slow
def test_building_again_from_other_inputs_is_an_error_until_overwrite(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  _small_manual_dir(manual)
  report = audioset.build(data, manual_dir=manual, num_workers=1)
  assert report.splits["eval"].written == 1
  assert audioset.build(data, manual_dir=manual, num_workers=1) == report  # the same inputs: kept
  assert audioset.build(data, num_workers=1) == report  # no manual_dir: nothing to compare with

  sf.write(manual / "bbbbbbbbbbb.flac", _clip(0.5, 2), SAMPLE_RATE, subtype="PCM_16")  # a clip added
  dataset_dir = data / "audioset" / "common" / audioset.DATASET_VERSION
  with pytest.raises(build_lib.InputsChangedError) as e:
    audioset.build(data, manual_dir=manual, num_workers=1)
  assert str(e.value) == (
    f"{dataset_dir}: audioset/common here was built from other inputs than {manual}:"
    " clip files (1 then, 2 now) changed; rebuild it with --overwrite"
  )
  # Through the command: one line, and --overwrite rebuilds from the new inputs.
  args = ("--manual_dir", str(manual), "--data_dir", str(data), "--num_workers", "1")
  result = _run_build(*args)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == f"error: {e.value}"
  result = _run_build(*args, "--overwrite")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "audioset/common: 2 clips written, 0 skipped" in result.stdout
  assert set(_read(data, "eval")) == {"aaaaaaaaaaa", "bbbbbbbbbbb"}
  assert audioset.read_report(dataset_dir).inputs["clip files"]["count"] == 2


def test_what_a_killed_build_leaves_is_removed_by_the_next(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  _small_manual_dir(manual)
  config_dir = data / "audioset" / "common"
  # A killed build's directory, named as TFDS names them (tests/test_datasets.py kills a real
  # build to check the name), and directories that are not this config's and version's builds.
  left = config_dir / f"incomplete.K1LLED_{audioset.DATASET_VERSION}"
  (left / "part").mkdir(parents=True)
  foreign = [config_dir / "incomplete.mine", config_dir / "incomplete.ABC123_9.9.9"]
  for directory in foreign:
    directory.mkdir()
  report = audioset.build(data, manual_dir=manual, num_workers=1)
  assert report.removed_leftovers == [str(left)] and not left.exists()
  assert all(p.exists() for p in foreign)
  assert "removed what 1 interrupted builds left" in report.summary()
  assert set(_read(data, "eval")) == {"aaaaaaaaaaa"}


def test_a_second_build_fails_while_one_runs(tmp_path):
  config_dir = tmp_path / "audioset" / "common"
  config_dir.mkdir(parents=True)
  fd = os.open(config_dir, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a build in progress holds it
    with pytest.raises(PathError, match="another build of audioset/common is running into it"):
      audioset.build(tmp_path, manual_dir=tmp_path)
  finally:
    os.close(fd)
  assert list(config_dir.iterdir()) == []


# ----------------------------------------------------------------------------- the class table


def _words(text):
  return re.findall(r"[a-z]+", text.lower())


def _forms(word):
  """The word and its stems without -ing, -es, -s, -ed (with a final e restored, a doubled
  consonant undone): the word-matching rule the table's docs state."""
  forms = {word}
  for suffix in ("ing", "es", "s", "ed"):
    if word.endswith(suffix) and len(word) - len(suffix) >= 3:
      stem = word[: -len(suffix)]
      forms |= {stem, stem + "e"}
      if stem[-1] == stem[-2]:
        forms.add(stem[:-1])
  return forms


def _synonyms(audioset_name):
  return [s.strip() for s in re.sub(r"\s*\(.*?\)", "", audioset_name.lower()).split(",") if s.strip()]


def test_class_table_covers_distinct_vggsound_classes_in_model_order():
  names = [m.vggsound_class for m in TABLE]
  assert len(TABLE) == 164 == len(set(names))
  assert names == sorted(names) and set(names) <= set(class_names())
  assert all(re.fullmatch(r"/[mgt]/[0-9a-z_]+", m.audioset_mid) for m in TABLE)
  assert {m.method for m in TABLE} == {"exact", "playing", "words", "manual"}
  assert all(m.note for m in TABLE if m.method == "manual")  # every hand-made match says why


@pytest.mark.parametrize("match", TABLE, ids=lambda m: m.vggsound_class)
def test_each_match_is_what_its_method_says(match):
  vggsound_name, synonyms = match.vggsound_class, _synonyms(match.audioset_name)
  names = {match.audioset_name.lower(), *synonyms}  # the whole display name, or one of its synonyms
  if match.method == "exact":
    assert vggsound_name in names
  elif match.method == "playing":
    assert vggsound_name.startswith("playing ") and vggsound_name.removeprefix("playing ") in names
  elif match.method == "words":
    have = set().union(*(_forms(w) for w in _words(vggsound_name)))
    assert any(all(_forms(w) & have for w in _words(s)) for s in synonyms)


def test_class_map_goes_from_mids_to_model_indices():
  class_map = audioset.read_class_map()
  assert sorted(class_map[HOWL]) == sorted([INDEX["dog howling"], INDEX["dog baying"]])
  assert SPEECH not in class_map
  hot = audioset.multi_hot([SPEECH, PIANO, BARK], class_map)
  assert set(np.flatnonzero(hot)) == {INDEX["playing piano"], INDEX["dog barking"]}
