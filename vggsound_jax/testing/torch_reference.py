"""The original VGGSound audio network in PyTorch (docs/original_pipeline.md#network).

torchvision-style ResNet-18/34/50 with a one-channel stem and either global average pooling +
`fc` or NetVLAD (Nanne/pytorch-NetVlad style, named `avgpool`) + `fc_`, wrapped in a module
whose attribute is `audnet`, so that state-dict keys are exactly the release's. Written
independently of the Flax code, so that comparing the two checks the port. Input is NCHW
(N, 1, 257, T). A reference for tests and benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 309
BLOCKS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3])}


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class NetVLAD(nn.Module):
  """NetVLAD as in Nanne/pytorch-NetVlad: centroids and a separate 1x1 assignment conv."""

  def __init__(self, num_clusters: int = 16, dim: int = 512, alpha: float = 100.0) -> None:
    super().__init__()
    self.num_clusters = num_clusters
    self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
    self.centroids = nn.Parameter(torch.rand(num_clusters, dim))
    with torch.no_grad():
      self.conv.weight.copy_((2.0 * alpha * self.centroids)[:, :, None, None])
      self.conv.bias.copy_(-alpha * self.centroids.norm(dim=1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    x = F.normalize(x, p=2, dim=1)
    soft_assign = F.softmax(self.conv(x).view(n, self.num_clusters, -1), dim=1)
    x_flatten = x.view(n, c, -1)
    vlad = torch.zeros(n, self.num_clusters, c, dtype=x.dtype)
    for k in range(self.num_clusters):  # residuals to one centroid at a time, as the original
      residual = x_flatten - self.centroids[k][None, :, None]  # (N, C, P)
      residual = residual * soft_assign[:, k : k + 1, :]
      vlad[:, k, :] = residual.sum(dim=-1)
    vlad = F.normalize(vlad, p=2, dim=2)
    vlad = vlad.reshape(n, -1)
    return F.normalize(vlad, p=2, dim=1)


class ResNet(nn.Module):
  def __init__(
    self,
    depth: int = 18,
    head: str = "avgpool",
    num_classes: int = NUM_CLASSES,
    width: int = 64,
    num_clusters: int = 16,
  ) -> None:
    super().__init__()
    kind, layers = BLOCKS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    self.head = head
    self.inplanes = width
    self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, width, layers[0], 1)
    self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
    self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
    self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
    channels = width * 8 * block.expansion
    if head == "vlad":
      self.avgpool = NetVLAD(num_clusters, channels)
      self.fc_ = nn.Linear(num_clusters * channels, num_classes)
    else:
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(channels, num_classes)

  def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
        nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
        nn.BatchNorm2d(planes * block.expansion),
      )
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def embed(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.avgpool(x).view(x.size(0), -1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.embed(x)
    return self.fc_(x) if self.head == "vlad" else self.fc(x)


class AudioNet(nn.Module):
  """The release's wrapper: the network is its `audnet` attribute."""

  def __init__(self, **kwargs: int | str) -> None:
    super().__init__()
    self.audnet = ResNet(**kwargs)

  def embed(self, x: torch.Tensor) -> torch.Tensor:
    return self.audnet.embed(x)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.audnet(x)


def build_torch_model(
  depth: int, head: str, num_classes: int = NUM_CLASSES, width: int = 64, num_clusters: int = 16
) -> AudioNet:
  return AudioNet(depth=depth, head=head, num_classes=num_classes, width=width, num_clusters=num_clusters)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
  """Random weights everywhere, including BatchNorm running statistics (variances positive).

  Scales keep activations O(1) through the depth, so that logits are informative.
  """
  g = torch.Generator().manual_seed(seed)

  def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
    t.copy_(torch.randn(t.shape, generator=g) * std + mean)

  for module in model.modules():
    if isinstance(module, nn.Conv2d):
      fan_in = module.weight[0].numel()
      normal(module.weight, (2.0 / fan_in) ** 0.5)
      if module.bias is not None:
        normal(module.bias, 0.5)
    elif isinstance(module, nn.BatchNorm2d):
      module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
      normal(module.bias, 0.2)
      normal(module.running_mean, 0.2)
      module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) * 1.5 + 0.5)
      module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
    elif isinstance(module, nn.Linear):
      normal(module.weight, module.in_features**-0.5)
      normal(module.bias, 0.1)
  for module in model.modules():
    if isinstance(module, NetVLAD):
      module.centroids.copy_(torch.rand(module.centroids.shape, generator=g))
      # Descriptors are unit vectors: this gives assignment logits of spread ~3, neither
      # uniform nor one-hot.
      normal(module.conv.weight, 3.0)
      normal(module.conv.bias, 0.5)
  return model


def save_release_style(model: nn.Module, path: str | os.PathLike, legacy: bool) -> None:
  """torch.save like the release: weights under `model_state_dict`, plus other entries."""
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
  torch.save(
    {"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
    path,
    _use_new_zipfile_serialization=not legacy,
  )


def load_release_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
  """Loads a release-style state dict (keys `audnet.*`) into `build_torch_model`'s model."""
  model.load_state_dict(state_dict)
  return model


def original_probs(model: nn.Module, clips: list[np.ndarray]) -> np.ndarray:
  """The original pipeline on int16 clips at 16 kHz: tile to 10 s, scale and clip to [-1, 1],
  scipy spectrogram, log, standardise, then `model` and a softmax. (N, C) float32."""
  specs = []
  for samples in clips:
    x = np.clip(np.tile(samples, 10)[:160000] / 32768.0, -1.0, 1.0)
    _, _, s = scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=353)
    s = np.log(s + 1e-7)
    specs.append((s - s.mean()) / (s.std() + 1e-9))
  with torch.no_grad():
    return torch.softmax(model(torch.from_numpy(np.stack(specs)[:, None]).float()), dim=1).numpy()
