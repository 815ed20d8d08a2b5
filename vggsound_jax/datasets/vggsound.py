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

Every clip that cannot be used (no file, undecodable, empty) is skipped, counted and listed
with its reason in `build_report.json` next to the TFDS files, and in the summary shown at
the end of the build. Problems in the lists themselves (a malformed row, an unknown label)
stop the build before any decoding, with the file and line number.

A build is a chain of functions of their inputs: `plan_build` reads and checks the lists and
matches clips to files (no decoding); `generate_manual_examples` / `generate_synthetic_examples`
yield one split's examples and record what they write and skip in the `BuildReport` they are
given; `Vggsound.download_and_prepare` makes that report for its call, writes it and returns
it, and `build` returns it to its caller.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm import tqdm

from vggsound_jax import audio as audio_lib
from vggsound_jax import labels
from vggsound_jax.datasets import synthetic

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
    {", ".join(e[1:] for e in MEDIA_EXTENSIONS)}; subfolders are searched;
  * optionally the original repository's `{ASTEST_NAME}` (adds the `{ASTEST_SPLIT}` split) and
    `{COMMON_NAME}` (needed by the `common` config).
Clips listed but not found are skipped and listed in {REPORT_NAME}.
"""


class ClipListError(ValueError):
  """A malformed line in one of the lists in manual_dir: 'FILE:LINE: reason'."""

  def __init__(self, path: str | os.PathLike, line: int, reason: str) -> None:
    super().__init__(f"{path}:{line}: {reason}")


class ManualDirError(ValueError):
  """manual_dir is unusable (missing, or without the csv)."""


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


def read_clip_list(path: str | os.PathLike, known_labels: Iterable[str]) -> ClipList:
  """Parses `vggsound.csv`; raises ClipListError naming the line of the first bad row."""
  known = set(known_labels)
  rows: dict[str, ClipRow] = {}
  result = ClipList(rows=[])
  with open(path, newline="", encoding="utf-8") as f:
    for line, fields in enumerate(csv.reader(f), start=1):
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
  with open(path, newline="", encoding="utf-8") as f:
    for line, fields in enumerate(csv.reader(f), start=1):
      if not fields or all(not x.strip() for x in fields):
        continue
      if len(fields) != 2 or not fields[0].strip():
        raise ClipListError(path, line, "expected 2 fields: clip file name,label")
      name = fields[0].strip()
      stem, ext = os.path.splitext(name)
      ids.add(stem if ext.lower() in MEDIA_EXTENSIONS else name)
  return ids


def read_common(path: str | os.PathLike, known_labels: Iterable[str]) -> set[str]:
  """Class names of `Common.txt`, one per line; unknown names are an error."""
  known = set(known_labels)
  names = set()
  with open(path, encoding="utf-8") as f:
    for line, text in enumerate(f, start=1):
      name = text.strip()
      if not name:
        continue
      if name not in known:
        raise ClipListError(path, line, f"unknown label {name!r}")
      names.add(name)
  return names


def index_media_files(root: str | os.PathLike) -> dict[str, Path]:
  """Maps each clip file stem under `root` (recursively) to its file, preferring lossless."""
  rank = {ext: i for i, ext in enumerate(MEDIA_EXTENSIONS)}
  found: dict[str, Path] = {}
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    for name in filenames:
      stem, ext = os.path.splitext(name)
      ext = ext.lower()
      if name.startswith(".") or ext not in rank:
        continue
      path = Path(dirpath, name)
      current = found.get(stem)
      if current is None or rank[ext] < rank[current.suffix.lower()]:
        found[stem] = path
  return found


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
  # One entry per skipped clip: split, clip_id, path (None when missing), reason.
  skipped: list[dict] = dataclasses.field(default_factory=list)

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
  """Stores `report` as build_report.json in a built dataset directory."""
  with open(Path(dataset_dir, REPORT_NAME), "w", encoding="utf-8") as f:
    json.dump(report.to_json(), f, indent=1)


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


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """The clips the lists put in one split, in list order, and the file of each (None: none)."""

  rows: list[ClipRow]
  paths: list[Path | None]

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

  def buildable_splits(self) -> dict[str, SplitPlan]:
    """The splits with at least one file, in order."""
    return {name: split for name, split in self.splits.items() if split.found}


def plan_build(manual_dir: str | os.PathLike, *, common_only: bool = False) -> BuildPlan:
  """Reads and checks the lists of manual_dir and matches their clips to its files.

  See docs/original_pipeline.md#the-data-set-as-users-have-it for the lists. `common_only`
  keeps the clips of the classes in Common.txt (the `common` config).

  Raises:
    ManualDirError: no csv; no Common.txt when `common_only`; no clip with a file.
    ClipListError: a malformed line in one of the lists (file and line number).
  """
  manual_dir = Path(manual_dir)
  if not (manual_dir / CSV_NAME).is_file():
    raise ManualDirError(f"{manual_dir}: no {CSV_NAME} (see the builder's instructions)")
  names = labels.class_names()
  clip_list = read_clip_list(manual_dir / CSV_NAME, names)
  rows = clip_list.rows
  if common_only:
    if not (manual_dir / COMMON_NAME).is_file():
      raise ManualDirError(f"{manual_dir}: the common config needs {COMMON_NAME}")
    common = read_common(manual_dir / COMMON_NAME, names)
    rows = [r for r in rows if r.label in common]
  split_rows = {s: [r for r in rows if r.split == s] for s in CSV_SPLITS}
  astest_not_in_csv = 0
  if (manual_dir / ASTEST_NAME).is_file():
    astest = read_astest(manual_dir / ASTEST_NAME)
    astest_not_in_csv = len(astest - {r.clip_id for r in clip_list.rows})
    split_rows[ASTEST_SPLIT] = [r for r in split_rows["test"] if r.clip_id in astest]

  files = index_media_files(manual_dir)
  plan = BuildPlan(
    manual_dir=manual_dir,
    csv_rows=len(clip_list.rows) + clip_list.duplicate_rows,
    duplicate_rows=clip_list.duplicate_rows,
    conflicting_duplicates=clip_list.conflicts,
    astest_not_in_csv=astest_not_in_csv,
    splits={split: SplitPlan(rows=r, paths=[files.get(row.clip_id) for row in r]) for split, r in split_rows.items()},
  )
  if not plan.buildable_splits():
    raise ManualDirError(
      f"{manual_dir}: none of the clips in {CSV_NAME} has a file"
      f" (expected names like {rows[0].clip_id if rows else 'ID_000030'}"
      f".{{{','.join(e[1:] for e in MEDIA_EXTENSIONS)}}})"
    )
  return plan


def start_report(report: BuildReport, plan: BuildPlan) -> None:
  """Records `plan` in the report of its build, before any decoding.

  Fills the list-level fields, adds one SplitReport per split of the plan (the generators
  then count what they write), and records as skipped the clips of the splits that are not
  built for want of any file.
  """
  report.manual_dir = str(plan.manual_dir)
  report.csv_rows = plan.csv_rows
  report.duplicate_rows = plan.duplicate_rows
  report.conflicting_duplicates = plan.conflicting_duplicates
  report.astest_not_in_csv = plan.astest_not_in_csv
  for split, split_plan in plan.splits.items():
    report.splits[split] = SplitReport(rows=len(split_plan.rows), found=split_plan.found)
    if not split_plan.found:
      for row in split_plan.rows:
        report.skip(split, row.clip_id, None, MISSING_FILE)


# ---------------------------------------------------------------------------------------
# Example generation: TFDS writes what these yield. Each records what it writes and skips in
# the `report` it is given, whose `splits[split]` must exist (start_report makes them).

Example = tuple[str, dict[str, Any]]


def generate_manual_examples(
  split: str, rows: Sequence[ClipRow], paths: Sequence[Path | None], *, report: BuildReport, num_workers: int = 1
) -> Iterator[Example]:
  """Decodes the clips of one split and yields `(clip_id, example)` for each usable one.

  A clip without a file, or whose file cannot be decoded or is empty, is skipped and
  recorded in `report` with its reason.

  Raises:
    ManualDirError: at the end, if not one of the split's files could be decoded.
  """
  split_report = report.splits[split]
  str_paths = [None if p is None else str(p) for p in paths]
  results = _decode_all(str_paths, num_workers, desc=f"{NAME} {split}")
  for row, path, (samples, reason) in zip(rows, str_paths, results):
    if samples is None:
      report.skip(split, row.clip_id, path, reason)
      continue
    split_report.written += 1
    yield (
      row.clip_id,
      {
        "audio": samples,
        "label": row.label,
        "clip_id": row.clip_id,
        "youtube_id": row.youtube_id,
        "start_seconds": row.start_seconds,
      },
    )
  if not split_report.written:
    raise ManualDirError(
      f"split {split!r}: none of its {split_report.found} clip files could"
      f" be decoded, e.g. {report.skipped[-1]['path']}:"
      f" {report.skipped[-1]['reason']}"
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

  def _info(self) -> tfds.core.DatasetInfo:
    names = synthetic.CLASS_NAMES if self.builder_config.source == "synthetic" else labels.class_names()
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          # A Tensor, not tfds.features.Audio: Audio skips the encoding of arrays, and
          # without BYTES encoding each sample would take 8-10 bytes (an int64 list).
          "audio": tfds.features.Tensor(
            shape=(None,),
            dtype=np.int16,
            encoding=tfds.features.Encoding.BYTES,
            doc=f"{audio_lib.SAMPLE_RATE} Hz mono int16, the whole decoded clip",
          ),
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

  def download_and_prepare(self, *, log_summary: bool = True, **kwargs: Any) -> BuildReport | None:
    """TFDS's download_and_prepare; then writes build_report.json and returns the report.

    Returns None when nothing was generated (the config was already prepared: its stored
    report stands, see `read_report`). `log_summary`: log the report's summary at the end
    of a build; a caller that shows it itself passes False.
    """
    report = BuildReport(config=self.builder_config.name)
    self._report_in_progress = report
    try:
      super().download_and_prepare(**kwargs)
    finally:
      self._report_in_progress = None
    if not report.splits:
      return None  # _split_generators did not run: nothing was generated.
    write_report(report, self.data_path)
    if log_summary:
      log = logging.warning if report.skipped else logging.info
      log("%s", report.summary())
    return report

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Example]]:
    config = self.builder_config
    report = self._report_in_progress
    if report is None:  # Not called through download_and_prepare: the report is dropped.
      report = BuildReport(config=config.name)
    if config.source == "synthetic":
      generators = {}
      for split in synthetic.SPLIT_IDS:
        report.splits[split] = SplitReport()
        generators[split] = generate_synthetic_examples(
          split, report=report, seed=config.synthetic_seed, clips_per_class=config.synthetic_clips_per_class[split]
        )
      return generators
    plan = plan_build(self._manual_dir(dl_manager), common_only=config.common_only)
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


def build(
  data_dir: str | os.PathLike,
  *,
  config: str = "full",
  manual_dir: str | os.PathLike | None = None,
  num_workers: int | None = None,
  overwrite: bool = False,
  log_summary: bool = True,
) -> BuildReport:
  """Builds `vggsound/{config}` into data_dir (if not already there); returns its report.

  The report is that of this build, or the stored one when the config was already built.
  `log_summary`: log the summary at the end of a build (pass False to print it yourself).
  """
  builder = Vggsound(config=config, data_dir=os.fspath(data_dir), num_workers=num_workers)
  if overwrite and builder.is_prepared():
    shutil.rmtree(builder.data_path)
    builder = Vggsound(config=config, data_dir=os.fspath(data_dir), num_workers=num_workers)
  download_config = tfds.download.DownloadConfig(manual_dir=None if manual_dir is None else os.fspath(manual_dir))
  report = builder.download_and_prepare(download_config=download_config, log_summary=log_summary)
  return report if report is not None else read_report(builder.data_path)
