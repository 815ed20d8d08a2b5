"""Building from `.tar.gz` archives of mp4 clips (the Hugging Face mirror's layout), made on the fly:
a good archive, one truncated inside a member, one with a corrupt member."""

import csv
import gzip
import io
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from vggsound_jax.audio import decode as audio
from vggsound_jax.datasets import archives, clip_lists, vggsound
from vggsound_jax.datasets import build as build_lib
from vggsound_jax.labels import class_names
from vggsound_jax.testing.media import write_mp4

REPO = Path(__file__).resolve().parents[1]
NAMES = class_names()
# Where the mirror's archives keep their clips.
PREFIX = "scratch/shared/beegfs/hchen/train_data/VGGSound_final/video"


def _tone(seed, seconds=0.5):
  t = np.arange(int(seconds * 16000)) / 16000
  x = 0.3 * np.sin(2 * np.pi * (200 + 90 * seed) * t) + 0.02 * np.random.default_rng(seed).standard_normal(t.size)
  return np.round(x * 32767).astype(np.int16)


def _mp4_bytes(tmp_path, seed):
  path = tmp_path / f"tone{seed}.mp4"
  write_mp4(path, _tone(seed))
  return path.read_bytes()


def _tar_gz(members):
  """A .tar.gz of (name, bytes) members; None bytes make a directory."""
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode="w:gz") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
      else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return out.getvalue()


def _cut_inside_member(archive, member):
  """A prefix of the gzip bytes `archive` that ends inside `member`'s data."""
  with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
    info = tar.getmember(member)
  target = info.offset_data + info.size // 2

  def produced(n):
    return len(zlib.decompressobj(wbits=31).decompress(archive[:n]))

  lo, hi = 0, len(archive)
  while lo < hi:  # the shortest prefix that decompresses to `target` bytes or more
    mid = (lo + hi) // 2
    lo, hi = (mid + 1, hi) if produced(mid) < target else (lo, mid)
  assert info.offset_data < produced(lo) < info.offset_data + info.size
  return archive[:lo]


def _clip(name):
  return f"{PREFIX}/{name}.mp4"


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
  """manual_dir: three archives and one loose file; which clip is where is in the csv rows below."""
  root = tmp_path_factory.mktemp("archives")
  manual = root / "manual"
  manual.mkdir()
  mp4 = {seed: _mp4_bytes(root, seed) for seed in range(9)}
  (manual / "vggsound_00.tar.gz").write_bytes(
    _tar_gz(
      [
        (PREFIX, None),
        (_clip("a_000001"), mp4[0]),
        (_clip("b_000002"), mp4[1]),
        (_clip("loose_000003"), mp4[2]),  # also a loose file, which wins
        (_clip("dup_000004"), mp4[3]),  # also in vggsound_01, which comes later
        (f"{PREFIX}/README.txt", b"not a clip"),
      ]
    )
  )
  second = _tar_gz(
    [
      (_clip("dup_000004"), mp4[4]),
      (_clip("c_000005"), mp4[5]),
      (_clip("cut_000006"), mp4[6]),  # the archive ends inside this member
      (_clip("lost_000007"), mp4[7]),  # beyond the end: never seen
    ]
  )
  (manual / "vggsound_01.tar.gz").write_bytes(_cut_inside_member(second, _clip("cut_000006")))
  (manual / "sub").mkdir()
  (manual / "sub" / "vggsound_02.tar.gz").write_bytes(
    _tar_gz(
      [
        (_clip("bad_000008"), np.random.default_rng(0).bytes(3000)),  # not an mp4
        (f"{PREFIX}/._g_000009.mp4", b"macOS resource fork"),
        (_clip("g_000009"), mp4[8]),
      ]
    )
  )
  sf.write(manual / "loose_000003.wav", _tone(20), 16000, subtype="PCM_16")
  rows = [
    ("a", 1, "train"),
    ("b", 2, "test"),
    ("loose", 3, "train"),
    ("dup", 4, "train"),
    ("c", 5, "test"),
    ("cut", 6, "test"),
    ("lost", 7, "train"),
    ("bad", 8, "train"),
    ("g", 9, "test"),
    ("nowhere", 10, "train"),
  ]
  with open(manual / "vggsound.csv", "w", newline="") as f:
    csv.writer(f).writerows([youtube_id, start, NAMES[i], split] for i, (youtube_id, start, split) in enumerate(rows))
  return manual, {seed: root / f"tone{seed}.mp4" for seed in mp4}


