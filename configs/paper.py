"""The paper's table (Chen et al., ICASSP 2020) as data: one row per experiment.

  vggsound-train --config configs/paper.py:H --workdir runs/H
  vggsound-evaluate --config configs/paper.py:H --workdir runs/H              # its checkpoints
  vggsound-evaluate --config configs/paper.py:eval_H --checkpoint models/H --workdir runs/eval_H

`ROW` trains that row with the recipe of `vggsound_jax/default_config.py`; `eval_ROW` is the
same row for evaluating a finished model directory (a converted release model, or a run's
`WORKDIR/model`) in float32, as the release was run. Rows A-C (VGGish) are not implemented yet.
What each column means, and the original pipeline behind it: docs/original_pipeline.md.
"""

from __future__ import annotations

import typing

import ml_collections

from vggsound_jax import default_config


class Row(typing.NamedTuple):
  depth: int  # ResNet-18, 34 or 50
  head: str  # "avgpool" or "vlad" (NetVLAD)
  train_data: str  # builder config: "full" (all 309 classes) or "common" (the 164 shared with AudioSet)
  test_split: str  # "test" (VGGSound test set) or "astest" (its clips listed in AStest.csv)
  mAP: float  # the paper's reported results for the row
  mAUC: float
  d_prime: float


ROWS = {
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
