"""The TFDS builder `vggsound` over a manual_dir of fixture clips made on the fly."""

import codecs
import csv
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from vggsound_jax.audio.decode import SAMPLE_RATE
from vggsound_jax.datasets import build as build_lib
from vggsound_jax.datasets import clip_lists, synthetic, vggsound
from vggsound_jax.errors import PathError
from vggsound_jax.labels import class_names
from vggsound_jax.testing.media import write_mp4

REPO = Path(__file__).resolve().parent.parent
NAMES = class_names()
COMMA_LABEL = next(n for n in NAMES if "," in n)  # exercises csv quoting
LABEL_A, LABEL_B = NAMES[0], NAMES[1]


def _signal(seconds, fs=SAMPLE_RATE, seed=0, channels=1):
  """Low tones plus a little noise, int16: survives resampling and AAC recognisably."""
  t = np.arange(int(round(seconds * fs))) / fs
  x = 0.4 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * 710 * t + seed)
  x = x + 0.02 * np.random.default_rng(seed).standard_normal(t.size)
  x = np.round(x * 32767).astype(np.int16)
  return np.stack([x] * channels, axis=1) if channels > 1 else x


def _write(path, samples, fs=SAMPLE_RATE):
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, samples, fs, subtype="PCM_16")


def _write_mp4(path, samples):
  path.parent.mkdir(parents=True, exist_ok=True)
  write_mp4(path, samples)


def _write_csv(path, rows):
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)


def _best_correlation(a, b, max_lag=64):
  """Largest normalised correlation of a and b over small shifts (resamplers delay)."""
  n = min(a.size, b.size) - 2 * max_lag
  a = a.astype(float)
  b = b.astype(float)
  return max(
    np.corrcoef(a[max_lag : max_lag + n], b[max_lag + lag : max_lag + lag + n])[0, 1]
    for lag in range(-max_lag, max_lag + 1)
  )


def _read_all(data_dir, config, split):
  builder = tfds.builder(f"vggsound/{config}", data_dir=data_dir)
  source = builder.as_data_source(split=split)
  return {e["clip_id"].decode(): e for e in (source[i] for i in range(len(source)))}


