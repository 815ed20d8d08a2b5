"""vggsound-evaluate: evaluate a trained run or a model directory on the configured splits.

  vggsound-evaluate --config configs/paper.py:H --workdir runs/H          # the run's latest checkpoint
  vggsound-evaluate --config configs/paper.py:eval_H --checkpoint models/H --workdir runs/eval_H

Writes WORKDIR/eval/<split>/ (predictions.npz, metrics.json, per_class.csv,
per_class_ap.png) and prints the metrics, beside the paper's for the row. With --vggsounder
(or --config.eval.vggsounder=True), also scores the test split against VGGSounder's audible
labels: WORKDIR/eval/test/vggsounder.json, and its headline numbers printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from vggsound_jax.cli import common, launch

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, e.g. configs/paper.py:eval_H.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; results go to WORKDIR/eval.")
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "A converted (or exported) model directory; default: the run's latest checkpoint."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_VGGSOUNDER = flags.DEFINE_bool(
  "vggsounder", False, "Also score the test split against VGGSounder's audible labels (config.eval.vggsounder)."
)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _VGGSOUNDER.value:
    _CONFIG.value.eval.vggsounder = True
  launch.start(_CONFIG.value)
  from vggsound_jax import evaluation, sharding, vggsounder  # keeps --help fast

  if _CONFIG.value.eval.vggsounder:
    vggsounder.check_config(_CONFIG.value)  # before the evaluation, not after it
  try:
    results = evaluation.evaluate(_CONFIG.value, _WORKDIR.value, checkpoint=_CHECKPOINT.value, step=_STEP.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  common.print_results(results, _CONFIG.value, _WORKDIR.value)
  if _CONFIG.value.eval.vggsounder and sharding.is_main_process():
    print(vggsounder.format_results(vggsounder.read_results(Path(_WORKDIR.value) / "eval" / vggsounder.SPLIT)))


def run() -> None:
  flags.mark_flags_as_required(["config", "workdir"])
  common.run_app(main)
