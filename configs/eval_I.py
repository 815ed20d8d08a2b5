"""Evaluating the converted release model of row I on the VGGSound test set.

  python scripts/evaluate.py --config configs/eval_I.py --checkpoint DIR --workdir runs/eval_I

The model (architecture, class names) comes from the converted checkpoint; this config gives
the data and the evaluation settings. float32, as the release was run.
"""

from configs import I


def get_config():
  config = I.get_config()
  config.model.dtype = "float32"
  config.eval.splits = ("test",)  # add "astest" when its list was given
  return config
