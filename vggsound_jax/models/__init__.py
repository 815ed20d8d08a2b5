"""Flax NNX models of the VGGSound release."""

from vggsound_jax.models.resnet import ModelConfig, ResNet, build_model

__all__ = ["ModelConfig", "ResNet", "build_model"]
