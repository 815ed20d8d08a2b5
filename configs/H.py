"""Row H of the README table: ResNet-18 + average pooling, trained on all of VGGSound, tested
on the VGGSound test set (reported mAP 0.516, AUC 0.968, d' 2.627; the released
vggsound_avgpool.pth.tar).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 18
  config.model.head = "avgpool"
  config.data.config = "full"
  config.eval.splits = ("test",)
  return config
