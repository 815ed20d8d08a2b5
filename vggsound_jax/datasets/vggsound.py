"""TFDS builder `vggsound`: the user's VGGSound clips, and an embedded synthetic stand-in.

Configs:
  full       (default) every clip of the user's `vggsound.csv` that has a file in manual_dir;
             309-class label in model order (`vggsound_jax.labels`,
             docs/original_pipeline.md#labels-and-class-order).
  common     the same, restricted to the classes listed in manual_dir's `Common.txt` (the
             classes VGGSound shares with AudioSet); same 309-name label, so model indices
             do not change.
  synthetic  procedurally generated sounds (`vggsound_jax.datasets.synthetic`), no download.

Splits: `train` and `test` from the csv's split column; `astest`, the test clips listed in
the original repository's `AStest.csv`, when that file is in manual_dir (full and common).
What manual_dir holds: docs/original_pipeline.md#the-data-set-as-users-have-it.

Build with `python scripts/build_dataset.py --manual_dir DIR --data_dir DIR`, or with
`tfds build vggsound --imports vggsound_jax.datasets --manual_dir DIR --data_dir DIR`.

Clips are loose files in manual_dir or members of `.tar.gz` archives there (the Hugging Face
mirror's `vggsound_NN.tar.gz`), read without extracting them (`archives.py`); a clip that is
both a loose file and an archive member is read from the loose file, and a clip in several
archives from the first archive in path order.

Every clip that cannot be used (no file, undecodable, empty, cut by a damaged archive) is
skipped, counted and listed with its reason in `build_report.json` next to the TFDS files, and
in the summary shown at the end of the build. Problems in the lists themselves (a malformed
row, an unknown label, text that is not UTF-8) stop the build before any decoding, with the
file and line number; a UTF-8 byte-order mark is fine.

A build records a fingerprint of its inputs in its report (the lists' contents; path, size and
modification time of every clip file and archive it uses; the synthetic config's seed and
sizes). Building again into a data_dir that holds the config built from other inputs is an
error that points at `--overwrite`, never a silent reuse. Builds of one config take a lock on
its directory; each removes the `incomplete.*` directories that a killed build of the same
config and version left there, and a build leaves no temporary directory behind.

A build is a chain of functions of their inputs: `plan_build` reads and checks the lists and
matches clips to files and archive members (listing the archives takes a pass over each; no
decoding); `generate_manual_examples` / `generate_synthetic_examples` yield one split's examples
and record what they write and skip in the `BuildReport` they are given;
`Vggsound.download_and_prepare` makes that report for its call, writes it and returns it, and
`build` returns it to its caller. With archives, each split takes one more pass over the
archives holding its clips (a .tar.gz cannot be read otherwise), and its clips arrive in the
order the archives give them; TFDS stores examples in an order of their keys, so the data set
does not depend on it.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm import tqdm

from vggsound_jax import labels
from vggsound_jax.audio import decode as audio_lib
from vggsound_jax.datasets import archives as archives_lib
from vggsound_jax.datasets import synthetic
from vggsound_jax.datasets.archives import ArchiveMember
from vggsound_jax.errors import PathError, UserError

try:
  import fcntl
except ImportError:  # not POSIX: builds of one config are not guarded against each other
  fcntl = None

NAME = "vggsound"
DATASET_VERSION = "1.0.0"
FILE_FORMAT = "array_record"
REPORT_NAME = "build_report.json"

CSV_NAME = "vggsound.csv"
ASTEST_NAME = "AStest.csv"
COMMON_NAME = "Common.txt"
CSV_SPLITS = ("train", "test")
ASTEST_SPLIT = "astest"
# When a clip exists in several formats, the first in this order is used: the lossless
# 16 kHz files decode bit-exactly, the videos go through a resampler.
MEDIA_EXTENSIONS = (".wav", ".flac", ".mp4", ".mkv", ".webm")

MISSING_FILE = "no such file"
# TFDS builds into `{config dir}/incomplete.{6 random letters or digits}_{version}` and renames
# it at the end; a killed build leaves it behind.
_INCOMPLETE_DIR = re.compile(r"incomplete\.[A-Z0-9]{6}_(?P<version>.+)")

_DESCRIPTION = """\
VGGSound (Chen, Xie, Vedaldi, Zisserman, ICASSP 2020): about 200k 10 s YouTube clips, 309
audio classes. Audio is stored decoded as 16 kHz mono int16 with its original length
(tiling to 10 s is left to the input pipeline), so the model's front end can be applied
exactly. The `synthetic` config holds generated sounds for tests and quick runs.
"""

_CITATION = """\
@inproceedings{chen2020vggsound,
  title={VGGSound: A Large-scale Audio-Visual Dataset},
  author={Chen, Honglie and Xie, Weidi and Vedaldi, Andrea and Zisserman, Andrew},
  booktitle={ICASSP},
  year={2020}
}
"""

_MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
VGGSound cannot be downloaded automatically (its clips are YouTube videos, about 20% of
which are gone). Put in manual_dir:
  * `{CSV_NAME}`: the data set's list, one clip a line, no header:
    `youtube_id,start_seconds,label,split` (split is train or test);
  * the clip files you have, named `{{youtube_id}}_{{start:06d}}.{{ext}}` with ext one of
    {", ".join(e[1:] for e in MEDIA_EXTENSIONS)}; subfolders are searched; and/or `.tar.gz`
    archives of such files (the Hugging Face mirror's `vggsound_NN.tar.gz`), read as they are;
  * optionally the original repository's `{ASTEST_NAME}` (adds the `{ASTEST_SPLIT}` split) and
    `{COMMON_NAME}` (needed by the `common` config).
Clips listed but not found are skipped and listed in {REPORT_NAME}.
"""


