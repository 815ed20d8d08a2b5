"""Row M of the README table: ResNet-50 + average pooling, trained on all of VGGSound, tested
on the VGGSound test set (reported mAP 0.532, AUC 0.973, d' 2.735).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 50
  config.model.head = "avgpool"
  config.data.config = "full"
  config.eval.splits = ("test",)
  return config
