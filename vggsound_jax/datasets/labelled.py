"""TFDS builder `labelled_clips`: your own labelled clips (ESC-50, UrbanSound8K, a csv, a folder
per class; `clip_tables.py`), one config per data set you name, built like the other builders.

  build(data_dir, name="esc50", source="~/ESC-50-master")
  data = open_clips(data_dir, "esc50")     # for vggsound-crossval

The config is made at build time from the data: its class names (model order, `clip_tables`)
are the `label` feature's names. One split, `clips`, holds every clip with its `label`, `fold`
and `clip_id` (its path under the data set's root); cross-validation splits it by fold. Clips
are decoded as every builder here decodes them (16 kHz mono int16, the ffmpeg command line's
samples) and the build is reported, fingerprinted and locked by `build.ReportingBuilder`; a clip
that cannot be decoded is skipped and listed in the report, while a problem with the lists is
an error before anything is decoded or written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vggsound_jax.datasets import build as build_lib
from vggsound_jax.datasets import clip_tables
from vggsound_jax.datasets.build import Example, ManualDirError, SplitReport
from vggsound_jax.errors import PathError

NAME = "labelled_clips"
DATASET_VERSION = "1.0.0"
SPLIT = "clips"
_DESCRIPTION = """\
Labelled clips of your own (ESC-50, UrbanSound8K, a path,label[,fold] csv, or a folder per
class), decoded to 16 kHz mono int16 at their own length, with their class and fold.
"""


class NotBuiltError(PathError):
  """No labelled-clips data set of that name in data_dir."""


@dataclasses.dataclass
class BuildReport(build_lib.BuildReport):
  dataset = NAME
  layout: str = ""
  table: str | None = None
  folds: list[int] = dataclasses.field(default_factory=list)
  folds_assigned: bool = False  # see clip_tables.assign_folds

  def summary(self) -> str:
    lines = super().summary().splitlines()
    where = self.table or self.manual_dir
    assigned = f" (assigned: the data has none, {clip_tables.__name__}.assign_folds)" if self.folds_assigned else ""
    lines.insert(1, f"  {self.layout} layout from {where}; folds {', '.join(map(str, self.folds))}{assigned}")
    return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class LabelledClipsConfig(tfds.core.BuilderConfig):
  """One data set of labelled clips; `class_names` in model order."""

  class_names: tuple[str, ...] = ()


def fingerprint(table: clip_tables.ClipTable) -> dict[str, Any]:
  lists = {"table": table.table}
  result = build_lib.inputs_fingerprint(
    table.root, lists, {"clip files": [c.path for c in table.clips if _under(c, table)]}
  )
  outside = sorted(str(c.path) for c in table.clips if not _under(c, table))
  if outside:  # absolute paths of a csv elsewhere on disk
    result["clip files outside the root"] = build_lib.files_fingerprint([Path(p) for p in outside], Path("/"))
  result["layout"] = table.layout
  return result


def _under(clip: clip_tables.Clip, table: clip_tables.ClipTable) -> bool:
  return not Path(clip.clip_id).is_absolute()


class LabelledClips(build_lib.ReportingBuilder):
  """Labelled clips: 16 kHz mono int16, a class of the data's own, a fold."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir: the data set's root folder or its table (docs/transfer.md)."
  BUILDER_CONFIGS = []  # one per data set, made by `build` from the data
  REPORT_CLASS = BuildReport

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "audio": build_lib.audio_feature(),
          "label": tfds.features.ClassLabel(names=list(self.builder_config.class_names)),
          "fold": np.int32,
          "clip_id": tfds.features.Text(),
        }
      ),
      supervised_keys=("audio", "label"),
    )

  def current_inputs(self, manual_dir: str | os.PathLike | None) -> tuple[dict[str, Any], str] | None:
    if manual_dir is None:
      return None
    return fingerprint(clip_tables.read_clips(manual_dir)), str(manual_dir)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Example]]:
    report = self.report_in_progress()
    table = clip_tables.read_clips(self._manual_dir(dl_manager))
    if table.class_names != self.builder_config.class_names:
      raise PathError(table.table or table.root, "its classes changed while the build started; build again")
    report.manual_dir = str(table.root)
    report.table = None if table.table is None else str(table.table)
    report.layout, report.folds, report.folds_assigned = table.layout, table.folds, table.folds_assigned
    report.inputs = fingerprint(table)
    report.splits[SPLIT] = SplitReport(rows=len(table.clips), found=len(table.clips))
    return {SPLIT: generate_examples(table, report=report, num_workers=self._num_workers)}


