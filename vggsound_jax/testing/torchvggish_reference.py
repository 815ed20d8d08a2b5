"""The `torchvggish` package (PyPI, 0.2) as a reference for VGGish: its PyTorch model and
Google's numpy front end it ships. For tests and benchmarks only.

It comes with the dev extra. Its `vggish_input` imports `resampy` (and so numba) at import
time, but resamples only audio that is not at 16 kHz, which these references never get: where
torchvggish was installed without its dependencies (`pip install --no-deps torchvggish==0.2`),
a placeholder module stands in for resampy and fails if it is ever called.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import torch

RESAMPY = "resampy"


def _resampy_placeholder() -> types.ModuleType:
  module = types.ModuleType(RESAMPY)

  def resample(*args: object, **kwargs: object) -> None:
    raise RuntimeError("resampy is not installed: the VGGish reference takes 16 kHz audio only")

  module.resample = resample
  return module


def import_torchvggish() -> types.ModuleType:
  """The `torchvggish` package; `torchvggish.vggish_input`, `torchvggish._vgg` etc. are in it."""
  if RESAMPY not in sys.modules and importlib.util.find_spec(RESAMPY) is None:
    sys.modules[RESAMPY] = _resampy_placeholder()
  return importlib.import_module("torchvggish")


def random_vggish(
  seed: int = 0, *, embedding_relu: bool = True, width: int = 64, fc_width: int = 4096
) -> torch.nn.Module:
  """torchvggish's VGGish (no post-processing) with random weights, in eval mode.

  `width` and `fc_width` other than VGGish's 64 and 4096 give a smaller network of the same
  layout: its `features` and `embeddings` are rebuilt with the same layers, scaled, while the
  forward pass (transposes, flatten) stays torchvggish's own. PyTorch's default init leaves
  activations tiny after six convolutions; each layer is re-drawn with a variance that keeps
  them of order one, so that a wrong layout shows.
  """
  torchvggish = import_torchvggish()
  torch.manual_seed(seed)
  model = torchvggish.torchvggish._vgg(postprocess=False)
  if (width, fc_width) != (64, 4096):
    layers, cin = [], 1
    for v in [1, "M", 2, "M", 4, 4, "M", 8, 8, "M"]:  # torchvggish.make_layers, in units of width
      if v == "M":
        layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [torch.nn.Conv2d(cin, v * width, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
        cin = v * width
    model.features = torch.nn.Sequential(*layers)
    model.embeddings = torch.nn.Sequential(
      torch.nn.Linear(cin * 4 * 6, fc_width),
      torch.nn.ReLU(True),
      torch.nn.Linear(fc_width, fc_width),
      torch.nn.ReLU(True),
      torch.nn.Linear(fc_width, 128),
      torch.nn.ReLU(True),
    )
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
        module.bias.normal_(0.0, 0.1)
  if not embedding_relu:
    model.embeddings[-1] = torch.nn.Identity()  # the post-2020 release: no ReLU on the embedding
  return model.eval()


def embed(model: torch.nn.Module, patches: np.ndarray) -> np.ndarray:
  """(N, 96, 64) log-mel patches -> (N, 128) embeddings, float32 numpy."""
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(patches, np.float32))[:, None]).numpy()
