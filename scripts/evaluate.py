"""Evaluate a trained run or a converted model on the configured splits.

  python scripts/evaluate.py --config configs/H.py --workdir runs/H          # latest checkpoint
  python scripts/evaluate.py --config configs/eval_H.py --checkpoint DIR --workdir runs/eval_H

Writes WORKDIR/eval/<split>/ (predictions.npz, metrics.json, per_class.csv,
per_class_ap.png) and prints the metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: configs, vggsound_jax

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; results go to WORKDIR/eval.", required=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A converted (or exported) model directory; default: the run's latest checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_MULTIPROCESS = flags.DEFINE_bool("multiprocess", False, "Call jax.distributed.initialize() first.")
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from vggsound_jax import sharding, trainer
  from vggsound_jax.inference import enable_compilation_cache

  sharding.initialize_distributed(force=_MULTIPROCESS.value)
  enable_compilation_cache()
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  try:
    results = trainer.evaluate(
        config, _WORKDIR.value, checkpoint=_CHECKPOINT.value, step=_STEP.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  if sharding.is_main_process():
    for split, metrics in results.items():
      print(f"{split}: {json.dumps(metrics)}")
      print(f"  written to {Path(_WORKDIR.value) / 'eval' / split}")


if __name__ == "__main__":
  app.run(main)