class ClipListError(PathError):
  """A malformed line in one of the lists in manual_dir: 'FILE:LINE: reason'."""

  def __init__(self, path: str | os.PathLike, line: int, reason: str) -> None:
    super().__init__(f"{path}:{line}", reason)


class ManualDirError(UserError, ValueError):
  """manual_dir is unusable (missing, without the csv, without any clip)."""


class InputsChangedError(PathError):
  """data_dir holds the config built from other inputs than those given now."""


# ---------------------------------------------------------------------------------------
# Lists in manual_dir.


@dataclasses.dataclass(frozen=True)
class ClipRow:
  youtube_id: str
  start_seconds: int
  label: str
  split: str
  line: int

  @property
  def clip_id(self) -> str:
    return clip_id(self.youtube_id, self.start_seconds)


def clip_id(youtube_id: str, start_seconds: int) -> str:
  """The clip's file stem and key: `{youtube_id}_{start:06d}`."""
  return f"{youtube_id}_{start_seconds:06d}"


@dataclasses.dataclass
class ClipList:
  """The unique rows of a csv, in file order, and what was merged or dropped on the way."""

  rows: list[ClipRow]
  duplicate_rows: int = 0
  # Repeated clips whose label or split differ from the first row: the first row is kept.
  conflicts: list[dict] = dataclasses.field(default_factory=list)


def read_text(path: str | os.PathLike) -> str:
  """A list's text: UTF-8, with or without a byte-order mark (spreadsheets write one).

  Raises ClipListError naming the line of the first byte that is not UTF-8.
  """
  data = Path(path).read_bytes()
  if data.startswith(codecs.BOM_UTF8):
    data = data[len(codecs.BOM_UTF8) :]
  elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    raise ClipListError(path, 1, "UTF-16 text; save it as UTF-8")
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise ClipListError(path, line, f"not UTF-8 text (byte 0x{data[e.start]:02x} at column {column})") from None


