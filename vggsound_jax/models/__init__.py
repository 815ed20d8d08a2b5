"""Flax NNX models of the VGGSound release, and the one shape of their variables."""

from vggsound_jax.models.resnet import ModelConfig, ResNet, build_model
from vggsound_jax.models.state import GraphDefs, ModelState, abstract_model_state, graphdefs, merge_model, split_model

__all__ = [
  "GraphDefs",
  "ModelConfig",
  "ModelState",
  "ResNet",
  "abstract_model_state",
  "build_model",
  "graphdefs",
  "merge_model",
  "split_model",
]
