"""The paper's table (Chen et al., ICASSP 2020) as data: one row per experiment.

  vggsound-train --config configs/paper.py:H --workdir runs/H
  vggsound-evaluate --config configs/paper.py:H --workdir runs/H              # its checkpoints
  vggsound-evaluate --config configs/paper.py:eval_H --checkpoint models/H --workdir runs/eval_H

`ROW` trains that row with the recipe of `vggsound_jax/default_config.py`; `eval_ROW` is the
same row for evaluating a finished model directory (a converted release model, or a run's
`WORKDIR/model`) in float32, as the release was run. What each column means, and the original
pipeline behind it: docs/original_pipeline.md.

Rows A-C (VGGish) change the recipe where VGGish needs it; the VGGSound authors published
none of theirs, so these are the project's choices:
- Adam at 1e-4 (eps 1e-8, no weight decay, no batch-size scaling), one epoch of warmup:
  Google's recipe for VGGish (vggish_params.py), whose weights rows A and B start from.
  SGD at 0.1 suits the ResNets' BatchNorm; VGGish has none.
- No SpecAugment: its masks fill with 0, the mean of the ResNet's standardised spectrogram,
  but VGGish's log-mel patches are not standardised (0 is a loud value there); Google trained
  VGGish without augmentation.
- Rows A and B start from the released weights converted into VGGISH_WEIGHTS
  (`vggsound-convert --input vggish_model.ckpt --output models/vggish`; another directory:
  `--config.init_from=DIR`); the classifier starts random. Row C starts from random weights.
- Row A trains on AudioSet's training segments of the shared classes (builder `audioset`,
  multi-hot labels over VGGSound's classes) with a sigmoid output and a binary cross-entropy,
  no label smoothing, 10 epochs (AudioSet's shared-class segments outnumber VGGSound's
  several times over); it is tested, like B and C, on VGGSound's ASTest clips.
"""

from __future__ import annotations

import typing

import ml_collections

from vggsound_jax import default_config


class Row(typing.NamedTuple):
  depth: int | None  # ResNet-18, 34 or 50; None for VGGish
  head: str | None  # "avgpool" or "vlad" (NetVLAD); None for VGGish
  train_data: str  # builder config: "full" (all 309 classes) or "common" (the 164 shared with AudioSet)
  test_split: str  # "test" (VGGSound test set) or "astest" (its clips listed in AStest.csv)
  mAP: float  # the paper's reported results for the row
  mAUC: float
  d_prime: float
  arch: str = "resnet"  # or "vggish" (rows A-C)
  train_dataset: str = "vggsound"  # the builder trained on: "vggsound", or "audioset" (row A)
  pretrained: bool = False  # starts from the released VGGish weights (VGGISH_WEIGHTS)


# Where the README has the released VGGish weights converted (relative to the working directory).
VGGISH_WEIGHTS = "models/vggish"
# AudioSet's training segments: both of Google's training lists (builder `audioset`).
AUDIOSET_TRAIN_SPLIT = "balanced_train+unbalanced_train"

ROWS = {
  "A": Row(None, None, "common", "astest", 0.286, 0.899, 1.803, "vggish", "audioset", pretrained=True),
  "B": Row(None, None, "common", "astest", 0.326, 0.916, 1.950, "vggish", pretrained=True),
  "C": Row(None, None, "common", "astest", 0.301, 0.910, 1.900, "vggish"),
  "D": Row(18, "avgpool", "common", "astest", 0.328, 0.923, 2.024),
  "E": Row(18, "vlad", "common", "astest", 0.369, 0.927, 2.058),
  "F": Row(18, "avgpool", "full", "astest", 0.404, 0.944, 2.253),
  "G": Row(18, "vlad", "full", "astest", 0.434, 0.950, 2.327),
  "H": Row(18, "avgpool", "full", "test", 0.516, 0.968, 2.627),  # released: vggsound_avgpool.pth.tar
  "I": Row(18, "vlad", "full", "test", 0.512, 0.970, 2.660),  # released: vggsound_netvlad.pth.tar
  "J": Row(34, "avgpool", "full", "astest", 0.409, 0.947, 2.292),
  "K": Row(34, "avgpool", "full", "test", 0.529, 0.972, 2.703),
  "L": Row(50, "avgpool", "full", "astest", 0.412, 0.949, 2.309),
  "M": Row(50, "avgpool", "full", "test", 0.532, 0.973, 2.735),
}
EVAL_PREFIX = "eval_"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or ""
  row_name = name.removeprefix(EVAL_PREFIX)
  if row_name not in ROWS:
    choices = ", ".join(list(ROWS) + [EVAL_PREFIX + r for r in ROWS])
    raise ValueError(f"configs/paper.py: unknown row {name!r}; use configs/paper.py:ROW with ROW one of {choices}")
  row = ROWS[row_name]
  config = default_config.get_config()
  if row.arch == "vggish":
    _vggish_recipe(config, row)
  else:
    config.model.depth = row.depth
    config.model.head = row.head
  config.data.config = row.train_data
  config.eval.splits = (row.test_split,)
  if name.startswith(EVAL_PREFIX):
    config.model.dtype = "float32"
  config.reported = ml_collections.ConfigDict(
    {"row": row_name, "mAP": row.mAP, "mAUC": row.mAUC, "d_prime": row.d_prime}
  )
  return config


def _vggish_recipe(config: ml_collections.ConfigDict, row: Row) -> None:
  """Rows A-C: what changes from the ResNet recipe, and why (this module's docstring)."""
  config.model.arch = "vggish"
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-4
  config.optimizer.reference_batch_size = 0
  config.optimizer.weight_decay = 0.0
  config.schedule.warmup_epochs = 1.0
  config.augment.freq_masks = 0
  config.augment.time_masks = 0
  if row.pretrained:
    config.init_from = VGGISH_WEIGHTS
  if row.train_dataset == "audioset":
    config.data.train_dataset = "audioset"
    config.data.train_split = AUDIOSET_TRAIN_SPLIT
    config.model.output = "sigmoid"
    config.label_smoothing = 0.0
    config.num_epochs = 10.0
