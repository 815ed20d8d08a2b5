"""vggsound-build: build a TFDS data set from your files: `vggsound` (your VGGSound copy, or the
synthetic set) or `audioset` (your AudioSet segments of the classes shared with VGGSound, row A).

  vggsound-build --manual_dir DIR --data_dir DIR [--config full|common]
  vggsound-build --data_dir DIR --config synthetic
  vggsound-build --dataset audioset --manual_dir DIR --data_dir DIR

What manual_dir holds, and what a build skips, records and refuses: docs/datasets.md and
docs/original_pipeline.md#the-data-set-as-users-have-it. The summary printed at the end and
`build_report.json` in the dataset directory list the skipped clips with the reason. A
malformed list stops the build before decoding, with the file and line. An already built config
is left as it is unless --overwrite is given: the script says so and prints the summary of its
build; if it was built from other inputs (other lists, other clip files), that is an error
pointing at --overwrite.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from vggsound_jax.cli import common

VGGSOUND, AUDIOSET = "vggsound", "audioset"

_DATASET = flags.DEFINE_enum("dataset", VGGSOUND, [VGGSOUND, AUDIOSET], "Data set to build.")
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir", None, "Directory with the lists and the clips (vggsound.csv, or AudioSet's segment lists)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write to.")
_CONFIG = flags.DEFINE_string(
  "config", None, "Builder config: vggsound: full (default), common or synthetic; audioset: common (default)."
)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Decoding processes.", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the config is already built.")


def _builder_class(dataset: str) -> type:
  # Imported here so that --help stays fast.
  if dataset == AUDIOSET:
    from vggsound_jax.datasets.audioset import Audioset

    return Audioset
  from vggsound_jax.datasets.vggsound import Vggsound

  return Vggsound


def _lists(dataset: str) -> tuple[str, ...]:
  """The lists of which manual_dir must hold at least one."""
  if dataset == AUDIOSET:
    from vggsound_jax.datasets.audioset import SEGMENT_LISTS

    return tuple(SEGMENT_LISTS.values())
  from vggsound_jax.datasets.clip_lists import CSV_NAME

  return (CSV_NAME,)


def _check_manual_dir(manual_dir: str | None, what: str, lists: tuple[str, ...]) -> None:
  if manual_dir is None:
    sys.exit(f"error: --manual_dir is needed for {what}")
  if not os.path.isdir(manual_dir):
    sys.exit(f"error: {manual_dir}: manual_dir is not a directory")
  if not any(os.path.isfile(os.path.join(manual_dir, name)) for name in lists):
    sys.exit(f"error: {manual_dir}: no {' or '.join(lists)} in manual_dir")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  builder_class = _builder_class(_DATASET.value)
  config = _CONFIG.value or builder_class.DEFAULT_CONFIG_NAME
  if config not in builder_class.builder_configs:
    sys.exit(f"error: --config {config}: {_DATASET.value} has the configs {', '.join(builder_class.builder_configs)}")
  builder = builder_class(config=config, data_dir=_DATA_DIR.value, num_workers=_NUM_WORKERS.value)
  if builder.uses_manual_dir():
    _check_manual_dir(_MANUAL_DIR.value, f"--dataset {_DATASET.value} --config {config}", _lists(_DATASET.value))

  from vggsound_jax.datasets import build as build_lib

  already_built = builder.is_built() and not _OVERWRITE.value
  # The summary is printed here, once, so the builder does not log it too. Errors in the lists,
  # manual_dir or data_dir are one line each (common.run_app).
  report = build_lib.build_dataset(builder, manual_dir=_MANUAL_DIR.value, overwrite=_OVERWRITE.value, log_summary=False)
  common.print_build(report, builder.data_path, name=f"{builder.name}/{config}", already_built=already_built)


def run() -> None:
  flags.mark_flag_as_required("data_dir")
  common.run_app(main)
