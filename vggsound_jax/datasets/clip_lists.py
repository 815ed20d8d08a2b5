"""VGGSound's manual_dir: its lists (`vggsound.csv`, `AStest.csv`, `Common.txt`), the naming and
indexing of clip files (shared with the other builders), and the plan that matches every listed
clip to its file or archive member before anything is decoded.

Invariant: a malformed list is a ClipListError naming the file and line, raised before decoding.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vggsound_jax import labels
from vggsound_jax.datasets import archives as archives_lib
from vggsound_jax.datasets import build as build_lib
from vggsound_jax.datasets.archives import ArchiveMember
from vggsound_jax.datasets.build import ManualDirError
from vggsound_jax.errors import PathError

CSV_NAME = "vggsound.csv"
ASTEST_NAME = "AStest.csv"
COMMON_NAME = "Common.txt"
CSV_SPLITS = ("train", "test")
ASTEST_SPLIT = "astest"
# When a clip exists in several formats, the first in this order is used: the lossless
# 16 kHz files decode bit-exactly, the videos go through a resampler.
MEDIA_EXTENSIONS = (".wav", ".flac", ".mp4", ".mkv", ".webm")


class ClipListError(PathError):
  """A malformed line in one of the lists in manual_dir: 'FILE:LINE: reason'."""

  def __init__(self, path: str | os.PathLike, line: int, reason: str) -> None:
    super().__init__(f"{path}:{line}", reason)


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


def input_fingerprint(plan: BuildPlan) -> dict[str, Any]:
  """What a build from `plan` reads (`build.inputs_fingerprint`): the lists' contents (sha256,
  None when absent); path, size and modification time of each clip file and archive it uses."""
  loose = [p for split in plan.splits.values() for p in split.paths if isinstance(p, Path)]
  return build_lib.inputs_fingerprint(
    plan.manual_dir, plan.lists, {"clip files": loose, "archives": plan.archive_paths}
  )
