"""Flax NNX models of the VGGSound paper (ResNets, VGGish), and the one shape of their variables."""

from vggsound_jax.models.resnet import ModelConfig, ResNet, build_model, frontend
from vggsound_jax.models.state import GraphDefs, ModelState, abstract_model_state, graphdefs, merge_model, split_model
from vggsound_jax.models.vggish import VGGish

__all__ = [
  "GraphDefs",
  "ModelConfig",
  "ModelState",
  "ResNet",
  "VGGish",
  "abstract_model_state",
  "build_model",
  "frontend",
  "graphdefs",
  "merge_model",
  "split_model",
]