def _csv_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of each record of a csv list."""
  reader = csv.reader(io.StringIO(read_text(path), newline=""))
  for fields in reader:
    yield reader.line_num, fields


def read_clip_list(path: str | os.PathLike, known_labels: Iterable[str]) -> ClipList:
  """Parses `vggsound.csv`; raises ClipListError naming the line of the first bad row."""
  known = set(known_labels)
  rows: dict[str, ClipRow] = {}
  result = ClipList(rows=[])
  for line, fields in _csv_rows(path):
    if not fields or all(not x.strip() for x in fields):
      continue  # Blank lines carry nothing.
    if len(fields) != 4:
      raise ClipListError(path, line, f"expected 4 fields youtube_id,start_seconds,label,split, got {len(fields)}")
    youtube_id, start, label, split = (x.strip() for x in fields)
    if not youtube_id:
      raise ClipListError(path, line, "empty youtube_id")
    if not start.isdigit():
      raise ClipListError(path, line, f"start_seconds {start!r} is not a whole number")
    if split not in CSV_SPLITS:
      raise ClipListError(path, line, f"split {split!r} is not one of {', '.join(CSV_SPLITS)}")
    if label not in known:
      raise ClipListError(path, line, f"unknown label {label!r}")
    row = ClipRow(youtube_id, int(start), label, split, line)
    first = rows.get(row.clip_id)
    if first is None:
      rows[row.clip_id] = row
      result.rows.append(row)
      continue
    result.duplicate_rows += 1
    if (first.label, first.split) != (row.label, row.split):
      result.conflicts.append(
        {
          "clip_id": row.clip_id,
          "kept_line": first.line,
          "dropped_line": line,
          "kept": [first.label, first.split],
          "dropped": [row.label, row.split],
        }
      )
  return result


def read_astest(path: str | os.PathLike) -> set[str]:
  """Clip ids of `AStest.csv` (rows `{clip_id}.{ext},label`)."""
  ids = set()
  for line, fields in _csv_rows(path):
    if not fields or all(not x.strip() for x in fields):
      continue
    if len(fields) != 2 or not fields[0].strip():
      raise ClipListError(path, line, "expected 2 fields: clip file name,label")
    ids.add(clip_id_of_file(fields[0].strip()) or fields[0].strip())
  return ids


def read_common(path: str | os.PathLike, known_labels: Iterable[str]) -> set[str]:
  """Class names of `Common.txt`, one per line; unknown names are an error."""
  known = set(known_labels)
  names = set()
  for line, text in enumerate(read_text(path).splitlines(), start=1):
    name = text.strip()
    if not name:
      continue
    if name not in known:
      raise ClipListError(path, line, f"unknown label {name!r}")
    names.add(name)
  return names


def clip_id_of_file(name: str) -> str | None:
  """The clip id a file or archive member name stands for (its stem), or None if not a clip."""
  base = os.path.basename(name)
  stem, ext = os.path.splitext(base)
  if base.startswith(".") or ext.lower() not in MEDIA_EXTENSIONS:
    return None  # hidden files include the `._NAME` copies macOS's tar adds
  return stem


def _better(ext: str, than: str) -> bool:
  return MEDIA_EXTENSIONS.index(ext.lower()) < MEDIA_EXTENSIONS.index(than.lower())


def index_manual_dir(root: str | os.PathLike) -> tuple[dict[str, Path], list[Path]]:
  """Clip files under `root` (recursively) by clip id, preferring lossless, and the archives there.

  Archives are in path order, the order in which they are searched for a clip.
  """
  found: dict[str, Path] = {}
  archives = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    for name in filenames:
      if name.startswith("."):
        continue
      if archives_lib.is_archive(name):
        archives.append(Path(dirpath, name))
        continue
      clip = clip_id_of_file(name)
      if clip is None:
        continue
      current = found.get(clip)
      if current is None or _better(os.path.splitext(name)[1], current.suffix):
        found[clip] = Path(dirpath, name)
  return found, sorted(archives)


def index_media_files(root: str | os.PathLike) -> dict[str, Path]:
  """Maps each clip file stem under `root` (recursively) to its file, preferring lossless."""
  return index_manual_dir(root)[0]


# ---------------------------------------------------------------------------------------
# Build report.


@dataclasses.dataclass
class SplitReport:
  rows: int = 0  # unique clips the csv lists for this split
  found: int = 0  # of which a file was found
  written: int = 0  # of which decoded and stored
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason kind -> count


@dataclasses.dataclass
class BuildReport:
  """What a build used and what it skipped; written as build_report.json."""

  config: str
  manual_dir: str | None = None
  csv_rows: int = 0
  duplicate_rows: int = 0
  conflicting_duplicates: list[dict] = dataclasses.field(default_factory=list)
  astest_not_in_csv: int = 0
  splits: dict[str, SplitReport] = dataclasses.field(default_factory=dict)
  # One entry per skipped clip: split, clip_id, path (None when missing; ARCHIVE:MEMBER for an
  # archive member), reason.
  skipped: list[dict] = dataclasses.field(default_factory=list)
  # One entry per archive in manual_dir: path, members (regular members listed), problems
  # (damage met while listing it, one line each).
  archives: list[dict] = dataclasses.field(default_factory=list)
  duplicate_archive_members: int = 0  # members naming a clip that an earlier file or member gives
  # What the data set was built from (see `input_fingerprint`); empty in reports written before
  # fingerprints were recorded.
  inputs: dict = dataclasses.field(default_factory=dict)
  # `incomplete.*` directories of killed builds of this config that the build removed.
  removed_leftovers: list[str] = dataclasses.field(default_factory=list)

  def skip(self, split: str, clip: str, path: str | None, reason: str) -> None:
    kind = reason.split(":", 1)[0]
    counts = self.splits[split].skipped
    counts[kind] = counts.get(kind, 0) + 1
    self.skipped.append({"split": split, "clip_id": clip, "path": path, "reason": reason})

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> BuildReport:
    data = dict(data)
    data["splits"] = {k: SplitReport(**v) for k, v in data["splits"].items()}
    return cls(**data)

  def summary(self) -> str:
    """The end-of-build summary: per split, found / written / skipped and why."""
    written = sum(s.written for s in self.splits.values())
    lines = [f"{NAME}/{self.config}: {written} clips written, {len(self.skipped)} skipped"]
    if self.csv_rows:
      lines.append(
        f"  csv: {self.csv_rows} rows, {self.duplicate_rows} duplicates merged"
        f" ({len(self.conflicting_duplicates)} with a different label or split:"
        " first row kept)"
      )
    if self.removed_leftovers:
      lines.append(
        f"  removed what {len(self.removed_leftovers)} interrupted builds left: {', '.join(self.removed_leftovers)}"
      )
    if self.archives:
      damaged = [a for a in self.archives if a["problems"]]
      members = sum(a["members"] for a in self.archives)
      lines.append(
        f"  archives: {len(self.archives)} read ({members} members, {self.duplicate_archive_members}"
        f" duplicates ignored), {len(damaged)} damaged"
        + (": clips they held past the damage are counted as missing" if damaged else "")
      )
      lines.extend(f"    {a['path']}: {'; '.join(a['problems'])}" for a in damaged)
    for name, s in self.splits.items():
      if not s.rows:
        continue  # the csv lists nothing for it
      why = ", ".join(f"{n} {kind}" for kind, n in sorted(s.skipped.items())) or "none"
      lines.append(f"  {name}: {s.rows} listed, {s.found} files found, {s.written} written; skipped: {why}")
    return "\n".join(lines)


def read_report(dataset_dir: str | os.PathLike) -> BuildReport:
  """The report stored in a built dataset directory."""
  with open(Path(dataset_dir, REPORT_NAME), encoding="utf-8") as f:
    return BuildReport.from_json(json.load(f))


def write_report(report: BuildReport, dataset_dir: str | os.PathLike) -> None:
  """Stores `report` as build_report.json in a built dataset directory (atomically)."""
  path = Path(dataset_dir, REPORT_NAME)
  tmp = path.with_name(f".{REPORT_NAME}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(report.to_json(), f, indent=1)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Decoding in worker processes.


def _decode_job(path: str | None) -> tuple[np.ndarray | None, str | None]:
  """(samples, None) or (None, reason); never raises, so one bad file cannot stop a build."""
  if path is None:
    return None, MISSING_FILE
  try:
    return audio_lib.decode_audio(path), None
  except audio_lib.AudioDecodeError as e:
    return None, e.problem
  except Exception as e:  # pylint: disable=broad-except
    # Not expected from the decoder, but a build of 200k files must not die on one; the
    # clip is reported with the error instead.
    return None, f"cannot decode: {type(e).__name__}: {e}"


def _decode_all(paths: Sequence[str | None], num_workers: int, desc: str) -> Iterator:
  """Yields `_decode_job` of each path, in order, decoded by `num_workers` processes."""
  progress = tqdm(total=len(paths), desc=desc, unit="clip", mininterval=1.0)
  try:
    if num_workers <= 1:
      for path in paths:
        yield _decode_job(path)
        progress.update()
      return
    # spawn, not fork: the parent may hold TensorFlow's threads, which fork does not copy.
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
      for result in pool.imap(_decode_job, paths, chunksize=4):
        yield result
        progress.update()
  finally:
    progress.close()


# ---------------------------------------------------------------------------------------
# Planning a build from manual_dir: every list read and checked, every clip matched to its
# file, before anything is decoded.


# Where a clip is: a loose file, an archive member, or nowhere (None).
ClipSource = Path | ArchiveMember | None


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """The clips the lists put in one split, in list order, and where each is (None: nowhere)."""

  rows: list[ClipRow]
  paths: list[ClipSource]

  @property
  def found(self) -> int:
    return sum(p is not None for p in self.paths)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
  """What a build of manual_dir will decode, and what the lists said on the way."""

  manual_dir: Path
  csv_rows: int  # rows of the csv, duplicates included
  duplicate_rows: int  # of which repeat an earlier clip
  conflicting_duplicates: list[dict]  # see ClipList.conflicts
  astest_not_in_csv: int  # AStest.csv clips that the csv does not list
  # Every split the lists define, in order: train, test, then astest if AStest.csv is there.
  # A split may have no file at all (`found == 0`); TFDS cannot store it, so it is not built.
  splits: dict[str, SplitPlan]
  # The lists the plan was made from (None: absent), by name; part of the inputs' fingerprint.
  lists: dict[str, Path | None] = dataclasses.field(default_factory=dict)
  archive_paths: list[Path] = dataclasses.field(default_factory=list)
  # What listing each archive found (empty when the plan was made without listing them).
  archives: list[archives_lib.ArchiveStatus] = dataclasses.field(default_factory=list)
  duplicate_archive_members: int = 0

  def buildable_splits(self) -> dict[str, SplitPlan]:
    """The splits with at least one file, in order."""
    return {name: split for name, split in self.splits.items() if split.found}


def plan_build(
  manual_dir: str | os.PathLike, *, common_only: bool = False, num_workers: int = 1, list_archives: bool = True
) -> BuildPlan:
  """Reads and checks the lists of manual_dir and matches their clips to its files and archives.

  See docs/original_pipeline.md#the-data-set-as-users-have-it for the lists. `common_only`
  keeps the clips of the classes in Common.txt (the `common` config). The archives' members
  are known only by reading them through (`num_workers` at a time); `list_archives=False`
  skips that, leaving the clips that only an archive holds unmatched (enough for
  `input_fingerprint`). A loose file wins over an archive member, an earlier archive (path
  order) over a later one.

  Raises:
    ManualDirError: no csv; no Common.txt when `common_only`; no clip with a file.
    ClipListError: a malformed line in one of the lists (file and line number).
  """
  manual_dir = Path(manual_dir)
  if not (manual_dir / CSV_NAME).is_file():
    raise ManualDirError(f"{manual_dir}: no {CSV_NAME} (see the builder's instructions)")
  names = labels.class_names()
  lists: dict[str, Path | None] = {CSV_NAME: manual_dir / CSV_NAME}
  clip_list = read_clip_list(manual_dir / CSV_NAME, names)
  rows = clip_list.rows
  if common_only:
    if not (manual_dir / COMMON_NAME).is_file():
      raise ManualDirError(f"{manual_dir}: the common config needs {COMMON_NAME}")
    lists[COMMON_NAME] = manual_dir / COMMON_NAME
    common = read_common(manual_dir / COMMON_NAME, names)
    rows = [r for r in rows if r.label in common]
  split_rows = {s: [r for r in rows if r.split == s] for s in CSV_SPLITS}
  astest_not_in_csv = 0
  lists[ASTEST_NAME] = None
  if (manual_dir / ASTEST_NAME).is_file():
    lists[ASTEST_NAME] = manual_dir / ASTEST_NAME
    astest = read_astest(manual_dir / ASTEST_NAME)
    astest_not_in_csv = len(astest - {r.clip_id for r in clip_list.rows})
    split_rows[ASTEST_SPLIT] = [r for r in split_rows["test"] if r.clip_id in astest]

  files, archive_paths = index_manual_dir(manual_dir)
  sources: dict[str, ClipSource] = {row.clip_id: files[row.clip_id] for row in rows if row.clip_id in files}
  statuses, duplicates = [], 0
  if archive_paths and list_archives:
    for listing in archives_lib.list_archives(archive_paths, num_workers):
      statuses.append(listing.status)
      for name in listing.names:
        clip = clip_id_of_file(name)
        if clip is None or clip in files:
          continue
        if clip in sources:
          duplicates += 1
          continue
        sources[clip] = ArchiveMember(Path(listing.status.path), name)
  plan = BuildPlan(
    manual_dir=manual_dir,
    csv_rows=len(clip_list.rows) + clip_list.duplicate_rows,
    duplicate_rows=clip_list.duplicate_rows,
    conflicting_duplicates=clip_list.conflicts,
    astest_not_in_csv=astest_not_in_csv,
    splits={split: SplitPlan(rows=r, paths=[sources.get(row.clip_id) for row in r]) for split, r in split_rows.items()},
    lists=lists,
    archive_paths=archive_paths,
    archives=statuses,
    duplicate_archive_members=duplicates,
  )
  if not plan.buildable_splits() and (list_archives or not archive_paths):
    damaged = [status for status in statuses if status.problems]
    raise ManualDirError(
      f"{manual_dir}: none of the clips in {CSV_NAME} has a file"
      f" (expected names like {rows[0].clip_id if rows else 'ID_000030'}"
      f".{{{','.join(e[1:] for e in MEDIA_EXTENSIONS)}}}, loose or in"
      f" {'/'.join(archives_lib.ARCHIVE_SUFFIXES)} archives)"
      + (f"; {len(damaged)} archives are damaged, e.g. {damaged[0].path}: {damaged[0].problems[0]}" if damaged else "")
    )
  return plan


def _digest(lines: Iterable[str]) -> str:
  h = hashlib.sha256()
  for line in lines:
    h.update(line.encode("utf-8", "surrogateescape") + b"\n")
  return h.hexdigest()


def _files_fingerprint(paths: Iterable[Path], root: Path) -> dict[str, Any]:
  """Count and digest of (path under root, size, modification time) of each file."""
  entries = []
  for path in sorted(set(paths)):
    st = path.stat()
    entries.append(f"{path.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}")
  return {"count": len(entries), "sha256": _digest(entries)}


def input_fingerprint(plan: BuildPlan) -> dict[str, Any]:
  """What a build from `plan` reads, cheaply: the lists' contents (sha256, None when absent);
  path, size and modification time of each clip file and archive the plan uses.

  Archive contents are not read (an archive is 17 GB): a changed archive changes its size or
  modification time. Moving manual_dir keeps the fingerprint; touching a file changes it.
  """
  fingerprint: dict[str, Any] = {
    name: None if path is None else hashlib.sha256(path.read_bytes()).hexdigest() for name, path in plan.lists.items()
  }
  loose = [p for split in plan.splits.values() for p in split.paths if isinstance(p, Path)]
  fingerprint["clip files"] = _files_fingerprint(loose, plan.manual_dir)
  fingerprint["archives"] = _files_fingerprint(plan.archive_paths, plan.manual_dir)
  return fingerprint


def synthetic_fingerprint(config: VggsoundConfig) -> dict[str, Any]:
  """The synthetic config's inputs: its seed and sizes."""
  return {"synthetic seed": config.synthetic_seed, "synthetic clips per class": dict(config.synthetic_clips_per_class)}


