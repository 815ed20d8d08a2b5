"""Row J of the README table: ResNet-34 + average pooling, trained on all of VGGSound, tested
on ASTest (reported mAP 0.409, AUC 0.947, d' 2.292).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 34
  config.model.head = "avgpool"
  config.data.config = "full"
  config.eval.splits = ("astest",)
  return config
