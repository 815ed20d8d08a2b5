"""The ONNX graph of a ResNet, front end included: int16 `audio` (batch, num_samples) in,
`probabilities` (batch, C) and `embeddings` (batch, D) out, batch dynamic, built node by node
from the model's parameters (eval mode, BatchNorm folded into the convolutions) with the `onnx`
package. ONNX Runtime and OpenVINO both run this one graph. Invariant: it computes what
`models.forward` computes (tests/test_export.py checks it within 1e-4); why it is written by hand
rather than traced out of JAX: docs/performance.md, attempt 9.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vggsound_jax.audio import stft as sp
from vggsound_jax.models.netvlad import NORM_EPS
from vggsound_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from vggsound_jax.serving.exported import UnsupportedExportError

# Opset 18: DFT (since 17), and every reduction takes its axes as an input. (OpenVINO 2026.4 reads
# ReduceSumSquare's keepdims=0 as 1, so sums of squares are Mul + ReduceSum.)
OPSET = 18
INPUT_NAME = "audio"
OUTPUT_NAMES = ("probabilities", "embeddings")
BATCH_DIM = "batch"
# The stem's max-pool: 3x3, stride 2, padding 1 (ONNX pads with -inf, as PyTorch and models/resnet.py).
MAX_POOL = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}


class _Builder:
  """Nodes and initializers of one graph; every value gets a fresh name."""

  def __init__(self) -> None:
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []
    self._count = 0

  def _name(self, prefix: str) -> str:
    self._count += 1
    return f"{prefix}_{self._count}"

  def const(self, value: Any, dtype: Any = np.float32) -> str:
    name = self._name("const")
    self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype)), name))
    return name

  def ints(self, values: list[int]) -> str:
    return self.const(values, np.int64)

  def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes: Any) -> str:
    output = output or self._name(op_type.lower())
    self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
    return output


def _np(x: Any) -> np.ndarray:
  """A parameter (nnx.Param or array) as float64: folding happens in double, stored as float32."""
  return np.asarray(x[...] if hasattr(x, "__getitem__") and not isinstance(x, np.ndarray) else x, np.float64)


def _stride(conv: Any) -> int:
  strides = conv.strides
  return strides if isinstance(strides, int) else strides[0]


def _conv_bn(g: _Builder, x: str, conv: Any, bn: Any, stride: int, padding: int) -> str:
  """A bias-free conv and the eval-mode BatchNorm after it, folded into one conv (NCHW)."""
  kernel = _np(conv.kernel).transpose(3, 2, 0, 1)  # HWIO -> OIHW
  scale = _np(bn.scale) / np.sqrt(_np(bn.var) + bn.epsilon)
  bias = _np(bn.bias) - _np(bn.mean) * scale
  return g.op(
    "Conv",
    x,
    g.const(kernel * scale[:, None, None, None]),
    g.const(bias),
    strides=[stride, stride],
    pads=[padding] * 4,
  )


def _block(g: _Builder, x: str, block: Any) -> str:
  if isinstance(block, Bottleneck):  # the stride is on the 3x3 conv
    stride = _stride(block.conv2)
    y = g.op("Relu", _conv_bn(g, x, block.conv1, block.bn1, 1, 0))
    y = g.op("Relu", _conv_bn(g, y, block.conv2, block.bn2, stride, 1))
    y = _conv_bn(g, y, block.conv3, block.bn3, 1, 0)
  elif isinstance(block, BasicBlock):
    stride = _stride(block.conv1)
    y = g.op("Relu", _conv_bn(g, x, block.conv1, block.bn1, stride, 1))
    y = _conv_bn(g, y, block.conv2, block.bn2, 1, 1)
  else:
    raise UnsupportedExportError(type(block).__name__, "a block the exporter has no graph for")
  shortcut = x if block.downsample is None else _conv_bn(g, x, block.downsample.conv, block.downsample.bn, stride, 0)
  return g.op("Relu", g.op("Add", y, shortcut))


def _l2_normalize(g: _Builder, x: str, axis: int) -> str:
  norm = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", x, x), g.ints([axis]), keepdims=1))
  return g.op("Div", x, g.op("Max", norm, g.const(NORM_EPS)))


def _netvlad(g: _Builder, x: str, netvlad: Any) -> str:
  """NetVLAD on NCHW features, as models/netvlad.py computes it on NHWC."""
  centroids = _np(netvlad.centroids)  # (K, D)
  k, d = centroids.shape
  x = _l2_normalize(g, x, axis=1)
  kernel = _np(netvlad.conv.kernel).transpose(3, 2, 0, 1)
  logits = g.op("Conv", x, g.const(kernel), g.const(_np(netvlad.conv.bias)))
  assignment = g.op("Reshape", g.op("Softmax", logits, axis=1), g.ints([0, k, -1]))  # (N, K, P)
  x = g.op("Reshape", x, g.ints([0, d, -1]))  # (N, D, P)
  vlad = g.op("MatMul", assignment, g.op("Transpose", x, perm=[0, 2, 1]))  # (N, K, D)
  mass = g.op("ReduceSum", assignment, g.ints([2]), keepdims=1)  # (N, K, 1)
  vlad = g.op("Sub", vlad, g.op("Mul", mass, g.const(centroids[None])))
  vlad = _l2_normalize(g, vlad, axis=2)
  return _l2_normalize(g, g.op("Reshape", vlad, g.ints([0, k * d])), axis=1)


def _log1p(g: _Builder, y: str) -> str:
  """log(1 + y) without losing the y far below 1 (ONNX has no Log1p): Goldberg's
  log(u) * y / (u - 1) with u = 1 + y, exact where u rounds to 1."""
  one = g.const(1.0)
  u = g.op("Add", y, one)
  denominator = g.op("Sub", u, one)
  is_one = g.op("Equal", denominator, g.const(0.0))
  safe = g.op("Where", is_one, one, denominator)
  return g.op("Where", is_one, y, g.op("Div", g.op("Mul", g.op("Log", u), y), safe))


def _frontend(g: _Builder, audio: str, num_samples: int) -> str:
  """int16 (N, T) -> (N, 1, 257, F) standardised log-spectrogram: spectrogram.py's arithmetic."""
  starts = np.arange(sp.num_frames(num_samples)) * sp.HOP
  x = g.op("Cast", audio, to=TensorProto.FLOAT)
  frames = g.op("Gather", x, g.const(starts[:, None] + np.arange(sp.NPERSEG), np.int64), axis=1)  # (N, F, 512)
  # In int16 units a frame's sum is an integer below 2^24 and 512 a power of two: the mean and
  # the detrended samples are exact in float32, in any order of summation.
  frames = g.op("Sub", frames, g.op("ReduceMean", frames, g.ints([2]), keepdims=1))
  frames = g.op("Unsqueeze", g.op("Mul", frames, g.const(sp.WINDOW)), g.ints([3]))  # real signal: (N, F, 512, 1)
  spectrum = g.op("DFT", frames, axis=2, onesided=1)  # (N, F, 257, 2)
  # Summed over the last axis and reshaped: OpenVINO 2026.4 reads the DFT of an (..., 512, 1)
  # real signal as (..., 257, 1, 2), ONNX Runtime (and the standard) as (..., 257, 2).
  power = g.op("ReduceSum", g.op("Mul", spectrum, spectrum), g.ints([-1]), keepdims=0)
  power = g.op("Reshape", power, g.ints([0, len(starts), sp.NUM_FREQ_BINS]))
  log_power = _log1p(g, g.op("Mul", power, g.const(sp.POWER_TO_LOG_SCALE)))  # (N, F, 257)
  log_power = g.op("Unsqueeze", g.op("Transpose", log_power, perm=[0, 2, 1]), g.ints([1]))
  mean = g.op("ReduceMean", log_power, g.ints([2, 3]), keepdims=1)
  centred = g.op("Sub", log_power, mean)
  std = g.op("Sqrt", g.op("ReduceMean", g.op("Mul", centred, centred), g.ints([2, 3]), keepdims=1))
  return g.op("Div", centred, g.op("Add", std, g.const(sp.STD_EPS)))


