"""TFDS builder `audioset`: the user's AudioSet clips of the classes VGGSound shares with it (row A).

Row A of the paper's table fine-tunes VGGish on AudioSet, on the classes it has in common with
VGGSound, and tests it on VGGSound's ASTest clips. This builder makes that training data from
the user's own AudioSet copy (AudioSet is YouTube segments: no complete copy can be
downloaded):

Config `common` (the only one): every segment of the user's AudioSet segment lists that has a
file in manual_dir and at least one label among the shared classes. `label` is multi-hot over
VGGSound's 309 classes in model order (`vggsound_jax.labels`), so the model trained on it is
evaluated on VGGSound as it is; only the 164 shared classes can be set. The AudioSet-to-VGGSound
class table ships with the package (`data/vggsound_audioset.csv`, `read_class_map`); how it was
made: docs/original_pipeline.md#vggish-rows-ac.

Splits, one per segment list present: `balanced_train`, `unbalanced_train`, `eval`.

Build with `vggsound-build --dataset audioset --manual_dir DIR --data_dir DIR` or `build()`: the
shared build of `build.py` (report, input fingerprint, lock, cleanup of killed builds), as for
`vggsound`; what users see of it: docs/datasets.md.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from vggsound_jax import labels
from vggsound_jax.datasets import build as build_lib
from vggsound_jax.datasets import clip_lists
from vggsound_jax.datasets.build import MISSING_FILE, REPORT_NAME, Example, ManualDirError, SplitReport
from vggsound_jax.datasets.clip_lists import ClipListError

NAME = "audioset"
CONFIG = "common"
DATASET_VERSION = "1.0.0"
CLASS_MAP = "data/vggsound_audioset.csv"
CLASS_MAP_FIELDS = ("vggsound_class", "audioset_mid", "audioset_name", "method", "note")
# Google's segment lists, and the split each makes.
SEGMENT_LISTS = {
  "balanced_train": "balanced_train_segments.csv",
  "unbalanced_train": "unbalanced_train_segments.csv",
  "eval": "eval_segments.csv",
}
# A clip file is found by the YouTube id in its name (AudioSet has one segment per video):
# `{ytid}.{ext}`, `Y{ytid}.{ext}` (as some download scripts name them) or `{ytid}_{start...}.{ext}`.
YOUTUBE_ID = r"[A-Za-z0-9_-]{11}"
_FILE_STEM = re.compile(rf"Y?({YOUTUBE_ID})(?:_[0-9][0-9._-]*)?")

_DESCRIPTION = """\
AudioSet (Gemmeke et al., ICASSP 2017) segments of the classes VGGSound shares with it, with
multi-hot labels in VGGSound's class order: the training data of row A of the VGGSound paper's
table. Audio is stored decoded as 16 kHz mono int16.
"""

_CITATION = """\
@inproceedings{gemmeke2017audioset,
  title={Audio Set: An ontology and human-labeled dataset for audio events},
  author={Gemmeke, Jort F. and Ellis, Daniel P. W. and Freedman, Dylan and Jansen, Aren and
          Lawrence, Wade and Moore, R. Channing and Plakal, Manoj and Ritter, Marvin},
  booktitle={ICASSP},
  year={2017}
}
"""

_MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
AudioSet's clips are YouTube segments and cannot be downloaded here. Put in manual_dir:
  * one or more of Google's segment lists: {", ".join(SEGMENT_LISTS.values())}
    (`# ...` header lines, then `YTID, start_seconds, end_seconds, "mid1,mid2,..."`);
  * the clip files you have, one 10 s segment each, named `{{ytid}}.{{ext}}`, `Y{{ytid}}.{{ext}}`
    or `{{ytid}}_{{start...}}.{{ext}}`, ext one of
    {", ".join(e[1:] for e in clip_lists.MEDIA_EXTENSIONS)}; subfolders are searched.
Segments listed but not found are skipped and listed in {REPORT_NAME}.
"""


