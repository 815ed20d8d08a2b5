"""Row F of the README table: ResNet-18 + average pooling, trained on all of VGGSound, tested
on ASTest (reported mAP 0.404, AUC 0.944, d' 2.253).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 18
  config.model.head = "avgpool"
  config.data.config = "full"
  config.eval.splits = ("astest",)
  return config
