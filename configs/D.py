"""Row D of the README table: ResNet-18 + average pooling, trained on the 164 classes VGGSound
shares with AudioSet, tested on ASTest (reported mAP 0.328, AUC 0.923, d' 2.024).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 18
  config.model.head = "avgpool"
  config.data.config = "common"
  config.eval.splits = ("astest",)
  return config
