"""The OpenVINO graph of a ResNet, front end included: int16 `audio` (N, num_samples) in,
`probabilities` (N, C) and `embeddings` (N, D) out, N dynamic, built op by op from the model's
parameters (eval mode, BatchNorm folded into the convolutions). Invariant: it computes what
`models.forward` computes (tests/test_export.py checks it within 1e-4); why it is built by hand
rather than traced out of JAX: docs/performance.md, attempt 9.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vggsound_jax.audio import spectrogram as sp
from vggsound_jax.models.netvlad import NORM_EPS
from vggsound_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from vggsound_jax.serving.exported import UnsupportedExportError, import_openvino


def _np(x: Any) -> np.ndarray:
  return np.asarray(x[...] if hasattr(x, "__getitem__") and not isinstance(x, np.ndarray) else x, np.float64)


def _const(x: np.ndarray, dtype: Any = np.float32) -> Any:
  import openvino.opset13 as ops  # noqa: PLC0415

  return ops.constant(np.ascontiguousarray(np.asarray(x, dtype)))


def _conv_bn(x: Any, conv: Any, bn: Any, stride: int, padding: int) -> Any:
  """A bias-free conv and the eval-mode BatchNorm after it, folded into one conv (NCHW)."""
  import openvino.opset13 as ops  # noqa: PLC0415

  kernel = _np(conv.kernel).transpose(3, 2, 0, 1)  # HWIO -> OIHW
  scale = _np(bn.scale) / np.sqrt(_np(bn.var) + bn.epsilon)
  bias = _np(bn.bias) - _np(bn.mean) * scale
  y = ops.convolution(
    x, _const(kernel * scale[:, None, None, None]), [stride] * 2, [padding] * 2, [padding] * 2, [1, 1]
  )
  return ops.add(y, _const(bias.reshape(1, -1, 1, 1)))


def _stride(conv: Any) -> int:
  strides = conv.strides
  return strides if isinstance(strides, int) else strides[0]


def _block(x: Any, block: Any) -> Any:
  import openvino.opset13 as ops  # noqa: PLC0415

  if isinstance(block, Bottleneck):  # the stride is on the 3x3 conv
    stride = _stride(block.conv2)
    y = ops.relu(_conv_bn(x, block.conv1, block.bn1, 1, 0))
    y = ops.relu(_conv_bn(y, block.conv2, block.bn2, stride, 1))
    y = _conv_bn(y, block.conv3, block.bn3, 1, 0)
  elif isinstance(block, BasicBlock):
    stride = _stride(block.conv1)
    y = ops.relu(_conv_bn(x, block.conv1, block.bn1, stride, 1))
    y = _conv_bn(y, block.conv2, block.bn2, 1, 1)
  else:
    raise UnsupportedExportError(type(block).__name__, "a block the exporter has no graph for")
  shortcut = x if block.downsample is None else _conv_bn(x, block.downsample.conv, block.downsample.bn, stride, 0)
  return ops.relu(ops.add(y, shortcut))


def _l2_normalize(x: Any, axis: int) -> Any:
  import openvino.opset13 as ops  # noqa: PLC0415

  norm = ops.sqrt(ops.reduce_sum(ops.multiply(x, x), _const([axis], np.int64), keep_dims=True))
  return ops.divide(x, ops.maximum(norm, _const(NORM_EPS)))


def _netvlad(x: Any, netvlad: Any) -> Any:
  """NetVLAD on NCHW features, as models/netvlad.py computes it on NHWC."""
  import openvino.opset13 as ops  # noqa: PLC0415

  centroids = _np(netvlad.centroids)  # (K, D)
  k, d = centroids.shape
  x = _l2_normalize(x, axis=1)
  kernel = _np(netvlad.conv.kernel).transpose(3, 2, 0, 1)
  logits = ops.add(
    ops.convolution(x, _const(kernel), [1, 1], [0, 0], [0, 0], [1, 1]),
    _const(_np(netvlad.conv.bias).reshape(1, -1, 1, 1)),
  )
  assignment = ops.reshape(ops.softmax(logits, 1), _const([0, k, -1], np.int64), special_zero=True)  # (N, K, P)
  x = ops.reshape(x, _const([0, d, -1], np.int64), special_zero=True)  # (N, D, P)
  vlad = ops.matmul(assignment, x, transpose_a=False, transpose_b=True)  # (N, K, D)
  mass = ops.reduce_sum(assignment, _const([2], np.int64), keep_dims=True)  # (N, K, 1)
  vlad = ops.subtract(vlad, ops.multiply(mass, _const(centroids[None])))
  vlad = _l2_normalize(vlad, axis=2)
  return _l2_normalize(ops.reshape(vlad, _const([0, k * d], np.int64), special_zero=True), axis=1)


def _log1p(y: Any) -> Any:
  """log(1 + y) without losing the y far below 1 (OpenVINO has no Log1p): Goldberg's
  log(u) * y / (u - 1) with u = 1 + y, exact where u rounds to 1."""
  import openvino.opset13 as ops  # noqa: PLC0415

  one = _const(1.0)
  u = ops.add(y, one)
  denominator = ops.subtract(u, one)
  is_one = ops.equal(denominator, _const(0.0))
  safe = ops.select(is_one, one, denominator)
  return ops.select(is_one, y, ops.divide(ops.multiply(ops.log(u), y), safe))


def _frontend(audio: Any, num_samples: int) -> Any:
  """int16 (N, T) -> (N, 1, 257, F) standardised log-spectrogram: spectrogram.py's arithmetic."""
  import openvino.opset13 as ops  # noqa: PLC0415

  starts = np.arange(sp.num_frames(num_samples)) * sp.HOP
  x = ops.convert(audio, "f32")
  frames = ops.gather(x, _const(starts[:, None] + np.arange(sp.NPERSEG), np.int32), _const(1, np.int64))
  # In int16 units a frame's sum is an integer below 2^24 and 512 a power of two: the mean and
  # the detrended samples are exact in float32, in any order of summation.
  frames = ops.subtract(frames, ops.reduce_mean(frames, _const([2], np.int64), keep_dims=True))
  spectrum = ops.rdft(ops.multiply(frames, _const(sp.WINDOW)), _const([2], np.int64))  # (N, F, 257, 2)
  power = ops.reduce_sum(ops.multiply(spectrum, spectrum), _const([3], np.int64))
  log_power = _log1p(ops.multiply(power, _const(sp.POWER_TO_LOG_SCALE)))  # (N, F, 257)
  log_power = ops.unsqueeze(ops.transpose(log_power, _const([0, 2, 1], np.int64)), _const([1], np.int64))
  axes = _const([2, 3], np.int64)
  mean = ops.reduce_mean(log_power, axes, keep_dims=True)
  centred = ops.subtract(log_power, mean)
  std = ops.sqrt(ops.reduce_mean(ops.multiply(centred, centred), axes, keep_dims=True))
  return ops.divide(centred, ops.add(std, _const(sp.STD_EPS)))