# ---------------------------------------------------------------------------------------
# The class table and the segment lists.


@dataclasses.dataclass(frozen=True)
class ClassMatch:
  """One row of the class table: a VGGSound class and the AudioSet class it is matched to."""

  vggsound_class: str
  audioset_mid: str
  audioset_name: str
  method: str  # exact, playing, words or manual (docs/original_pipeline.md#vggish-rows-ac)
  note: str


def read_class_table() -> list[ClassMatch]:
  """The rows of the package's `data/vggsound_audioset.csv`, in VGGSound model order."""
  text = resources.files("vggsound_jax").joinpath(CLASS_MAP).read_text("utf-8")
  rows = list(csv.reader(text.splitlines()))
  if not rows or tuple(rows[0]) != CLASS_MAP_FIELDS:
    raise ValueError(f"{CLASS_MAP}: expected the header {','.join(CLASS_MAP_FIELDS)}")
  return [ClassMatch(*row) for row in rows[1:] if row]


def read_class_map() -> dict[str, tuple[int, ...]]:
  """AudioSet MID -> the VGGSound class indices (model order) a segment with it is labelled with."""
  index = labels.class_index()
  result: dict[str, tuple[int, ...]] = {}
  for match in read_class_table():
    result[match.audioset_mid] = result.get(match.audioset_mid, ()) + (index[match.vggsound_class],)
  return result


@dataclasses.dataclass(frozen=True)
class Segment:
  youtube_id: str
  start_seconds: float
  end_seconds: float
  mids: tuple[str, ...]
  line: int

  @property
  def clip_id(self) -> str:
    return f"{self.youtube_id}_{self.start_seconds:.3f}"


def read_segments(path: str | os.PathLike) -> list[Segment]:
  """Parses a segment list; raises ClipListError naming the line of the first bad row.

  A YouTube id listed twice keeps its first row (the files are found by id).
  """
  segments, seen = [], set()
  with open(path, newline="", encoding="utf-8") as f:
    for line, fields in enumerate(csv.reader(f, skipinitialspace=True), start=1):
      if not fields or all(not x.strip() for x in fields) or fields[0].lstrip().startswith("#"):
        continue
      if len(fields) != 4:
        raise ClipListError(path, line, f"expected 4 fields YTID,start_seconds,end_seconds,labels, got {len(fields)}")
      youtube_id, start, end, mids = (x.strip() for x in fields)
      if not re.fullmatch(YOUTUBE_ID, youtube_id):
        raise ClipListError(path, line, f"{youtube_id!r} is not a YouTube id (11 letters, digits, - or _)")
      try:
        start_seconds, end_seconds = float(start), float(end)
      except ValueError:
        raise ClipListError(path, line, f"start {start!r} or end {end!r} is not a number") from None
      if not 0 <= start_seconds < end_seconds:
        raise ClipListError(path, line, f"segment {start}-{end} s is empty or negative")
      label_ids = tuple(m.strip() for m in mids.split(",") if m.strip())
      if not label_ids or not all(m.startswith("/") for m in label_ids):
        raise ClipListError(path, line, f"labels {mids!r} are not AudioSet ids such as /m/09x0r")
      if youtube_id not in seen:
        seen.add(youtube_id)
        segments.append(Segment(youtube_id, start_seconds, end_seconds, label_ids, line))
  return segments


def index_clip_files(root: str | os.PathLike) -> dict[str, Path]:
  """YouTube id -> its clip file under `root`, the lossless formats first (as for VGGSound)."""
  found: dict[str, Path] = {}
  rank = {ext: i for i, ext in enumerate(clip_lists.MEDIA_EXTENSIONS)}
  for stem, path in sorted(clip_lists.index_media_files(root).items()):
    match = _FILE_STEM.fullmatch(stem)
    if match is None:
      continue
    current = found.get(match.group(1))
    if current is None or rank[path.suffix.lower()] < rank[current.suffix.lower()]:
      found[match.group(1)] = path
  return found