def generate_examples(table: clip_tables.ClipTable, *, report: BuildReport, num_workers: int = 1) -> Iterator[Example]:
  """Decodes every clip of `table`; yields `(clip_id, example)` for each usable one, and records
  each clip that cannot be decoded, with its reason, in `report`."""
  split_report = report.splits[SPLIT]
  label_index = {name: i for i, name in enumerate(table.class_names)}
  paths = [str(c.path) for c in table.clips]
  results = build_lib.decode_all(paths, num_workers, desc=f"{NAME}/{report.config}")
  for clip, path, (samples, reason) in zip(table.clips, paths, results):
    if samples is None or not samples.size:
      report.skip(SPLIT, clip.clip_id, path, reason or "empty: no audio samples")
      continue
    split_report.written += 1
    yield clip.clip_id, {"audio": samples, "label": label_index[clip.label], "fold": clip.fold, "clip_id": clip.clip_id}
  if not split_report.written:
    first = report.skipped[0]
    raise ManualDirError(f"none of the {len(paths)} clips could be decoded, e.g. {first['path']}: {first['reason']}")


def check_name(name: str) -> str:
  if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
    raise ValueError(f"data set name {name!r}: use letters, digits, '_', '-' or '.'")
  return name


def build(
  data_dir: str | os.PathLike,
  *,
  name: str,
  source: str | os.PathLike,
  num_workers: int | None = None,
  overwrite: bool = False,
  log_summary: bool = True,
) -> BuildReport:
  """Builds `labelled_clips/{name}` from `source` (a root folder or a table) into data_dir.

  Every list problem raises (one line) before anything is decoded or written; an existing build
  from the same inputs is kept (its report returned), one from other inputs is an
  InputsChangedError unless `overwrite`.
  """
  table = clip_tables.read_clips(source)
  config = LabelledClipsConfig(name=check_name(name), class_names=table.class_names, description=str(source))
  builder = LabelledClips(config=config, data_dir=os.fspath(os.path.expanduser(data_dir)), num_workers=num_workers)
  return build_lib.build_dataset(builder, manual_dir=source, overwrite=overwrite, log_summary=log_summary)


@dataclasses.dataclass
class LabelledData:
  """A labelled-clips data set opened for cross-validation (`open_clips`)."""

  source: Sequence[dict]  # element i: {"audio", "label", "fold", "clip_id"}
  class_names: tuple[str, ...]
  labels: np.ndarray  # (N,) int, of each element
  folds: np.ndarray  # (N,) int
  dataset_id: str  # names the content (the build's fingerprint): keys the embedding cache
  longest: int  # samples of the longest clip


def dataset_dir(data_dir: str | os.PathLike, name: str) -> Path:
  return Path(os.path.expanduser(os.fspath(data_dir)), NAME, name, DATASET_VERSION)


def open_clips(data_dir: str | os.PathLike, name: str) -> LabelledData:
  """The built data set `name`, opened for cross-validation."""
  directory = dataset_dir(data_dir, check_name(name))
  if not (directory / "dataset_info.json").is_file():
    raise NotBuiltError(
      directory, f"no {NAME} data set {name!r} here; build it with vggsound-build-clips --name {name}"
    )
  builder = tfds.builder_from_directory(os.fspath(directory))
  source = builder.as_data_source(split=SPLIT)
  report = build_lib.read_report(directory, BuildReport)
  labels, folds, longest = _scan(source)
  dataset_id = hashlib.sha256(json.dumps(report.inputs, sort_keys=True).encode()).hexdigest()
  return LabelledData(source, tuple(builder.info.features["label"].names), labels, folds, dataset_id, longest)


def _scan(source: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, int]:
  """Each clip's label and fold, and the longest clip's samples: one pass over the data."""
  labels, folds, longest = np.zeros(len(source), np.int64), np.zeros(len(source), np.int64), 0
  for i in range(len(source)):
    element = source[i]
    labels[i], folds[i] = element["label"], element["fold"]
    longest = max(longest, len(element["audio"]))
  return labels, folds, longest