# Clips of the main fixture: clip_id -> (label, split); sources kept for comparison.
SOURCES = {
  "-a_A1_000010": _signal(1.5, seed=1),  # wav, id with - and _
  "bbb_000020": _signal(1.2, seed=2),  # flac in a subfolder
  "ccc_000030": _signal(1.0, seed=3),  # mp4 (AAC), deeper
  "ddd_000040": _signal(2.0, fs=44100, seed=4, channels=2),  # 44.1 kHz stereo
  "eee_000000": _signal(0.5, seed=5),  # short
  "iii_000001": _signal(1.0, seed=9),  # wav beside an mp4
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("vggsound")
  manual, data = root / "manual", root / "data"
  _write(manual / "-a_A1_000010.wav", SOURCES["-a_A1_000010"])
  _write(manual / "sub" / "bbb_000020.flac", SOURCES["bbb_000020"])
  _write_mp4(manual / "sub" / "deeper" / "ccc_000030.mp4", SOURCES["ccc_000030"])
  _write(manual / "ddd_000040.wav", SOURCES["ddd_000040"], fs=44100)
  _write(manual / "eee_000000.wav", SOURCES["eee_000000"])
  _write(manual / "iii_000001.wav", SOURCES["iii_000001"])
  _write_mp4(manual / "iii_000001.mp4", _signal(1.0, seed=10))
  (manual / "ggg_000060.wav").write_bytes(np.random.default_rng(0).bytes(3000))
  _write(manual / "hhh_000070.wav", np.zeros(0, np.int16))
  _write(manual / "unlisted_000001.wav", _signal(0.5))
  _write_csv(
    manual / "vggsound.csv",
    [
      ["-a_A1", 10, LABEL_A, "train"],
      ["bbb", 20, COMMA_LABEL, "train"],
      ["ccc", 30, LABEL_A, "test"],
      ["ddd", 40, LABEL_B, "test"],
      ["eee", 0, LABEL_B, "train"],
      ["fff", 50, LABEL_A, "train"],  # no file
      ["ggg", 60, LABEL_B, "test"],  # corrupt
      ["hhh", 70, LABEL_A, "train"],  # zero-length
      ["iii", 1, LABEL_B, "train"],
      ["-a_A1", 10, LABEL_A, "train"],  # exact duplicate
      ["bbb", 20, LABEL_B, "train"],  # duplicate with another label: first kept
    ],
  )
  _write_csv(
    manual / "AStest.csv", [["ccc_000030.mp4", LABEL_A], ["ggg_000060.mp4", LABEL_B], ["zzz_000001.mp4", LABEL_A]]
  )
  (manual / "Common.txt").write_text(f"{LABEL_A}\n{COMMA_LABEL}\n")
  report = vggsound.build(data, manual_dir=manual, num_workers=2)
  common_report = vggsound.build(data, config="common", manual_dir=manual, num_workers=1)
  return data, report, common_report


def test_splits_hold_the_decodable_clips(built):
  data, _, _ = built
  train, test, astest = (_read_all(data, "full", s) for s in ("train", "test", "astest"))
  assert set(train) == {"-a_A1_000010", "bbb_000020", "eee_000000", "iii_000001"}
  assert set(test) == {"ccc_000030", "ddd_000040"}
  assert set(astest) == {"ccc_000030"}
  names = tfds.builder("vggsound/full", data_dir=data).info.features["label"].names
  assert tuple(names) == NAMES
  e = train["bbb_000020"]
  assert names[e["label"]] == COMMA_LABEL  # first of the duplicate rows
  assert e["youtube_id"] == b"bbb" and e["start_seconds"] == 20
  assert train["-a_A1_000010"]["youtube_id"] == b"-a_A1"
  assert names[test["ddd_000040"]["label"]] == LABEL_B


def test_lossless_clips_are_sample_exact(built):
  data, _, _ = built
  train = _read_all(data, "full", "train")
  for clip in ("-a_A1_000010", "bbb_000020", "eee_000000", "iii_000001"):
    audio = train[clip]["audio"]
    assert audio.dtype == np.int16
    np.testing.assert_array_equal(audio, SOURCES[clip])  # whole clip, not tiled
  # The 0.5 s clip keeps its length: tiling belongs to the pipeline.
  assert train["eee_000000"]["audio"].size == SAMPLE_RATE // 2


def test_stereo_44k_and_mp4_are_converted(built):
  data, _, _ = built
  test = _read_all(data, "full", "test")
  stereo = test["ddd_000040"]["audio"]
  assert abs(stereo.size - 2 * SAMPLE_RATE) <= 64
  assert _best_correlation(stereo, _signal(2.0, seed=4)) > 0.95
  mp4 = test["ccc_000030"]["audio"]
  assert abs(mp4.size - SAMPLE_RATE) <= 2048
  assert _best_correlation(mp4, SOURCES["ccc_000030"], max_lag=1100) > 0.9


def test_report_lists_every_skipped_clip_with_its_reason(built):
  data, report, _ = built
  path = tfds.builder("vggsound/full", data_dir=data).data_path / build_lib.REPORT_NAME
  on_disk = json.loads(Path(path).read_text())
  skipped = {(s["split"], s["clip_id"]): s for s in on_disk["skipped"]}
  assert set(skipped) == {
    ("train", "fff_000050"),
    ("train", "hhh_000070"),
    ("test", "ggg_000060"),
    ("astest", "ggg_000060"),
  }
  assert skipped["train", "fff_000050"]["reason"] == build_lib.MISSING_FILE
  assert skipped["train", "fff_000050"]["path"] is None
  assert skipped["train", "hhh_000070"]["reason"] == "no audio samples"
  assert skipped["test", "ggg_000060"]["reason"].startswith("cannot decode")
  assert skipped["test", "ggg_000060"]["path"].endswith("ggg_000060.wav")
  assert on_disk["splits"]["train"] == {
    "rows": 6,
    "found": 5,
    "written": 4,
    "skipped": {"no such file": 1, "no audio samples": 1},
  }
  assert on_disk["splits"]["test"]["written"] == 2
  assert on_disk["csv_rows"] == 11 and on_disk["duplicate_rows"] == 2
  assert [c["clip_id"] for c in on_disk["conflicting_duplicates"]] == ["bbb_000020"]
  assert on_disk["astest_not_in_csv"] == 1
  assert vggsound.read_report(Path(path).parent) == report
  summary = report.summary()
  assert "train: 6 listed, 5 files found, 4 written; skipped: 1 no audio samples, 1 no such file" in summary
  assert "2 duplicates merged" in summary


def test_common_config_keeps_only_common_classes(built):
  data, _, common_report = built
  train = _read_all(data, "common", "train")
  names = tfds.builder("vggsound/common", data_dir=data).info.features["label"].names
  assert tuple(names) == NAMES  # model indices unchanged
  assert set(train) == {"-a_A1_000010", "bbb_000020"}
  assert set(_read_all(data, "common", "test")) == {"ccc_000030"}
  assert common_report.splits["train"].skipped == {"no such file": 1, "no audio samples": 1}


def test_build_is_skipped_when_already_prepared(built):
  data, report, _ = built
  assert vggsound.build(data, manual_dir=data.parent / "manual", num_workers=1) == report  # same inputs
  assert vggsound.build(data, num_workers=1) == report  # no manual_dir: nothing to compare with


@pytest.mark.parametrize(
  "row, message",
  [
    (["x", "1", LABEL_A], "expected 4 fields"),
    (["x", "1.5", LABEL_A, "train"], "start_seconds '1.5' is not a whole number"),
    (["x", "1", LABEL_A, "val"], "split 'val' is not one of train, test"),
    (["x", "1", "no such class", "train"], "unknown label 'no such class'"),
    (["", "1", LABEL_A, "train"], "empty youtube_id"),
  ],
)
def test_bad_csv_row_is_an_error_with_file_and_line(tmp_path, row, message):
  _write_csv(tmp_path / "vggsound.csv", [["ok", 1, LABEL_A, "train"], [], row])
  with pytest.raises(clip_lists.ClipListError) as e:
    clip_lists.read_clip_list(tmp_path / "vggsound.csv", NAMES)
  assert str(e.value).startswith(f"{tmp_path / 'vggsound.csv'}:3: {message}")
  assert "\n" not in str(e.value)


def test_bad_common_list_names_the_line(tmp_path):
  (tmp_path / "Common.txt").write_text(f"{LABEL_A}\nnot a class\n")
  with pytest.raises(clip_lists.ClipListError, match=r"Common.txt:2: unknown label"):
    clip_lists.read_common(tmp_path / "Common.txt", NAMES)


def test_bad_csv_stops_the_build_before_decoding(tmp_path, monkeypatch):
  manual = tmp_path / "manual"
  _write(manual / "a_000001.wav", _signal(1.0))
  _write_csv(manual / "vggsound.csv", [["a", 1, LABEL_A, "train"], ["b", 2, "nope", "test"]])
  decoded = []
  monkeypatch.setattr(build_lib, "decode_clip", lambda p: decoded.append(p))
  with pytest.raises(clip_lists.ClipListError, match=r"vggsound.csv:2: unknown label 'nope'"):
    vggsound.build(tmp_path / "data", manual_dir=manual, num_workers=1)
  assert decoded == []
  assert not (tmp_path / "data" / "vggsound" / "full").exists()  # nothing left of the failed build


def test_no_matching_files_is_a_one_line_error(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  _write_csv(manual / "vggsound.csv", [["a", 1, LABEL_A, "train"]])
  with pytest.raises(build_lib.ManualDirError, match="none of the clips") as e:
    vggsound.build(tmp_path / "data", manual_dir=manual, num_workers=1)
  assert "\n" not in str(e.value)


def _run_script(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
    [sys.executable, str(REPO / "scripts" / "build_dataset.py"), *args],
    capture_output=True,
    text=True,
    encoding="utf-8",
    env=env,
    timeout=120,
  )


def test_script_bad_manual_dir_and_bad_csv_give_one_line_errors(tmp_path):
  result = _run_script("--manual_dir", str(tmp_path / "nope"), "--data_dir", str(tmp_path))
  assert result.returncode == 1
  assert result.stderr.strip() == f"error: {tmp_path / 'nope'}: manual_dir is not a directory"
  _write_csv(tmp_path / "vggsound.csv", [["a", "x", LABEL_A, "train"]])
  result = _run_script("--manual_dir", str(tmp_path), "--data_dir", str(tmp_path / "data"))
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last == f"error: {tmp_path / 'vggsound.csv'}:1: start_seconds 'x' is not a whole number"


def test_done_when_four_good_clips_lossless_exact_two_bad_reported(tmp_path):
  """The issue's acceptance check, through the script and tfds.builder_from_directory."""
  manual = tmp_path / "manual"
  ten_seconds = _signal(10.0, seed=7)
  _write(manual / "real10s_000030.wav", ten_seconds)
  _write(manual / "flaccopy_000030.flac", ten_seconds)
  _write(manual / "stereo44k_000030.wav", _signal(10.0, fs=44100, seed=7, channels=2), fs=44100)
  _write(manual / "halfsec_000000.wav", ten_seconds[: SAMPLE_RATE // 2])
  (manual / "corrupt_000010.wav").write_bytes(np.random.default_rng(1).bytes(5000))
  _write_csv(
    manual / "vggsound.csv",
    [
      ["real10s", 30, LABEL_A, "train"],
      ["flaccopy", 30, LABEL_A, "train"],
      ["stereo44k", 30, LABEL_B, "train"],
      ["halfsec", 0, LABEL_B, "test"],
      ["corrupt", 10, LABEL_A, "train"],
      ["nofile", 20, LABEL_B, "test"],
    ],
  )
  result = _run_script("--manual_dir", str(manual), "--data_dir", str(tmp_path / "data"), "--num_workers", "2")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "vggsound/full: 4 clips written, 2 skipped" in result.stdout

  dataset_dir = tmp_path / "data" / "vggsound" / "full" / vggsound.DATASET_VERSION
  builder = tfds.builder_from_directory(dataset_dir)
  clips = {}
  for split in ("train", "test"):
    source = builder.as_data_source(split=split)
    clips.update({e["clip_id"].decode(): e["audio"] for e in (source[i] for i in range(len(source)))})
  assert set(clips) == {"real10s_000030", "flaccopy_000030", "stereo44k_000030", "halfsec_000000"}
  np.testing.assert_array_equal(clips["real10s_000030"], ten_seconds)
  np.testing.assert_array_equal(clips["flaccopy_000030"], ten_seconds)
  np.testing.assert_array_equal(clips["halfsec_000000"], ten_seconds[: SAMPLE_RATE // 2])
  assert abs(clips["stereo44k_000030"].size - 10 * SAMPLE_RATE) <= 64
  assert _best_correlation(clips["stereo44k_000030"], ten_seconds) > 0.95
  report = vggsound.read_report(dataset_dir)
  assert {(s["clip_id"], s["reason"].split(":")[0]) for s in report.skipped} == {
    ("corrupt_000010", "cannot decode"),
    ("nofile_000020", build_lib.MISSING_FILE),
  }


def test_plan_matches_clips_to_files_without_decoding(tmp_path, monkeypatch):
  _write(tmp_path / "a_000001.wav", _signal(0.5))
  _write(tmp_path / "sub" / "b_000002.flac", _signal(0.5))
  _write_csv(
    tmp_path / "vggsound.csv",
    [["a", 1, LABEL_A, "train"], ["b", 2, LABEL_B, "test"], ["c", 3, LABEL_A, "test"], ["a", 1, LABEL_A, "train"]],
  )
  _write_csv(tmp_path / "AStest.csv", [["c_000003.mp4", LABEL_A]])
  monkeypatch.setattr(build_lib, "decode_clip", lambda p: pytest.fail("decoded"))
  plan = clip_lists.plan_build(tmp_path)
  assert (plan.csv_rows, plan.duplicate_rows, plan.astest_not_in_csv) == (4, 1, 0)
  assert list(plan.splits) == ["train", "test", "astest"]
  assert [r.clip_id for r in plan.splits["test"].rows] == ["b_000002", "c_000003"]
  assert plan.splits["test"].paths == [tmp_path / "sub" / "b_000002.flac", None]
  assert list(plan.buildable_splits()) == ["train", "test"]  # astest has no file
  report = vggsound.BuildReport(config="full")
  vggsound.start_report(report, plan)
  assert report.skipped == [{"split": "astest", "clip_id": "c_000003", "path": None, "reason": build_lib.MISSING_FILE}]
  with pytest.raises(build_lib.ManualDirError, match="the common config needs Common.txt"):
    clip_lists.plan_build(tmp_path, common_only=True)


def test_generators_record_what_they_write_and_skip(tmp_path):
  _write(tmp_path / "a_000001.wav", _signal(0.5))
  rows = [clip_lists.ClipRow("a", 1, LABEL_A, "train", 1), clip_lists.ClipRow("b", 2, LABEL_A, "train", 2)]
  report = vggsound.BuildReport(config="full", splits={"train": build_lib.SplitReport(2, 1)})
  examples = list(
    vggsound.generate_manual_examples("train", rows, [tmp_path / "a_000001.wav", None], report=report, num_workers=1)
  )
  assert [key for key, _ in examples] == ["a_000001"]
  np.testing.assert_array_equal(examples[0][1]["audio"], _signal(0.5))
  assert report.splits["train"] == build_lib.SplitReport(2, 1, 1, {build_lib.MISSING_FILE: 1})
  report = vggsound.BuildReport(config="synthetic", splits={"test": build_lib.SplitReport()})
  assert (
    len(list(vggsound.generate_synthetic_examples("test", report=report, clips_per_class=1)))
    == report.splits["test"].written
    == len(synthetic.CLASS_NAMES)
  )


def test_script_prints_one_summary_and_does_not_rebuild(tmp_path):
  _write(tmp_path / "manual" / "a_000001.wav", _signal(0.5))
  _write_csv(tmp_path / "manual" / "vggsound.csv", [["a", 1, LABEL_A, "train"], ["b", 2, LABEL_A, "train"]])
  args = ("--manual_dir", str(tmp_path / "manual"), "--data_dir", str(tmp_path / "data"), "--num_workers", "1")
  first = _run_script(*args)
  assert first.returncode == 0, first.stderr[-2000:]
  assert (first.stdout + first.stderr).count("vggsound/full: 1 clips written, 1 skipped") == 1
  assert "already built" not in first.stdout
  second = _run_script(*args)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "vggsound/full is already built" in second.stdout
  assert (second.stdout + second.stderr).count("vggsound/full: 1 clips written, 1 skipped") == 1


# ---------------------------------------------------------------------------------------
# Lists with a byte-order mark or in another encoding; builds from other inputs; killed builds;
# temporary directories.


def test_lists_with_a_byte_order_mark_keep_their_first_line(tmp_path):
  (tmp_path / "vggsound.csv").write_bytes(codecs.BOM_UTF8 + f"a,1,{LABEL_A},train\nb,2,{LABEL_B},test\n".encode())
  (tmp_path / "AStest.csv").write_bytes(codecs.BOM_UTF8 + f"a_000001.mp4,{LABEL_A}\n".encode())
  (tmp_path / "Common.txt").write_bytes(codecs.BOM_UTF8 + f"{LABEL_A}\n".encode())
  rows = clip_lists.read_clip_list(tmp_path / "vggsound.csv", NAMES).rows
  assert [(r.youtube_id, r.line) for r in rows] == [("a", 1), ("b", 2)]
  assert clip_lists.read_astest(tmp_path / "AStest.csv") == {"a_000001"}
  assert clip_lists.read_common(tmp_path / "Common.txt", NAMES) == {LABEL_A}


@pytest.mark.parametrize(
  "data, message",
  [
    (f"a,1,{LABEL_A},train\nb,2,caf\xe9,train\n".encode("latin-1"), ":2: not UTF-8 text (byte 0xe9 at column 8)"),
    (f"a,1,{LABEL_A},train\n".encode("utf-16"), ":1: UTF-16 text; save it as UTF-8"),
  ],
  ids=["latin-1", "utf-16"],
)
def test_a_list_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path, data, message):
  (tmp_path / "vggsound.csv").write_bytes(data)
  with pytest.raises(clip_lists.ClipListError) as e:
    clip_lists.read_clip_list(tmp_path / "vggsound.csv", NAMES)
  assert str(e.value) == f"{tmp_path / 'vggsound.csv'}{message}"


def test_building_again_from_other_inputs_is_an_error_until_overwrite(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  _write(manual / "a_000001.wav", _signal(0.5, seed=1))
  _write(manual / "b_000002.wav", _signal(0.5, seed=2))
  _write_csv(manual / "vggsound.csv", [["a", 1, LABEL_A, "train"], ["b", 2, LABEL_B, "test"]])
  report = vggsound.build(data, manual_dir=manual, num_workers=1)
  assert set(report.inputs) == {"vggsound.csv", "AStest.csv", "clip files", "archives"}
  assert report.inputs["clip files"]["count"] == 2 and report.inputs["AStest.csv"] is None
  assert vggsound.build(data, manual_dir=manual, num_workers=1) == report  # the same inputs: kept

  with open(manual / "vggsound.csv", "a", newline="") as f:
    csv.writer(f).writerow(["c", 3, LABEL_A, "train"])
  with pytest.raises(build_lib.InputsChangedError) as e:
    vggsound.build(data, manual_dir=manual, num_workers=1)
  dataset_dir = data / "vggsound" / "full" / vggsound.DATASET_VERSION
  assert str(e.value) == (
    f"{dataset_dir}: vggsound/full here was built from other inputs than {manual}:"
    " vggsound.csv changed; rebuild it with --overwrite"
  )
  _write(manual / "c_000003.wav", _signal(0.7, seed=3))
  _write_csv(manual / "AStest.csv", [["b_000002.wav", LABEL_B]])
  with pytest.raises(
    build_lib.InputsChangedError,
    match=r"AStest.csv \(absent then, present now\), clip files \(2 then, 3 now\), vggsound.csv changed",
  ):
    vggsound.build(data, manual_dir=manual, num_workers=1)

  # Through the command: one line, and --overwrite rebuilds from the new inputs.
  args = ("--manual_dir", str(manual), "--data_dir", str(data), "--num_workers", "1")
  result = _run_script(*args)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {dataset_dir}: vggsound/full here was built from")
  result = _run_script(*args, "--overwrite")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "vggsound/full: 4 clips written, 0 skipped" in result.stdout  # astest repeats b
  assert set(_read_all(data, "full", "train")) == {"a_000001", "c_000003"}
  assert set(_read_all(data, "full", "astest")) == {"b_000002"}
  os.utime(manual / "a_000001.wav", ns=(1, 1))  # a clip file touched: its time changed
  with pytest.raises(build_lib.InputsChangedError, match=": clip files changed;"):
    vggsound.build(data, manual_dir=manual, num_workers=1)


def test_the_synthetic_config_records_its_seed_and_sizes(tmp_path):
  sizes = {"train": 1, "test": 1}
  config = vggsound.VggsoundConfig(name="tiny", source="synthetic", synthetic_clips_per_class=sizes)
  report = vggsound.build(tmp_path, config=config)
  assert report.inputs == {"synthetic seed": synthetic.DEFAULT_SEED, "synthetic clips per class": sizes}
  other = vggsound.VggsoundConfig(name="tiny", source="synthetic", synthetic_seed=5, synthetic_clips_per_class=sizes)
  with pytest.raises(build_lib.InputsChangedError, match="than the synthetic config: synthetic seed changed"):
    vggsound.build(tmp_path, config=other)


_KILLED_BUILD = """
import sys, time
from vggsound_jax.audio import decode
from vggsound_jax.datasets import vggsound
decode.decode_audio = lambda *a, **k: time.sleep(600)  # stuck mid-build until killed
vggsound.build(sys.argv[1], manual_dir=sys.argv[2], num_workers=1)
"""


def test_what_a_killed_build_leaves_is_removed_by_the_next(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  _write(manual / "a_000001.wav", _signal(0.5))
  _write_csv(manual / "vggsound.csv", [["a", 1, LABEL_A, "train"]])
  config_dir = data / "vggsound" / "full"
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(data), str(manual)], env=env)
  try:
    deadline = time.monotonic() + 120
    while not list(config_dir.glob("incomplete.*")) and time.monotonic() < deadline and proc.poll() is None:
      time.sleep(0.1)
  finally:
    proc.kill()
    proc.wait()
  (left,) = config_dir.glob("incomplete.*")
  # Not TFDS's own incomplete builds of this config and version: kept.
  keep = tmp_path / "keep"
  keep.mkdir()
  (keep / "file").write_text("mine")
  foreign = [
    config_dir / "incomplete.mine",
    config_dir / "incomplete.ABC123_9.9.9",
    config_dir / "incomplete.XYZ789_1.0.0",
  ]
  foreign[0].mkdir()
  foreign[1].mkdir()
  foreign[2].symlink_to(keep)

  report = vggsound.build(data, manual_dir=manual, num_workers=1)
  assert report.removed_leftovers == [str(left)] and not left.exists()
  assert all(p.exists() for p in foreign) and (keep / "file").read_text() == "mine"
  assert "removed what 1 interrupted builds left" in report.summary()
  assert set(_read_all(data, "full", "train")) == {"a_000001"}


def test_a_second_build_of_a_config_fails_while_one_runs(tmp_path):
  config_dir = tmp_path / "vggsound" / "synthetic"
  config_dir.mkdir(parents=True)
  fd = os.open(config_dir, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a build in progress holds it
    with pytest.raises(PathError, match="another build of vggsound/synthetic is running into it"):
      vggsound.build(tmp_path, config="synthetic")
  finally:
    os.close(fd)
  assert list(config_dir.iterdir()) == []


def test_a_build_leaves_no_temporary_directory(tmp_path):
  (tmp_path / "tmp").mkdir()
  env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
  _write(tmp_path / "manual" / "a_000001.wav", _signal(0.5))
  _write(tmp_path / "manual" / "b_000002.wav", _signal(0.5))
  _write_csv(tmp_path / "manual" / "vggsound.csv", [["a", 1, LABEL_A, "train"], ["b", 2, LABEL_A, "test"]])
  result = subprocess.run(
    [sys.executable, str(REPO / "scripts" / "build_dataset.py"), "--manual_dir", str(tmp_path / "manual")]
    + ["--data_dir", str(tmp_path / "data"), "--num_workers", "2"],
    capture_output=True,
    text=True,
    encoding="utf-8",
    env=env,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert list((tmp_path / "tmp").iterdir()) == []
  directories = sorted(
    p.relative_to(tmp_path / "data").as_posix() for p in (tmp_path / "data").rglob("*") if p.is_dir()
  )
  assert directories == ["vggsound", "vggsound/.config", "vggsound/full", "vggsound/full/1.0.0"]