def build_graph(model: Any, num_samples: int, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
  """The checked ONNX model of a ResNet (eval mode) with its front end for clips of
  `num_samples` samples; `metadata` goes into its metadata_props."""
  if not isinstance(model, ResNet):
    raise UnsupportedExportError(type(model).__name__, "a model the exporter has no graph for (only ResNets)")
  config = model.config
  g = _Builder()
  x = _frontend(g, INPUT_NAME, num_samples)
  x = g.op("Relu", _conv_bn(g, x, model.conv1, model.bn1, 2, 3))
  x = g.op("MaxPool", x, **MAX_POOL)
  for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
    for block in stage:
      x = _block(g, x, block)
  probabilities, embeddings = OUTPUT_NAMES
  if config.head == "vlad":
    pooled = _netvlad(g, x, model.netvlad)
  else:
    pooled = g.op("ReduceMean", x, g.ints([2, 3]), keepdims=0)
  g.op("Identity", pooled, output=embeddings)
  logits = g.op("Add", g.op("MatMul", pooled, g.const(_np(model.fc.kernel))), g.const(_np(model.fc.bias)))
  g.op(
    "Sigmoid" if config.output == "sigmoid" else "Softmax",
    logits,
    output=probabilities,
    **({} if config.output == "sigmoid" else {"axis": 1}),
  )
  graph = helper.make_graph(
    g.nodes,
    "vggsound",
    [helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT16, [BATCH_DIM, num_samples])],
    [
      helper.make_tensor_value_info(probabilities, TensorProto.FLOAT, [BATCH_DIM, config.num_classes]),
      helper.make_tensor_value_info(embeddings, TensorProto.FLOAT, [BATCH_DIM, config.embedding_dim]),
    ],
    g.initializers,
  )
  onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vggsound_jax")
  onnx_model.ir_version = 8  # opset 18's; older runtimes refuse newer IR versions
  helper.set_model_props(onnx_model, dict(metadata or {}))
  onnx.checker.check_model(onnx_model, full_check=True)
  return onnx_model
