"""What every builder here shares: the build report, the decoding pool, input fingerprints, the
exclusive build lock and the removal of killed builds' leftovers, tied together by `ReportingBuilder`
and `build_dataset`.

Invariant: one bad clip never stops a build (it is skipped with its reason in the report), and a
data set is never reused when it was built from other inputs than those given now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm import tqdm

from vggsound_jax.audio import decode as audio_lib
from vggsound_jax.errors import PathError, UserError

try:
  import fcntl
except ImportError:  # not POSIX: builds of one config are not guarded against each other
  fcntl = None

FILE_FORMAT = "array_record"
REPORT_NAME = "build_report.json"
MISSING_FILE = "no such file"
# TFDS builds into `{config dir}/incomplete.{6 random letters or digits}_{version}` and renames
# it at the end; a killed build leaves it behind.
_INCOMPLETE_DIR = re.compile(r"incomplete\.[A-Z0-9]{6}_(?P<version>.+)")

# What the example generators yield: (key, features).
Example = tuple[str, dict[str, Any]]


class ManualDirError(UserError, ValueError):
  """manual_dir is unusable (missing, without the lists, without any clip)."""


class InputsChangedError(PathError):
  """data_dir holds the config built from other inputs than those given now."""


# ---------------------------------------------------------------------------------------
# Build report.


@dataclasses.dataclass
class SplitReport:
  rows: int = 0  # unique clips the lists give this split
  found: int = 0  # of which a file was found
  written: int = 0  # of which decoded and stored
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason kind -> count


@dataclasses.dataclass
class BuildReport:
  """What a build used and what it skipped; written as build_report.json.

  Each builder subclasses it to set `dataset` (its TFDS name, the summary's first word) and
  to add fields of its own; the list-level fields a builder does not use stay at zero/empty.
  """

  dataset: ClassVar[str] = "dataset"

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
  # What the data set was built from (see `inputs_fingerprint`); empty in reports written before
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
    lines = [f"{self.dataset}/{self.config}: {written} clips written, {len(self.skipped)} skipped"]
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
        continue  # the lists give nothing for it
      why = ", ".join(f"{n} {kind}" for kind, n in sorted(s.skipped.items())) or "none"
      lines.append(f"  {name}: {s.rows} listed, {s.found} files found, {s.written} written; skipped: {why}")
    return "\n".join(lines)


def read_report(dataset_dir: str | os.PathLike, report_class: type[BuildReport] = BuildReport) -> BuildReport:
  """The report stored in a built dataset directory, as a `report_class`."""
  with open(Path(dataset_dir, REPORT_NAME), encoding="utf-8") as f:
    return report_class.from_json(json.load(f))


def write_report(report: BuildReport, dataset_dir: str | os.PathLike) -> None:
  """Stores `report` as build_report.json in a built dataset directory (atomically)."""
  path = Path(dataset_dir, REPORT_NAME)
  tmp = path.with_name(f".{REPORT_NAME}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(report.to_json(), f, indent=1)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Decoding in worker processes.


def decode_clip(path: str | None) -> tuple[np.ndarray | None, str | None]:
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


def decode_all(
  paths: Sequence[str | None], num_workers: int, desc: str
) -> Iterator[tuple[np.ndarray | None, str | None]]:
  """Yields `decode_clip` of each path, in order, decoded by `num_workers` processes, with progress."""
  progress = tqdm(total=len(paths), desc=desc, unit="clip", mininterval=1.0)
  try:
    if num_workers <= 1:
      for path in paths:
        yield decode_clip(path)
        progress.update()
      return
    # spawn, not fork: the parent may hold TensorFlow's threads, which fork does not copy.
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
      for result in pool.imap(decode_clip, paths, chunksize=4):
        yield result
        progress.update()
  finally:
    progress.close()


# ---------------------------------------------------------------------------------------
# Fingerprints of a build's inputs.


def _digest(lines: Iterable[str]) -> str:
  h = hashlib.sha256()
  for line in lines:
    h.update(line.encode("utf-8", "surrogateescape") + b"\n")
  return h.hexdigest()


def files_fingerprint(paths: Iterable[Path], root: Path) -> dict[str, Any]:
  """Count and digest of (path under root, size, modification time) of each file."""
  entries = []
  for path in sorted(set(paths)):
    st = path.stat()
    entries.append(f"{path.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}")
  return {"count": len(entries), "sha256": _digest(entries)}


def inputs_fingerprint(
  root: Path, lists: Mapping[str, Path | None], files: Mapping[str, Iterable[Path]]
) -> dict[str, Any]:
  """What a build reads, cheaply: each list's contents by name (sha256; None when absent), and
  for each group of files (clip files, archives) `files_fingerprint` of those under `root`.

  File contents are not read (an archive is 17 GB): a changed file changes its size or
  modification time. Moving `root` keeps the fingerprint; touching a file changes it.
  """
  fingerprint: dict[str, Any] = {
    name: None if path is None else hashlib.sha256(path.read_bytes()).hexdigest() for name, path in lists.items()
  }
  for name, paths in files.items():
    fingerprint[name] = files_fingerprint(paths, root)
  return fingerprint


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


# ---------------------------------------------------------------------------------------
# The build lock and what killed builds leave.


@contextlib.contextmanager
def exclusive_build(directory: Path, what: str) -> Iterator[None]:
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


# ---------------------------------------------------------------------------------------
# The builder base and its entry point.


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


class ReportingBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder whose builds are locked, fingerprinted and reported.

  A subclass sets `REPORT_CLASS`, implements `_info` (through `dataset_info_from_configs`),
  `_split_generators` (taking its report from `report_in_progress()` and filling its `splits`
  and `inputs`) and `current_inputs`, and overrides `uses_manual_dir` for configs that read
  no files. docs/datasets.md#adding-a-builder.
  """

  REPORT_CLASS: ClassVar[type[BuildReport]] = BuildReport

  def __init__(self, *, num_workers: int | None = None, file_format: str | None = FILE_FORMAT, **kwargs: Any) -> None:
    """`num_workers`: decoding processes (default: all cores)."""
    super().__init__(file_format=file_format, **kwargs)
    self._num_workers = num_workers or os.cpu_count() or 1
    # The report of the build in progress: set by download_and_prepare for the duration of
    # one call, for _split_generators (whose signature TFDS fixes) to hand to the example
    # generators; None between calls. The builder keeps no other per-build state.
    self._report_in_progress: BuildReport | None = None

  def current_inputs(self, manual_dir: str | os.PathLike | None) -> tuple[dict[str, Any], str] | None:
    """The fingerprint of what a build would read now, and how an error names those inputs
    (e.g. the manual_dir); None when there is nothing to compare (no manual_dir given)."""
    raise NotImplementedError

  def uses_manual_dir(self) -> bool:
    """Whether this config is built from files in a manual_dir (not, e.g., generated)."""
    return True

  # TFDS prints "Downloading and preparing dataset ..." and "... Subsequent calls will reuse
  # this data" itself; nothing is downloaded here, and the build prints its own summary.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def dataset_info_from_configs(self, **kwargs: Any) -> tfds.core.DatasetInfo:
    info = super().dataset_info_from_configs(**kwargs)
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
    with exclusive_build(config_dir, f"{self.name}/{self.builder_config.name}"):
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
      report = self.REPORT_CLASS(config=self.builder_config.name, removed_leftovers=[str(p) for p in removed])
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

  def report_in_progress(self) -> BuildReport:
    """The report of the build in progress, for `_split_generators` to fill (a fresh one, then
    dropped, when TFDS's own machinery calls it outside `download_and_prepare`)."""
    if self._report_in_progress is None:
      return self.REPORT_CLASS(config=self.builder_config.name)
    return self._report_in_progress

  def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager, download_config: Any = None) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    if self._report_in_progress is not None:
      # data_path is TFDS's temporary directory here: the report arrives with the data.
      write_report(self._report_in_progress, self.data_path)

  def _check_inputs(self, manual_dir: str | os.PathLike | None) -> None:
    """Raises InputsChangedError if the prepared config was built from other inputs."""
    try:
      stored = read_report(self.data_path, self.REPORT_CLASS).inputs
    except FileNotFoundError:
      stored = {}
    current = self.current_inputs(manual_dir)
    if current is None or not stored:
      return  # nothing to compare with, or built before fingerprints were recorded
    fingerprint, source = current
    differences = fingerprint_differences(stored, fingerprint)
    if differences:
      raise InputsChangedError(
        self.data_path,
        f"{self.name}/{self.builder_config.name} here was built from other inputs than {source}"
        f": {', '.join(differences)} changed; rebuild it with --overwrite",
      )

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> Path:
    try:
      return Path(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS's message spans the whole instructions.
      raise ManualDirError(str(e).splitlines()[0]) from None

  def _generate_examples(self, **kwargs: Any) -> Iterator[Example]:
    """Unused: _split_generators returns the builder's own generators. TFDS declares it abstract."""
    raise NotImplementedError("_split_generators returns the example generators")


def build_dataset(
  builder: ReportingBuilder,
  *,
  manual_dir: str | os.PathLike | None = None,
  overwrite: bool = False,
  log_summary: bool = True,
) -> BuildReport:
  """Builds `builder`'s config into its data_dir (if not already there); returns its report.

  The report is that of this build, or the stored one when the config was already built from
  the same inputs; built from other inputs, it is an InputsChangedError unless `overwrite`.
  `log_summary`: log the summary at the end of a build (pass False to print it yourself).
  """
  mode = (
    tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if overwrite
    else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  download_config = tfds.download.DownloadConfig(
    manual_dir=None if manual_dir is None else os.fspath(manual_dir), download_mode=mode
  )
  report = builder.download_and_prepare(download_config=download_config, log_summary=log_summary)
  return report if report is not None else read_report(builder.data_path, builder.REPORT_CLASS)
