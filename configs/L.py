"""Row L of the README table: ResNet-50 + average pooling, trained on all of VGGSound, tested
on ASTest (reported mAP 0.412, AUC 0.949, d' 2.309).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 50
  config.model.head = "avgpool"
  config.data.config = "full"
  config.eval.splits = ("astest",)
  return config
