"""Flax NNX models of the VGGSound paper (ResNets, VGGish), and the one shape of their variables."""

from vggsound_jax.models.config import ModelConfig
from vggsound_jax.models.factory import Network, build_model, forward, frontend
from vggsound_jax.models.resnet import ResNet
from vggsound_jax.models.state import GraphDefs, ModelState, abstract_model_state, graphdefs, merge_model, split_model
from vggsound_jax.models.vggish import VGGish

__all__ = [
  "GraphDefs",
  "ModelConfig",
  "ModelState",
  "Network",
  "ResNet",
  "VGGish",
  "abstract_model_state",
  "build_model",
  "forward",
  "frontend",
  "graphdefs",
  "merge_model",
  "split_model",
]
