"""Row K of the README table: ResNet-34 + average pooling, trained on all of VGGSound, tested
on the VGGSound test set (reported mAP 0.529, AUC 0.972, d' 2.703).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 34
  config.model.head = "avgpool"
  config.data.config = "full"
  config.eval.splits = ("test",)
  return config