def fingerprint_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """What differs between two fingerprints, one phrase each ("vggsound.csv", "clip files (3 then, 4 now)")."""
  differences = []
  for key in sorted(set(stored) | set(current)):
    old, new = stored.get(key), current.get(key)
    if old == new:
      continue
    if isinstance(old, dict) and isinstance(new, dict) and old.get("count") != new.get("count"):
      differences.append(f"{key} ({old.get('count')} then, {new.get('count')} now)")
    elif old is None or new is None:
      differences.append(
        f"{key} ({'absent' if old is None else 'present'} then, {'absent' if new is None else 'present'} now)"
      )
    else:
      differences.append(key)
  return differences


def start_report(report: BuildReport, plan: BuildPlan) -> None:
  """Records `plan` in the report of its build, before any decoding.

  Fills the list-level fields and the inputs' fingerprint, adds one SplitReport per split of
  the plan (the generators then count what they write), and records as skipped the clips of
  the splits that are not built for want of any file.
  """
  report.manual_dir = str(plan.manual_dir)
  report.csv_rows = plan.csv_rows
  report.duplicate_rows = plan.duplicate_rows
  report.conflicting_duplicates = plan.conflicting_duplicates
  report.astest_not_in_csv = plan.astest_not_in_csv
  report.archives = [dataclasses.asdict(status) for status in plan.archives]
  report.duplicate_archive_members = plan.duplicate_archive_members
  report.inputs = input_fingerprint(plan)
  for split, split_plan in plan.splits.items():
    report.splits[split] = SplitReport(rows=len(split_plan.rows), found=split_plan.found)
    if not split_plan.found:
      for row in split_plan.rows:
        report.skip(split, row.clip_id, None, MISSING_FILE)


