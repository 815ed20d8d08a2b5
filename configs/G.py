"""Row G of the README table: ResNet-18 + NetVLAD, trained on all of VGGSound, tested on ASTest
(reported mAP 0.434, AUC 0.950, d' 2.327).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 18
  config.model.head = "vlad"
  config.data.config = "full"
  config.eval.splits = ("astest",)
  return config
