"""vggsound-build: build the TFDS data set `vggsound` from your copy of VGGSound, or the synthetic one.

  vggsound-build --manual_dir DIR --data_dir DIR [--config full|common]
  vggsound-build --data_dir DIR --config synthetic

manual_dir holds `vggsound.csv`, the clip files (`{youtube_id}_{start:06d}.{wav,flac,mp4,mkv,
webm}`, subfolders allowed) and/or `.tar.gz` archives of them (the Hugging Face mirror's
`vggsound_NN.tar.gz`, read without extracting them), and optionally `AStest.csv` and
`Common.txt` (see docs/datasets.md and
docs/original_pipeline.md#the-data-set-as-users-have-it). Clips that are missing, cannot be
decoded or sit in a damaged part of an archive are skipped; the summary printed at the end and
`build_report.json` in the dataset directory list them with the reason. A malformed list
stops the build before decoding, with the file and line. An already built config is left as
it is unless --overwrite is given: the script says so and prints the summary of its build; if
it was built from other inputs (another csv, other clip files), that is an error pointing at
--overwrite.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from vggsound_jax.cli import common

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Directory with vggsound.csv and the clips.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write to.")
_CONFIG = flags.DEFINE_enum("config", "full", ["full", "common", "synthetic"], "Builder config.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Decoding processes.", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the config is already built.")


def _check_manual_dir(manual_dir: str | None) -> None:
  # Imported here so that --help stays fast.
  from vggsound_jax.datasets.clip_lists import CSV_NAME  # noqa: PLC0415

  if manual_dir is None:
    sys.exit(f"error: --manual_dir is needed for --config {_CONFIG.value}")
  if not os.path.isdir(manual_dir):
    sys.exit(f"error: {manual_dir}: manual_dir is not a directory")
  if not os.path.isfile(os.path.join(manual_dir, CSV_NAME)):
    sys.exit(f"error: {manual_dir}: no {CSV_NAME} in manual_dir")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value != "synthetic":
    _check_manual_dir(_MANUAL_DIR.value)

  from vggsound_jax.datasets import build as build_lib  # noqa: PLC0415
  from vggsound_jax.datasets import vggsound  # noqa: PLC0415

  builder = vggsound.Vggsound(config=_CONFIG.value, data_dir=_DATA_DIR.value)
  already_built = builder.is_built() and not _OVERWRITE.value
  # The summary is printed here, once, so the builder does not log it too. Errors in the lists,
  # manual_dir or data_dir are one line each (common.run_app).
  report = vggsound.build(
    _DATA_DIR.value,
    config=_CONFIG.value,
    manual_dir=_MANUAL_DIR.value,
    num_workers=_NUM_WORKERS.value,
    overwrite=_OVERWRITE.value,
    log_summary=False,
  )
  if already_built:
    print(f"{vggsound.NAME}/{_CONFIG.value} is already built: nothing done (--overwrite rebuilds it). Its build:")
  print(report.summary())
  print(f"dataset: {builder.data_path}")
  print(f"report: {os.path.join(builder.data_path, build_lib.REPORT_NAME)}")


def run() -> None:
  flags.mark_flag_as_required("data_dir")
  common.run_app(main)