def multi_hot(mids: Sequence[str], class_map: dict[str, tuple[int, ...]]) -> np.ndarray:
  """(309,) bool: the VGGSound classes of a segment's AudioSet labels."""
  target = np.zeros(labels.NUM_CLASSES, np.bool_)
  for mid in mids:
    target[list(class_map.get(mid, ()))] = True
  return target


# ---------------------------------------------------------------------------------------
# Planning and report.


@dataclasses.dataclass
class BuildReport(build_lib.BuildReport):
  """The shared build report, with the segments left out for want of a shared class."""

  dataset: ClassVar[str] = NAME
  outside_common: dict[str, int] = dataclasses.field(default_factory=dict)  # split -> segments

  def summary(self) -> str:
    lines = super().summary().splitlines()
    for split, count in self.outside_common.items():
      lines.append(f"  {split}: {count} listed segments have none of the shared classes (left out)")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  segments: list[Segment]
  paths: list[Path | None]
  outside_common: int

  @property
  def found(self) -> int:
    return sum(p is not None for p in self.paths)


def plan_build(manual_dir: str | os.PathLike) -> dict[str, SplitPlan]:
  """Reads every segment list of manual_dir and matches its shared-class segments to files.

  Raises ManualDirError (no list, no file found) or ClipListError (a malformed row).
  """
  manual_dir = Path(manual_dir)
  present = {split: manual_dir / name for split, name in SEGMENT_LISTS.items() if (manual_dir / name).is_file()}
  if not present:
    raise ManualDirError(f"{manual_dir}: none of {', '.join(SEGMENT_LISTS.values())} (see the builder's instructions)")
  class_map = read_class_map()
  files = index_clip_files(manual_dir)
  plans = {}
  for split, path in present.items():
    segments = read_segments(path)
    kept = [s for s in segments if any(m in class_map for m in s.mids)]
    plans[split] = SplitPlan(kept, [files.get(s.youtube_id) for s in kept], len(segments) - len(kept))
  if not any(p.found for p in plans.values()):
    raise ManualDirError(
      f"{manual_dir}: none of the listed segments of the shared classes has a file"
      " (expected names like YTID.wav, YYTID.wav or YTID_START.wav)"
    )
  return plans


def input_fingerprint(manual_dir: str | os.PathLike, plans: dict[str, SplitPlan]) -> dict[str, Any]:
  """What a build from `plans` reads (`build.inputs_fingerprint`): the segment lists' contents
  (None when absent) and path, size and modification time of each clip file they use."""
  manual_dir = Path(manual_dir)
  lists = {name: manual_dir / name if (manual_dir / name).is_file() else None for name in SEGMENT_LISTS.values()}
  files = [p for plan in plans.values() for p in plan.paths if p is not None]
  return build_lib.inputs_fingerprint(manual_dir, lists, {"clip files": files})


# ---------------------------------------------------------------------------------------
# Example generation.


def generate_examples(split: str, plan: SplitPlan, *, report: BuildReport, num_workers: int = 1) -> Iterator[Example]:
  """Decodes one split's clips; yields `(clip_id, example)` for each usable one, and records
  every skipped clip with its reason in `report`."""
  class_map = read_class_map()
  split_report = report.splits[split]
  paths = [None if p is None else str(p) for p in plan.paths]
  # The shared worker pool: one bad file never stops a build.
  results = build_lib.decode_all(paths, num_workers, desc=f"{NAME} {split}")
  for segment, path, (samples, reason) in zip(plan.segments, paths, results):
    if samples is None:
      report.skip(split, segment.clip_id, path, reason)
      continue
    split_report.written += 1
    yield (
      segment.clip_id,
      {
        "audio": samples,
        "label": multi_hot(segment.mids, class_map),
        "audioset_labels": ",".join(segment.mids),
        "clip_id": segment.clip_id,
        "youtube_id": segment.youtube_id,
        "start_seconds": np.float32(segment.start_seconds),
      },
    )
  if not split_report.written:
    raise ManualDirError(
      f"split {split!r}: none of its {split_report.found} clip files could be decoded,"
      f" e.g. {report.skipped[-1]['path']}: {report.skipped[-1]['reason']}"
    )


