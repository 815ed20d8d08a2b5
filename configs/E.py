"""Row E of the README table: ResNet-18 + NetVLAD, trained on the 164 common classes, tested on
ASTest (reported mAP 0.369, AUC 0.927, d' 2.058).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 18
  config.model.head = "vlad"
  config.data.config = "common"
  config.eval.splits = ("astest",)
  return config
