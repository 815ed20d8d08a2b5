"""TFDS builder `vggsound` (configs full, common, synthetic) and `build()`.

The lists and the plan of a build are in `clip_lists.py`, what every builder shares (report,
decoding pool, fingerprint, lock) in `build.py`; what users see of it: docs/datasets.md.
Invariant: the data set does not depend on the order in which clips are decoded (TFDS stores
examples in an order of their keys).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from vggsound_jax import labels
from vggsound_jax.datasets import archives as archives_lib
from vggsound_jax.datasets import build as build_lib
from vggsound_jax.datasets import synthetic
from vggsound_jax.datasets.archives import ArchiveMember
from vggsound_jax.datasets.build import MISSING_FILE, REPORT_NAME, Example, ManualDirError, SplitReport
from vggsound_jax.datasets.clip_lists import (
  ASTEST_NAME,
  ASTEST_SPLIT,
  COMMON_NAME,
  CSV_NAME,
  MEDIA_EXTENSIONS,
  BuildPlan,
  ClipRow,
  ClipSource,
  input_fingerprint,
  plan_build,
)

NAME = "vggsound"
DATASET_VERSION = "1.0.0"

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


@dataclasses.dataclass
class BuildReport(build_lib.BuildReport):
  """The report of a `vggsound` build (build.BuildReport, named for this data set)."""

  dataset: ClassVar[str] = NAME


def read_report(dataset_dir: str | os.PathLike) -> BuildReport:
  """The report stored in a built `vggsound` dataset directory."""
  return build_lib.read_report(dataset_dir, BuildReport)


def synthetic_fingerprint(config: VggsoundConfig) -> dict[str, Any]:
  """The synthetic config's inputs: its seed and sizes."""
  return {"synthetic seed": config.synthetic_seed, "synthetic clips per class": dict(config.synthetic_clips_per_class)}


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
  results = build_lib.decode_all(loose_paths, num_workers, f"{NAME} {split}") if loose else ()
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


class Vggsound(build_lib.ReportingBuilder):
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
  REPORT_CLASS = BuildReport

  def _info(self) -> tfds.core.DatasetInfo:
    names = synthetic.CLASS_NAMES if self.builder_config.source == "synthetic" else labels.class_names()
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "audio": build_lib.audio_feature(),
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

  def uses_manual_dir(self) -> bool:
    return self.builder_config.source != "synthetic"

  def current_inputs(self, manual_dir: str | os.PathLike | None) -> tuple[dict[str, Any], str] | None:
    config = self.builder_config
    if config.source == "synthetic":
      return synthetic_fingerprint(config), "the synthetic config"
    if manual_dir is None:
      return None  # reading what is there: nothing to compare with
    plan = plan_build(manual_dir, common_only=config.common_only, list_archives=False)
    return input_fingerprint(plan), str(manual_dir)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Example]]:
    config = self.builder_config
    report = self.report_in_progress()
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
  return build_lib.build_dataset(builder, manual_dir=manual_dir, overwrite=overwrite, log_summary=log_summary)