class Audioset(build_lib.ReportingBuilder):
  """AudioSet segments of the classes shared with VGGSound: 16 kHz mono int16, multi-hot labels."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=CONFIG, description="Segments of the classes shared with VGGSound.")]
  DEFAULT_CONFIG_NAME = CONFIG
  REPORT_CLASS = BuildReport

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "audio": build_lib.audio_feature(),
          "label": tfds.features.Tensor(
            shape=(labels.NUM_CLASSES,),
            dtype=np.bool_,
            encoding=tfds.features.Encoding.BYTES,
            doc="multi-hot over VGGSound's classes in model order (vggsound_jax.labels)",
          ),
          "audioset_labels": tfds.features.Text(doc="the segment's AudioSet MIDs, comma-separated as in its list"),
          "clip_id": tfds.features.Text(),
          "youtube_id": tfds.features.Text(),
          "start_seconds": np.float32,
        }
      ),
      supervised_keys=("audio", "label"),
      homepage="https://research.google.com/audioset/",
      citation=_CITATION,
    )

  def current_inputs(self, manual_dir: str | os.PathLike | None) -> tuple[dict[str, Any], str] | None:
    if manual_dir is None:
      return None  # reading what is there: nothing to compare with
    return input_fingerprint(manual_dir, plan_build(manual_dir)), str(manual_dir)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Example]]:
    report = self.report_in_progress()
    manual_dir = self._manual_dir(dl_manager)
    plans = plan_build(manual_dir)
    report.manual_dir = str(manual_dir)
    report.inputs = input_fingerprint(manual_dir, plans)
    generators = {}
    for split, plan in plans.items():
      report.csv_rows += len(plan.segments) + plan.outside_common
      report.outside_common[split] = plan.outside_common
      report.splits[split] = SplitReport(rows=len(plan.segments), found=plan.found)
      if not plan.found:  # TFDS cannot store an empty split
        for segment in plan.segments:
          report.skip(split, segment.clip_id, None, MISSING_FILE)
        continue
      generators[split] = generate_examples(split, plan, report=report, num_workers=self._num_workers)
    return generators


def read_report(dataset_dir: str | os.PathLike) -> BuildReport:
  """The report stored in a built dataset directory."""
  return build_lib.read_report(dataset_dir, BuildReport)


def build(
  data_dir: str | os.PathLike,
  *,
  manual_dir: str | os.PathLike | None = None,
  num_workers: int | None = None,
  overwrite: bool = False,
  log_summary: bool = True,
) -> BuildReport:
  """Builds `audioset/common` into data_dir (if not already there); returns its report.

  As `vggsound.build`: the stored report when already built from the same inputs, an
  InputsChangedError when built from other inputs, unless `overwrite`.
  """
  builder = Audioset(data_dir=os.fspath(data_dir), num_workers=num_workers)
  return build_lib.build_dataset(builder, manual_dir=manual_dir, overwrite=overwrite, log_summary=log_summary)


def data_source(data_dir: str | os.PathLike, split: str) -> Sequence[dict]:
  """Random-access source of a built split of `audioset/common` (as `input_pipeline.data_source`)."""
  builder = tfds.builder(f"{NAME}/{CONFIG}", data_dir=os.fspath(data_dir))
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"{builder.data_path}: {NAME}/{CONFIG} is not built; build it with"
      f" vggsound-build --dataset {NAME} --manual_dir DIR --data_dir {data_dir}"
    )
  return builder.as_data_source(split=split)