# ---------------------------------------------------------------------------------------
# Example generation: TFDS writes what these yield. Each records what it writes and skips in
# the `report` it is given, whose `splits[split]` must exist (start_report makes them).

Example = tuple[str, dict[str, Any]]


def _example(row: ClipRow, samples: np.ndarray) -> Example:
  return (
    row.clip_id,
    {
      "audio": samples,
      "label": row.label,
      "clip_id": row.clip_id,
      "youtube_id": row.youtube_id,
      "start_seconds": row.start_seconds,
    },
  )


def generate_manual_examples(
  split: str, rows: Sequence[ClipRow], paths: Sequence[ClipSource], *, report: BuildReport, num_workers: int = 1
) -> Iterator[Example]:
  """Decodes the clips of one split and yields `(clip_id, example)` for each usable one.

  Loose files first (in list order, by `num_workers` processes), then archive members (one
  pass over each archive holding some, `num_workers` archives at a time, in the order they
  complete: TFDS stores examples in an order of their keys, not of arrival). A clip without a
  file, or whose file cannot be decoded or is empty, or that a damaged archive cut, is skipped
  and recorded in `report` with its reason, in list order.

  Raises:
    ManualDirError: at the end, if not one of the split's files could be decoded.
  """
  split_report = report.splits[split]
  skipped: dict[int, tuple[str | None, str]] = {}  # row position -> (path, reason)
  loose = [i for i, p in enumerate(paths) if p is not None and not isinstance(p, ArchiveMember)]
  members = [i for i, p in enumerate(paths) if isinstance(p, ArchiveMember)]
  skipped.update((i, (None, MISSING_FILE)) for i, p in enumerate(paths) if p is None)

  loose_paths = [str(paths[i]) for i in loose]
  results = _decode_all(loose_paths, num_workers, f"{NAME} {split}") if loose else ()
  for i, path, (samples, reason) in zip(loose, loose_paths, results):
    if samples is None:
      skipped[i] = (path, reason)
      continue
    split_report.written += 1
    yield _example(rows[i], samples)

  if members:
    position = {rows[i].clip_id: i for i in members}
    jobs: dict[Path, dict[str, str]] = {}
    for i in members:
      jobs.setdefault(paths[i].archive, {})[paths[i].name] = rows[i].clip_id
    results = archives_lib.decode_archives(sorted(jobs.items()), num_workers, desc=f"{NAME} {split} (archives)")
    for clip, where, samples, reason in results:
      i = position[clip]
      if samples is None:
        skipped[i] = (where, reason)
        continue
      split_report.written += 1
      yield _example(rows[i], samples)

  for i in sorted(skipped):
    report.skip(split, rows[i].clip_id, *skipped[i])
  if not split_report.written:
    first = report.skipped[-len(skipped)] if skipped else {"path": None, "reason": "no clip"}
    raise ManualDirError(
      f"split {split!r}: none of its {split_report.found} clip files could be decoded,"
      f" e.g. {first['path']}: {first['reason']}"
    )


