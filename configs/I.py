"""Row I of the README table: ResNet-18 + NetVLAD, trained on all of VGGSound, tested on the
VGGSound test set (reported mAP 0.512, AUC 0.970, d' 2.660; the released
vggsound_netvlad.pth.tar).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.depth = 18
  config.model.head = "vlad"
  config.data.config = "full"
  config.eval.splits = ("test",)
  return config
