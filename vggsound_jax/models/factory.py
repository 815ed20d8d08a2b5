"""The network a `ModelConfig` names, its front end, and the whole forward pass from int16
waveforms to probabilities: the one place that knows both architectures."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from vggsound_jax.audio.spectrogram import log_spectrogram
from vggsound_jax.audio.vggish_frontend import log_mel_patches
from vggsound_jax.models.config import ModelConfig
from vggsound_jax.models.resnet import ResNet
from vggsound_jax.models.vggish import VGGish

# Any network of the project: both take the front end's output and return logits (and the
# embedding with `return_embedding=True`).
Network = ResNet | VGGish


def build_model(config: ModelConfig, seed: int = 0) -> Network:
  """The network `config.arch` names, with random parameters drawn from `seed`."""
  if config.arch == "vggish":
    return VGGish(config, rngs=nnx.Rngs(seed))
  return ResNet(config, rngs=nnx.Rngs(seed))


def _resnet_input(audio: jax.Array) -> jax.Array:
  return log_spectrogram(audio)[..., None]


def frontend(config: ModelConfig) -> Callable[[jax.Array], jax.Array]:
  """The function from a batch of int16 waveforms (N, T) to the model's float32 input, run on
  the device inside the jitted steps: (N, 257, frames, 1) standardised log-spectrograms for a
  ResNet (audio/spectrogram.py), (N, patches, 96, 64, 1) log-mel patches for VGGish
  (audio/vggish_frontend.py)."""
  return log_mel_patches if config.arch == "vggish" else _resnet_input


def forward(model: Network, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
  """int16 waveforms (N, T) -> probabilities (N, C) and embeddings (N, D), float32.

  Probabilities are the softmax of the logits, or their sigmoid for a multi-label model
  (`model.config.output`).
  """
  inputs = frontend(model.config)(audio).astype(model.config.dtype)
  logits, embedding = model(inputs, return_embedding=True)
  if model.config.output == "sigmoid":
    return jax.nn.sigmoid(logits), embedding
  return jax.nn.softmax(logits, axis=-1), embedding