def generate_synthetic_examples(
  split: str, *, report: BuildReport, seed: int = synthetic.DEFAULT_SEED, clips_per_class: int | None = None
) -> Iterator[Example]:
  """Yields `(clip_id, example)` for each clip `synthetic.generate_split` makes for a split."""
  split_report = report.splits[split]
  for clip in synthetic.generate_split(split, seed=seed, clips_per_class=clips_per_class):
    split_report.rows += 1
    split_report.found += 1
    split_report.written += 1
    yield (
      clip.clip_id,
      {
        "audio": clip.audio,
        "label": clip.label,
        "clip_id": clip.clip_id,
        "youtube_id": clip.youtube_id,
        "start_seconds": clip.start_seconds,
      },
    )


# ---------------------------------------------------------------------------------------
# The builder.


@dataclasses.dataclass(eq=False)
class VggsoundConfig(tfds.core.BuilderConfig):
  """`source` is 'manual' (the user's files) or 'synthetic'."""

  source: str = "manual"
  common_only: bool = False
  synthetic_seed: int = synthetic.DEFAULT_SEED
  synthetic_clips_per_class: dict[str, int] = dataclasses.field(
    default_factory=lambda: dict(synthetic.DEFAULT_CLIPS_PER_CLASS)
  )


def audio_feature() -> tfds.features.Tensor:
  """The `audio` feature of every builder here: the whole decoded clip, 16 kHz mono int16.

  A Tensor, not tfds.features.Audio: Audio skips the encoding of arrays, and without BYTES
  encoding each sample would take 8-10 bytes (an int64 list).
  """
  return tfds.features.Tensor(
    shape=(None,),
    dtype=np.int16,
    encoding=tfds.features.Encoding.BYTES,
    doc=f"{audio_lib.SAMPLE_RATE} Hz mono int16, the whole decoded clip",
  )


