"""Evaluating the converted release model of row H on the VGGSound test set.

  python scripts/evaluate.py --config configs/eval_H.py --checkpoint DIR --workdir runs/eval_H

The model (architecture, class names) comes from the converted checkpoint; this config gives
the data and the evaluation settings. float32, as the release was run.
"""

from configs import H


def get_config():
  config = H.get_config()
  config.model.dtype = "float32"
  config.eval.splits = ("test",)  # add "astest" when its list was given
  return config
