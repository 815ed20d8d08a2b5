"""vggsound-build-clips: build a data set of your own labelled clips (docs/transfer.md).

  vggsound-build-clips --source ~/ESC-50-master --name esc50 --data_dir ~/tensorflow_datasets
  vggsound-build-clips --source ~/UrbanSound8K --name urbansound8k --data_dir ~/tensorflow_datasets
  vggsound-build-clips --source my_clips.csv --name birds --data_dir DIR     # path,label[,fold]
  vggsound-build-clips --source ~/my_sounds --name mine --data_dir DIR       # ROOT/<label>/.../<clip>

Problems with the lists (unknown columns, a missing file, one class only) stop it before anything
is decoded; clips that cannot be decoded are skipped, counted and listed in build_report.json.
An existing build of the name from the same inputs is kept; from other inputs, --overwrite.
"""

from __future__ import annotations

import os

from absl import app, flags

from vggsound_jax.cli import common

_SOURCE = flags.DEFINE_string("source", None, "The data set's root folder, or its table (csv).")
_NAME = flags.DEFINE_string("name", None, "The data set's name (config.data.clips of vggsound-crossval).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write to.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Decoding processes.", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the data set is already built.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from vggsound_jax.datasets import labelled

  directory = labelled.dataset_dir(_DATA_DIR.value, labelled.check_name(_NAME.value))
  already_built = (directory / "dataset_info.json").is_file() and not _OVERWRITE.value
  report = labelled.build(
    _DATA_DIR.value,
    name=_NAME.value,
    source=_SOURCE.value,
    num_workers=_NUM_WORKERS.value,
    overwrite=_OVERWRITE.value,
    log_summary=False,
  )
  common.print_build(report, directory, name=f"{labelled.NAME}/{_NAME.value}", already_built=already_built)


def run() -> None:
  flags.mark_flags_as_required(["source", "name", "data_dir"])
  common.run_app(main)