def build_graph(model: Any, num_samples: int) -> Any:
  """The OpenVINO graph of a ResNet (eval mode) with its front end: int16 `audio` (N, num_samples)
  -> `probabilities` (N, C), `embeddings` (N, D), both float32; N is left dynamic."""
  if not isinstance(model, ResNet):
    raise UnsupportedExportError(type(model).__name__, "a model the exporter has no graph for (only ResNets)")
  ov = import_openvino()
  import openvino.opset13 as ops  # noqa: PLC0415

  config = model.config
  audio = ops.parameter([-1, num_samples], np.int16, name="audio")
  x = _frontend(audio, num_samples)
  x = ops.relu(_conv_bn(x, model.conv1, model.bn1, 2, 3))
  # OpenVINO's MaxPool ignores the padding, as PyTorch's and the -inf padding of models/resnet.py.
  x = ops.max_pool(x, [2, 2], [1, 1], [1, 1], [1, 1], [3, 3]).output(0)
  for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
    for block in stage:
      x = _block(x, block)
  if config.head == "vlad":
    embedding = _netvlad(x, model.netvlad)
  else:
    embedding = ops.reduce_mean(x, _const([2, 3], np.int64))
  logits = ops.add(ops.matmul(embedding, _const(_np(model.fc.kernel)), False, False), _const(_np(model.fc.bias)))
  probs = ops.sigmoid(logits) if config.output == "sigmoid" else ops.softmax(logits, 1)
  probs.output(0).get_tensor().set_names({"probabilities"})
  embedding.output(0).get_tensor().set_names({"embeddings"})
  return ov.Model([probs.output(0), embedding.output(0)], [audio], "vggsound")
