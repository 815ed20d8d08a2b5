"""What a model directory stores to rebuild its network (`ModelConfig`), and the shape of each
architecture as data: both networks (resnet.py, vggish.py) import this module, never each other."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from vggsound_jax.labels import NUM_CLASSES

# ResNet: (block kind, blocks per stage) by depth; stage widths are multiples of the base width.
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
STAGE_WIDTHS = (1, 2, 4, 8)  # times the base width: 64, 128, 256, 512
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = {"basic": 1, "bottleneck": 4}
# VGGish: the size of its embedding layer `fc2`, whatever the width.
VGGISH_EMBEDDING_SIZE = 128

ARCHS = ("resnet", "vggish")
# The classifier layer of each architecture (its outputs are the classes): everything else is the
# backbone, which fine-tuning loads from a model of other classes (`config.finetune`).
HEAD_MODULES = {"resnet": "fc", "vggish": "classifier"}
OUTPUTS = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """What a model directory stores to rebuild its network. The defaults of the fields added
  after the ResNet ones (arch and below) keep every earlier directory loading as it was."""

  depth: Literal[18, 34, 50] = 18  # ResNet only
  head: Literal["avgpool", "vlad"] = "avgpool"  # ResNet only
  num_classes: int = NUM_CLASSES
  width: int = 64  # base channels; the paper's is 64 (ResNet and VGGish), tests use a few
  num_clusters: int = 16  # NetVLAD head only
  dtype: str = "float32"  # compute dtype; parameters are always float32
  arch: Literal["resnet", "vggish"] = "resnet"  # vggish: rows A-C (models/vggish.py)
  # softmax: one class per clip (VGGSound); sigmoid: independent classes (multi-label AudioSet,
  # row A). Inference reports these probabilities and training uses the matching cross-entropy.
  output: Literal["softmax", "sigmoid"] = "softmax"
  fc_width: int = 4096  # VGGish only: its two hidden fully connected layers; tests use a few
  embedding_relu: bool = True  # VGGish only: ReLU on the 128-d embedding, as released until 2020
  patch_aggregation: Literal["mean", "max"] = "mean"  # VGGish only: pooling of a clip's patch embeddings

  def __post_init__(self) -> None:
    if self.arch not in ARCHS:
      raise ValueError(f"unknown arch {self.arch!r}: expected one of {', '.join(ARCHS)}")
    if self.output not in OUTPUTS:
      raise ValueError(f"unknown output {self.output!r}: expected one of {', '.join(OUTPUTS)}")

  @classmethod
  def from_config(cls, model: Mapping[str, Any], num_classes: int) -> ModelConfig:
    """From an experiment config's `model` fields and the data's number of classes."""
    later_fields = ("arch", "output", "fc_width", "embedding_relu", "patch_aggregation")
    return cls(
      depth=model["depth"],
      head=model["head"],
      num_classes=num_classes,
      width=model["width"],
      num_clusters=model["num_clusters"],
      dtype=model["dtype"],
      **{name: model.get(name, getattr(cls, name)) for name in later_fields},
    )

  @property
  def embedding_dim(self) -> int:
    if self.arch == "vggish":
      return VGGISH_EMBEDDING_SIZE
    channels = STAGE_WIDTHS[-1] * self.width * EXPANSION[DEPTHS[self.depth][0]]
    return channels * self.num_clusters if self.head == "vlad" else channels
