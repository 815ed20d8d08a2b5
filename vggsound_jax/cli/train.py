"""vggsound-train: train a VGGSound classifier, then evaluate it.

  vggsound-train --config configs/demo.py --workdir runs/demo
  vggsound-train --config configs/paper.py:H --workdir runs/H --config.batch_size=128

Resumes from the latest checkpoint in WORKDIR/checkpoints; SIGTERM saves one and exits with
143. Writes TensorBoard events to WORKDIR, the final model to WORKDIR/model and the evaluation
to WORKDIR/eval/<split>/. With several processes (TPU pod slice, multi-node GPU) start the same
command on every host with --multiprocess.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from vggsound_jax.cli import common, launch

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect of a preempted job

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, e.g. configs/paper.py:H or configs/demo.py.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, eval).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.start(_CONFIG.value)
  from vggsound_jax import trainer  # keeps --help fast

  results = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if "preempted" in results:
    print(f"preempted at step {results['preempted']}; run the same command to resume")
    sys.exit(PREEMPTED_EXIT_CODE)
  common.print_results(results, _CONFIG.value, _WORKDIR.value)


def run() -> None:
  flags.mark_flags_as_required(["config", "workdir"])
  common.run_app(main)
