"""Train a VGGSound classifier, then evaluate it.

  python scripts/train.py --config configs/demo.py --workdir runs/demo
  python scripts/train.py --config configs/H.py --workdir runs/H --config.batch_size=128

Resumes from the latest checkpoint in WORKDIR/checkpoints; SIGTERM saves one and stops.
Writes TensorBoard events to WORKDIR, the final model to WORKDIR/model and the evaluation to
WORKDIR/eval/<split>/. With several processes (TPU pod slice, multi-node GPU) start the same
command on every host with --multiprocess.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: configs, vggsound_jax

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, eval).", required=True)
_MULTIPROCESS = flags.DEFINE_bool("multiprocess", False, "Call jax.distributed.initialize() first.")
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from vggsound_jax import sharding
  from vggsound_jax import trainer
  from vggsound_jax.inference import enable_compilation_cache

  sharding.initialize_distributed(force=_MULTIPROCESS.value)
  enable_compilation_cache()
  logging.set_verbosity(logging.WARNING)
  results = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if "preempted" in results:
    print(f"preempted at step {results['preempted']}; run the same command to resume")
    sys.exit(143)
  if sharding.is_main_process():
    for split, metrics in results.items():
      print(f"{split}: {json.dumps(metrics)}")
      print(f"  written to {Path(_WORKDIR.value) / 'eval' / split}")


if __name__ == "__main__":
  app.run(main)
