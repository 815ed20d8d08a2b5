"""vggsound-crossval: cross-validate fine-tuning or a linear probe over a labelled-clips data set.

  vggsound-crossval --mode probe --config configs/transfer.py:models/H --workdir runs/esc50-probe \
    --config.data.clips=esc50 --config.data.data_dir=~/tensorflow_datasets
  vggsound-crossval --mode finetune --config configs/transfer.py:models/H --workdir runs/esc50-H \
    --config.data.clips=esc50 --config.data.data_dir=~/tensorflow_datasets

Each fold's results and (fine-tuning) model directory are in WORKDIR/fold_K; the per-fold table
and mean +- std of accuracy and mAP in WORKDIR/summary.json and summary.csv. Run the same
command again after an interruption: finished folds are kept, the current one resumes at its
last checkpoint. docs/transfer.md.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from vggsound_jax.cli import common, launch

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/transfer.py:models/H (the model to start from).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the folds and the summary.")
_MODE = flags.DEFINE_enum("mode", "finetune", ["finetune", "probe"], "Fine-tune per fold, or a linear probe.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from vggsound_jax.errors import ConfigError

  config = _CONFIG.value
  if not config.data.clips:
    raise ConfigError("data.clips", "name the labelled-clips data set (vggsound-build-clips --name NAME)")
  if _MODE.value == "finetune":
    launch.start(config)
  from vggsound_jax import crossval  # keeps --help fast
  from vggsound_jax.datasets import labelled

  data = labelled.open_clips(config.data.data_dir, config.data.clips)
  crossval.run(config, _WORKDIR.value, data, mode=_MODE.value)


def run() -> None:
  flags.mark_flags_as_required(["config", "workdir"])
  common.run_app(main)