class Vggsound(tfds.core.GeneratorBasedBuilder):
  """VGGSound audio: 16 kHz mono int16 clips with their class."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
    VggsoundConfig(name="full", description="All clips of the user's VGGSound copy."),
    VggsoundConfig(
      name="common", common_only=True, description=f"Clips of the classes in {COMMON_NAME} (shared with AudioSet)."
    ),
    VggsoundConfig(
      name="synthetic", source="synthetic", description=f"{len(synthetic.CLASS_NAMES)} classes of generated sounds."
    ),
  ]
  DEFAULT_CONFIG_NAME = "full"

  def __init__(self, *, num_workers: int | None = None, file_format: str | None = FILE_FORMAT, **kwargs: Any) -> None:
    """`num_workers`: decoding processes (default: all cores)."""
    super().__init__(file_format=file_format, **kwargs)
    self._num_workers = num_workers or os.cpu_count() or 1
    # The report of the build in progress: set by download_and_prepare for the duration of
    # one call, for _split_generators (whose signature TFDS fixes) to hand to the example
    # generators; None between calls. The builder keeps no other per-build state.
    self._report_in_progress: BuildReport | None = None

  # TFDS prints "Downloading and preparing dataset ..." and "... Subsequent calls will reuse
  # this data" itself; nothing is downloaded here, and the build prints its own summary.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _info(self) -> tfds.core.DatasetInfo:
    names = synthetic.CLASS_NAMES if self.builder_config.source == "synthetic" else labels.class_names()
    info = self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "audio": audio_feature(),
          "label": tfds.features.ClassLabel(names=names),
          "clip_id": tfds.features.Text(),
          "youtube_id": tfds.features.Text(),
          "start_seconds": np.int32,
        }
      ),
      supervised_keys=("audio", "label"),
      homepage="https://www.robots.ox.ac.uk/~vgg/data/vggsound/",
      citation=_CITATION,
    )
    # For a data set not yet built, TFDS looks for precomputed metadata on GCS (disabled in
    # TFDS 4.9) through a temporary directory that it never removes: one per builder made.
    info.initialize_from_bucket = lambda: None
    return info

  def download_and_prepare(self, *, log_summary: bool = True, **kwargs: Any) -> BuildReport | None:
    """TFDS's download_and_prepare, guarded; returns the report of the build.

    Under a lock on the config's directory (a second build of it fails at once), removes what
    killed builds of it left; when the config is already prepared (and not to be overwritten),
    checks that it was built from the inputs given now (`InputsChangedError` if not; nothing to
    check without a manual_dir) and returns None: its stored report stands, see `read_report`.
    Otherwise builds, with build_report.json written into the new dataset directory before TFDS
    moves it into place, and removes the download directories TFDS made and left empty.
    `log_summary`: log the report's summary at the end of a build; a caller that shows it
    itself passes False.
    """
    download_config = kwargs.get("download_config") or tfds.download.DownloadConfig()
    config_dir = Path(self.data_path).parent
    with _exclusive_build(config_dir, f"{NAME}/{self.builder_config.name}"):
      removed = remove_interrupted_builds(config_dir, str(self.version))
      for leftover in removed:
        logging.warning("removed %s, left by a build that was interrupted", leftover)
      if Path(self.data_path).exists() and not download_config.download_mode.overwrite_dataset:
        if not self.is_built():
          raise PathError(self.data_path, "not a complete data set (no dataset_info.json); rebuild it with --overwrite")
        self._check_inputs(download_config.manual_dir)
        return None
      download_dir = Path(kwargs.get("download_dir") or Path(self.data_dir_root) / "downloads")
      # TFDS's download manager makes these even when nothing is downloaded.
      extract_dir = Path(download_config.extract_dir or download_dir / "extracted")
      made_by_tfds = [d for d in (download_dir, extract_dir) if not d.exists()]
      report = BuildReport(config=self.builder_config.name, removed_leftovers=[str(p) for p in removed])
      self._report_in_progress = report
      try:
        super().download_and_prepare(**kwargs)
      finally:
        self._report_in_progress = None
        for directory in reversed(made_by_tfds):  # the deepest first; rmdir leaves a non-empty one
          with contextlib.suppress(OSError):
            directory.rmdir()
    if not report.splits:
      return None  # _split_generators did not run: nothing was generated.
    if log_summary:
      log = logging.warning if report.skipped else logging.info
      log("%s", report.summary())
    return report

  def is_built(self) -> bool:
    """Whether data_dir holds this config (TFDS's `is_prepared`, without its warning when not)."""
    return Path(self.data_path, "dataset_info.json").is_file()

  def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager, download_config: Any = None) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    if self._report_in_progress is not None:
      # data_path is TFDS's temporary directory here: the report arrives with the data.
      write_report(self._report_in_progress, self.data_path)

  def _check_inputs(self, manual_dir: str | os.PathLike | None) -> None:
    """Raises InputsChangedError if the prepared config was built from other inputs."""
    config = self.builder_config
    try:
      stored = read_report(self.data_path).inputs
    except FileNotFoundError:
      stored = {}
    if config.source == "synthetic":
      current = synthetic_fingerprint(config)
    elif manual_dir is None:
      return  # reading what is there: nothing to compare with
    else:
      current = input_fingerprint(plan_build(manual_dir, common_only=config.common_only, list_archives=False))
    if not stored:
      return  # built before fingerprints were recorded
    differences = fingerprint_differences(stored, current)
    if differences:
      source = "the synthetic config" if config.source == "synthetic" else manual_dir
      raise InputsChangedError(
        self.data_path,
        f"{NAME}/{config.name} here was built from other inputs than {source}"
        f": {', '.join(differences)} changed; rebuild it with --overwrite",
      )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Example]]:
    config = self.builder_config
    report = self._report_in_progress
    if report is None:  # Not called through download_and_prepare: the report is dropped.
      report = BuildReport(config=config.name)
    if config.source == "synthetic":
      report.inputs = synthetic_fingerprint(config)
      generators = {}
      for split in synthetic.SPLIT_IDS:
        report.splits[split] = SplitReport()
        generators[split] = generate_synthetic_examples(
          split, report=report, seed=config.synthetic_seed, clips_per_class=config.synthetic_clips_per_class[split]
        )
      return generators
    plan = plan_build(self._manual_dir(dl_manager), common_only=config.common_only, num_workers=self._num_workers)
    start_report(report, plan)
    return {
      split: generate_manual_examples(split, p.rows, p.paths, report=report, num_workers=self._num_workers)
      for split, p in plan.buildable_splits().items()
    }

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> Path:
    try:
      return Path(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS's message spans the whole instructions.
      raise ManualDirError(str(e).splitlines()[0]) from None

  def _generate_examples(self, **kwargs: Any) -> Iterator[Example]:
    """Unused: _split_generators returns the module's generators. TFDS declares it abstract."""
    raise NotImplementedError("use generate_manual_examples or generate_synthetic_examples")


@contextlib.contextmanager
def _exclusive_build(directory: Path, what: str) -> Iterator[None]:
  """Holds an exclusive lock on `directory` (made if needed); fails at once if another holds it.

  The lock goes with the process: a killed build holds none. A directory made here and left
  empty (a build that failed) is removed.
  """
  made = not directory.exists()
  directory.mkdir(parents=True, exist_ok=True)
  fd = os.open(directory, os.O_RDONLY) if fcntl is not None else None
  try:
    if fd is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise PathError(directory, f"another build of {what} is running into it") from None
      except OSError:
        pass  # a file system without locks: builds of one config are not guarded against each other
    yield
  finally:
    if made:
      with contextlib.suppress(OSError):  # not empty: the build wrote something
        directory.rmdir()
    if fd is not None:
      os.close(fd)


def remove_interrupted_builds(config_dir: str | os.PathLike, version: str) -> list[Path]:
  """Removes the `incomplete.*` directories killed builds of this config and version left.

  Only directories named exactly as TFDS names its temporary build directories
  (`incomplete.XXXXXX_{version}`, not symbolic links) are touched; call it only while holding
  the config's build lock, so that none of them can belong to a build in progress.
  """
  removed = []
  with os.scandir(config_dir) as entries:
    for entry in entries:
      match = _INCOMPLETE_DIR.fullmatch(entry.name)
      if match and match["version"] == version and entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
        removed.append(Path(entry.path))
  return removed


def build(
  data_dir: str | os.PathLike,
  *,
  config: str | VggsoundConfig = "full",
  manual_dir: str | os.PathLike | None = None,
  num_workers: int | None = None,
  overwrite: bool = False,
  log_summary: bool = True,
) -> BuildReport:
  """Builds `vggsound/{config}` into data_dir (if not already there); returns its report.

  The report is that of this build, or the stored one when the config was already built from
  the same inputs; built from other inputs, it is an InputsChangedError unless `overwrite`.
  `log_summary`: log the summary at the end of a build (pass False to print it yourself).
  """
  builder = Vggsound(config=config, data_dir=os.fspath(data_dir), num_workers=num_workers)
  mode = (
    tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if overwrite
    else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  download_config = tfds.download.DownloadConfig(
    manual_dir=None if manual_dir is None else os.fspath(manual_dir), download_mode=mode
  )
  report = builder.download_and_prepare(download_config=download_config, log_summary=log_summary)
  return report if report is not None else read_report(builder.data_path)