def _examples(data_dir):
  builder = tfds.builder("vggsound/full", data_dir=data_dir)
  found = {}
  for split in ("train", "test"):
    source = builder.as_data_source(split=split)
    found.update({e["clip_id"].decode(): (split, e) for e in (source[i] for i in range(len(source)))})
  return found


@pytest.fixture(scope="module")
def built(manual, tmp_path_factory):
  """The documented command, 2 workers: archives listed and read by worker processes."""
  manual_dir, _ = manual
  root = tmp_path_factory.mktemp("built")
  (root / "tmp").mkdir()
  env = dict(os.environ, TMPDIR=str(root / "tmp"))
  proc = subprocess.run(
    [sys.executable, str(REPO / "scripts" / "build_dataset.py"), "--manual_dir", str(manual_dir)]
    + ["--data_dir", str(root / "data"), "--num_workers", "2"],
    capture_output=True,
    text=True,
    encoding="utf-8",
    env=env,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root, proc


def test_clips_come_from_archives_and_loose_files_win(built, manual):
  root, _ = built
  _, mp4 = manual
  examples = _examples(root / "data")
  assert set(examples) == {"a_000001", "b_000002", "loose_000003", "dup_000004", "c_000005", "g_000009"}
  assert examples["b_000002"][0] == "test" and examples["a_000001"][0] == "train"
  # Decoding from memory gives what decoding the same file from disk gives.
  for clip, seed in [("a_000001", 0), ("b_000002", 1), ("dup_000004", 3), ("c_000005", 5), ("g_000009", 8)]:
    np.testing.assert_array_equal(examples[clip][1]["audio"], audio.decode_audio(mp4[seed]))
  np.testing.assert_array_equal(examples["loose_000003"][1]["audio"], _tone(20))


def test_damage_costs_only_the_clips_it_damages_and_is_reported(built):
  root, proc = built
  report = vggsound.read_report(root / "data" / "vggsound" / "full" / vggsound.DATASET_VERSION)
  skipped = {s["clip_id"]: s for s in report.skipped}
  assert set(skipped) == {"cut_000006", "lost_000007", "bad_000008", "nowhere_000010"}
  assert skipped["cut_000006"]["reason"].startswith("damaged archive: truncated")
  assert skipped["cut_000006"]["path"].endswith(f"vggsound_01.tar.gz:{_clip('cut_000006')}")
  assert skipped["bad_000008"]["reason"].startswith("cannot decode")
  assert skipped["lost_000007"]["reason"] == skipped["nowhere_000010"]["reason"] == build_lib.MISSING_FILE
  damaged = {Path(a["path"]).name: a["problems"] for a in report.archives if a["problems"]}
  assert list(damaged) == ["vggsound_01.tar.gz"]
  assert damaged["vggsound_01.tar.gz"] == [
    "reading stopped after 3 members: truncated (the archive ends inside a member)"
  ]
  assert report.duplicate_archive_members == 1
  assert report.splits["test"].skipped == {"damaged archive": 1}
  assert report.splits["train"].skipped == {"cannot decode": 1, "no such file": 2}
  # One summary, with the damaged archive named.
  assert proc.stdout.count("vggsound/full: 6 clips written, 4 skipped") == 1
  assert "archives: 3 read (11 members, 1 duplicates ignored), 1 damaged" in proc.stdout
  assert "vggsound_01.tar.gz: reading stopped after 3 members: truncated" in proc.stdout


def test_the_build_leaves_no_temporary_directory(built):
  root, _ = built
  assert list((root / "tmp").iterdir()) == []
  assert [p.name for p in (root / "data").iterdir()] == ["vggsound"]
  assert not list((root / "data").rglob("incomplete.*"))


def test_one_worker_builds_the_same_data_set(built, manual, tmp_path):
  root, _ = built
  manual_dir, _ = manual
  report = vggsound.build(tmp_path, manual_dir=manual_dir, num_workers=1, log_summary=False)
  assert report == vggsound.read_report(root / "data" / "vggsound" / "full" / vggsound.DATASET_VERSION)
  ours, theirs = _examples(tmp_path), _examples(root / "data")
  assert list(ours) == list(theirs)  # stored in the same order, whatever order the clips arrived in
  for clip, (split, example) in ours.items():
    assert split == theirs[clip][0]
    np.testing.assert_array_equal(example["audio"], theirs[clip][1]["audio"])


def _member_offsets(data):
  with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
    return {m.name: m.offset for m in tar.getmembers()}


def test_a_damaged_tar_header_costs_its_member_only(tmp_path):
  members = [(f"v/m{i}_000001.mp4", bytes([i]) * 1500) for i in range(4)]
  raw = bytearray(gzip.decompress(_tar_gz(members)))
  raw[_member_offsets(_tar_gz(members))["v/m1_000001.mp4"] + 3] ^= 0xFF  # its name, so its checksum fails
  path = tmp_path / "damaged.tar.gz"
  path.write_bytes(gzip.compress(bytes(raw)))
  status = archives.ArchiveStatus(str(path))
  read = {m.name: m.data for m in archives.scan(path, lambda name: True, status)}
  assert read == {name: data for name, data in members if name != "v/m1_000001.mp4"}
  assert status.members == 3
  assert status.problems == ["2048 bytes of unreadable tar data skipped before member v/m2_000001.mp4"]


def test_corrupt_compressed_data_keeps_the_members_before_it(tmp_path):
  members = [(f"v/m{i}_000001.mp4", np.random.default_rng(i).bytes(40_000)) for i in range(4)]
  data = bytearray(_tar_gz(members))
  data[len(data) * 3 // 4 : len(data) * 3 // 4 + 64] = bytes(64)
  path = tmp_path / "corrupt.tar.gz"
  path.write_bytes(bytes(data))
  status = archives.ArchiveStatus(str(path))
  read = [m for m in archives.scan(path, lambda name: True, status)]
  good = [m.name for m in read if m.data is not None]
  assert good == [name for name, _ in members[: len(good)]] and len(good) >= 2
  assert [m.data for m in read if m.data is not None] == [d for _, d in members[: len(good)]]
  assert len(status.problems) == 1 and "corrupt compressed data" in status.problems[0]


def test_a_file_that_is_not_gzip_is_reported(tmp_path):
  (tmp_path / "plain.tar.gz").write_bytes(gzip.decompress(_tar_gz([("v/a_000001.mp4", b"x" * 100)])))
  listing = archives.list_archive(tmp_path / "plain.tar.gz")
  assert listing.names == [] and listing.status.problems == ["reading stopped after 0 members: not a gzip file"]


def test_a_reader_process_that_dies_is_reported_not_waited_for():
  results = list(archives._in_processes(os._exit, [(3,), (3,)], 2))
  assert sorted(index for index, _, _ in results) == [0, 1]
  assert all(item is None and "exit code" in why for _, item, why in results)


def test_plan_lists_archives_and_prefers_loose_files(manual, monkeypatch):
  manual_dir, _ = manual
  monkeypatch.setattr(archives, "decode_members", lambda *a: pytest.fail("decoded"))
  plan = clip_lists.plan_build(manual_dir, num_workers=1)
  where = {row.clip_id: path for split in plan.splits.values() for row, path in zip(split.rows, split.paths)}
  assert where["loose_000003"] == manual_dir / "loose_000003.wav"
  assert where["dup_000004"] == archives.ArchiveMember(manual_dir / "vggsound_00.tar.gz", _clip("dup_000004"))
  assert where["cut_000006"].archive == manual_dir / "vggsound_01.tar.gz"
  assert where["g_000009"].archive == manual_dir / "sub" / "vggsound_02.tar.gz"
  assert where["lost_000007"] is None and where["nowhere_000010"] is None
  archive_order = [Path(s.path).relative_to(manual_dir).as_posix() for s in plan.archives]
  assert archive_order == ["sub/vggsound_02.tar.gz", "vggsound_00.tar.gz", "vggsound_01.tar.gz"]  # path order
  unlisted = clip_lists.plan_build(manual_dir, list_archives=False)
  assert unlisted.archive_paths == plan.archive_paths and not unlisted.archives
  assert clip_lists.input_fingerprint(unlisted) == clip_lists.input_fingerprint(plan)


def test_member_decoding_reports_the_member_name(tmp_path):
  with pytest.raises(audio.AudioDecodeError) as e:
    audio.decode_audio_bytes(b"\0" * 500, "x.tar.gz:v/a_000001.mp4")
  assert str(e.value).startswith("x.tar.gz:v/a_000001.mp4: cannot decode")
  assert "/proc/" not in str(e.value)
  wav = io.BytesIO()
  sf.write(wav, _tone(3), 16000, subtype="PCM_16", format="WAV")
  np.testing.assert_array_equal(audio.decode_audio_bytes(wav.getvalue(), "a.wav"), _tone(3))
