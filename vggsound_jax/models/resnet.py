"""ResNet-18/34/50 over a one-channel log-spectrogram, as in the VGGSound release
(docs/original_pipeline.md#network).

Layout is NHWC: (batch, 257 frequency bins, frames, 1). Module and attribute names follow
the PyTorch original (`conv1`, `bn1`, `layer1`..`layer4`, `downsample`, `fc`) so that the
converter maps the released weights one to one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vggsound_jax.models.config import DEPTHS, STAGE_STRIDES, STAGE_WIDTHS, ModelConfig
from vggsound_jax.models.netvlad import NetVLAD

# PyTorch BatchNorm: eps 1e-5, running = 0.9 * running + 0.1 * batch.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# torchvision's ResNet init: kaiming normal, fan_out, for a ReLU network.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(
  cin: int, cout: int, kernel: int, stride: int, padding: int, dtype: jnp.dtype | str, rngs: nnx.Rngs
) -> nnx.Conv:
  return nnx.Conv(
    cin,
    cout,
    (kernel, kernel),
    strides=stride,
    padding=((padding, padding),) * 2,
    use_bias=False,
    kernel_init=_conv_init,
    dtype=dtype,
    rngs=rngs,
  )


def _bn(channels: int, dtype: jnp.dtype | str, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)


class Downsample(nnx.Module):
  """The projection shortcut: 1x1 conv (stride s) + BatchNorm."""

  def __init__(self, cin: int, cout: int, stride: int, dtype: jnp.dtype | str, rngs: nnx.Rngs) -> None:
    self.conv = _conv(cin, cout, 1, stride, 0, dtype, rngs)
    self.bn = _bn(cout, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int, dtype: jnp.dtype | str, rngs: nnx.Rngs) -> None:
    self.conv1 = _conv(cin, planes, 3, stride, 1, dtype, rngs)
    self.bn1 = _bn(planes, dtype, rngs)
    self.conv2 = _conv(planes, planes, 3, 1, 1, dtype, rngs)
    self.bn2 = _bn(planes, dtype, rngs)
    needs_projection = stride != 1 or cin != planes
    self.downsample = Downsample(cin, planes, stride, dtype, rngs) if needs_projection else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int, dtype: jnp.dtype | str, rngs: nnx.Rngs) -> None:
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 1, 1, 0, dtype, rngs)
    self.bn1 = _bn(planes, dtype, rngs)
    self.conv2 = _conv(planes, planes, 3, stride, 1, dtype, rngs)
    self.bn2 = _bn(planes, dtype, rngs)
    self.conv3 = _conv(planes, cout, 1, 1, 0, dtype, rngs)
    self.bn3 = _bn(cout, dtype, rngs)
    needs_projection = stride != 1 or cin != cout
    self.downsample = Downsample(cin, cout, stride, dtype, rngs) if needs_projection else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
  """stem -> 4 stages -> head (global average pool or NetVLAD) -> fc (309 logits)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
    self.config = config
    dtype = jnp.dtype(config.dtype)
    block_kind, blocks_per_stage = DEPTHS[config.depth]
    block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block_kind]

    self.conv1 = _conv(1, config.width, 7, 2, 3, dtype, rngs)
    self.bn1 = _bn(config.width, dtype, rngs)
    cin = config.width
    for i, (mult, stride, num_blocks) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES, blocks_per_stage), start=1):
      planes = mult * config.width
      blocks = []
      for j in range(num_blocks):
        blocks.append(block(cin, planes, stride if j == 0 else 1, dtype, rngs))
        cin = planes * block.expansion
      setattr(self, f"layer{i}", nnx.List(blocks))

    if config.head == "vlad":
      self.netvlad = NetVLAD(config.num_clusters, cin, dtype=dtype, rngs=rngs)
    elif config.head != "avgpool":
      raise ValueError(f"unknown head {config.head!r}: expected 'avgpool' or 'vlad'")
    self.fc = nnx.Linear(config.embedding_dim, config.num_classes, dtype=dtype, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """(N, H, W, 1) spectrogram -> (N, H/32, W/32, 512 * expansion) feature map."""
    x = nnx.relu(self.bn1(self.conv1(x)))
    # Padding with -inf: the padding never wins the max, as in PyTorch.
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x)
    return x

  def embed(self, x: jax.Array) -> jax.Array:
    """The pooled embedding: (N, 512 * expansion) for avgpool, (N, 16 * 512) for vlad."""
    x = self.features(x)
    if self.config.head == "vlad":
      return self.netvlad(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x: jax.Array, *, return_embedding: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Logits (N, num_classes) in float32, and the embedding too if asked."""
    embedding = self.embed(x)
    logits = self.fc(embedding).astype(jnp.float32)
    if return_embedding:
      return logits, embedding.astype(jnp.float32)
    return logits
