"""Exporting a model directory to an OpenVINO graph, for fast CPU inference (`vggsound_jax.serving.backends`).

  vggsound-export --checkpoint models/H --output models/H.openvino [--precision bf16]

The graph is built operation by operation from the model's parameters with OpenVINO's own
graph API, int16 waveforms (N, num_samples) in, (probabilities, embeddings) out, front end
included. It is not traced out of JAX: OpenVINO's JAX front end (2026.4) fails on jax 0.10's
jaxprs and converts no rfft, cumsum or gather, and jax2tf now always emits one XlaCallModule op,
which OpenVINO cannot convert (docs/performance.md, "The CPU backend"). Building it here needs
no TensorFlow. JAX stays the reference: tests/test_export.py checks the graph against
`models.forward`.

An exported directory holds the graph (`model.xml`, `model.bin`, fp32 weights), `export.json`
(class names, model config, precision, num_samples, the source model's manifest hash, versions)
and a `SHA256SUMS` manifest, and is written like a model directory (model_dir.py): into a
scratch sibling renamed into place, replacing on `overwrite` only a directory this project
exported. Running it needs only openvino and numpy. The precision (fp32 or bf16) is a hint
applied when the runtime compiles the graph: the file is the same either way.
ResNets only: a VGGish model raises UnsupportedExportError (the runtime then uses JAX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from vggsound_jax import manifest
from vggsound_jax.audio.decode import CLIP_SAMPLES
from vggsound_jax.errors import PathError

EXPORT_FORMAT = "vggsound_jax.export/1"
FORMAT_FAMILY = "vggsound_jax.export/"
GRAPH_FILE = "model.xml"  # and its weights, model.bin
WEIGHTS_FILE = "model.bin"
METADATA_FILE = "export.json"
MANIFEST = manifest.MANIFEST
PRECISIONS = ("fp32", "bf16")
# The model config's compute dtype each precision stands for (load_model's `dtype`).
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# OpenVINO's INFERENCE_PRECISION_HINT for each precision.
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
SAVING_SUFFIX = ".saving"
REPLACED_SUFFIX = ".replaced"


# openvino-telemetry declines in CI jobs, recognised by this variable (see import_openvino).
_TELEMETRY_OFF_ENV = ("CI", "true")


_IMPORT_LOCK = threading.Lock()


def import_openvino() -> Any:
  """The openvino module, imported with its usage telemetry off.

  Importing openvino otherwise sends an event to Google Analytics (openvino-telemetry, on unless
  the user ran `opt_in_out --opt_out`) from a forked process: a network call nobody asked for,
  and a fork of a process that may run JAX (which warns of deadlocks). The telemetry decides
  once, on import, and declines in CI jobs: hence the variable, set for the import only.
  """
  # Under a lock: a thread must not take the module from sys.modules while another is still
  # importing it (half initialised), nor see the environment variable come and go.
  with _IMPORT_LOCK:
    if "openvino" in sys.modules:
      return sys.modules["openvino"]
    name, value = _TELEMETRY_OFF_ENV
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
      import openvino  # noqa: PLC0415

      return openvino
    finally:
      if saved is None:
        del os.environ[name]
      else:
        os.environ[name] = saved


class ExportError(PathError):
  """A directory that is not a (readable) exported model, or cannot be written."""


class UnsupportedExportError(ExportError):
  """A model the exporter has no graph for (VGGish)."""


def precision_of_dtype(dtype: str) -> str:
  """'float32' -> 'fp32', 'bfloat16' -> 'bf16'."""
  for precision, name in PRECISION_DTYPES.items():
    if name == dtype:
      return precision
  raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(PRECISION_DTYPES.values())}")


def model_hash(model_directory: str | os.PathLike) -> str:
  """The sha256 of a model directory's SHA256SUMS: one name for its exact content, read without
  hashing the arrays. (An earlier-format directory without a manifest is hashed file by file.)"""
  directory = Path(model_directory)
  try:
    return hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()
  except FileNotFoundError:
    if not directory.is_dir():
      raise ExportError(directory, "no such model directory") from None
    return hashlib.sha256("".join(manifest.manifest_lines(directory)).encode()).hexdigest()


def read_metadata(directory: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
  """The export.json of an exported directory, after checking every file against its manifest."""
  directory = Path(directory).absolute()
  path = directory / METADATA_FILE
  try:
    metadata = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise ExportError(directory, f"not an exported model (no {METADATA_FILE}; make one with vggsound-export)") from None
  except (OSError, ValueError) as e:
    raise ExportError(path, f"unreadable ({type(e).__name__}: {e})") from None
  if not isinstance(metadata, dict) or not str(metadata.get("format", "")).startswith(FORMAT_FAMILY):
    raise ExportError(path, f"not an exported model (format {metadata.get('format')!r}, expected {EXPORT_FORMAT!r})")
  if metadata["format"] != EXPORT_FORMAT:
    raise ExportError(path, f"format {metadata['format']!r} of another version (export it again)")
  if verify:
    verify_manifest(directory)
  return metadata


def verify_manifest(directory: Path) -> None:
  """Raises ExportError naming the first file that differs from SHA256SUMS (or is missing or extra)."""
  manifest.verify(directory, ExportError, "exported model")


def _is_export(directory: Path) -> bool:
  try:
    read_metadata(directory, verify=False)
  except ExportError:
    return False
  # Without its manifest, which of its files are ours cannot be known: it is not replaced.
  return (directory / MANIFEST).is_file()


def check_target(directory: str | os.PathLike, *, overwrite: bool) -> Path:
  """Raises ExportError unless an export may write `directory` (manifest.check_target). Returns
  the absolute path."""
  return manifest.check_target(
    directory, overwrite=overwrite, error=ExportError, what="exported model", ours=_is_export
  )


def _sibling(directory: Path, suffix: str) -> Path:
  """A scratch name beside `directory`, unique so that concurrent writers never share one."""
  return directory.with_name(f".{directory.name}{suffix}.{uuid.uuid4().hex[:12]}")


def _place_in_cache(saving: Path, directory: Path) -> None:
  """Like manifest.place, for a cache entry that concurrent runs may write at once: a complete entry
  already there (another run's, of the same content) stays, and is never removed while another
  run may be reading it; a damaged one is replaced."""
  if directory.exists():
    try:
      read_metadata(directory)
      return
    except ExportError:
      trash = _sibling(directory, REPLACED_SUFFIX)
      with contextlib.suppress(OSError):  # another run moved it first
        os.rename(directory, trash)
      shutil.rmtree(trash, ignore_errors=True)
  try:
    os.rename(saving, directory)
  except OSError:
    if not (directory / METADATA_FILE).is_file():
      raise
  manifest.fsync_directory(directory.parent)


def write_export(
  model: Any,
  metadata: dict[str, Any],
  output: str | os.PathLike,
  *,
  precision: str = "fp32",
  num_samples: int = CLIP_SAMPLES,
  overwrite: bool = False,
  cache: bool = False,
) -> dict[str, Any]:
  """Exports a loaded model (`model_dir.load_model`) with its model-directory `metadata` (plus
  `source_model_hash`) to `output`. Returns the export's metadata.

  With `cache`, `output` is a cache entry the caller found missing or damaged: what is there is
  removed, and if a concurrent writer puts its (identical) export in place first, that one stays.
  """
  ov = import_openvino()
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
  output = Path(os.path.abspath(output)) if cache else check_target(output, overwrite=overwrite)
  graph = build_graph(model, num_samples)
  config = dict(metadata["model_config"])
  exported = {
    "format": EXPORT_FORMAT,
    "class_names": list(metadata["class_names"]),
    "model_config": config,
    "precision": precision,
    "num_samples": int(num_samples),
    "embedding_dim": int(model.config.embedding_dim),
    "source_model_hash": metadata.get("source_model_hash"),
    "source": metadata.get("source", {}),
    "versions": _versions(ov.__version__),
  }
  try:
    output.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ExportError(output.parent, f"cannot create the directory ({e.strerror or e})") from None
  saving = _sibling(output, SAVING_SUFFIX)
  try:
    saving.mkdir()
    ov.save_model(graph, saving / GRAPH_FILE, compress_to_fp16=False)
    (saving / METADATA_FILE).write_text(json.dumps(exported, indent=1) + "\n", encoding="utf-8")
    manifest.write_manifest(saving)
    if cache:
      _place_in_cache(saving, output)
    else:
      manifest.place(saving, output, _sibling(output, REPLACED_SUFFIX))
  except OSError as e:
    raise ExportError(output, f"cannot write the exported model ({e.strerror or e})") from None
  finally:
    shutil.rmtree(saving, ignore_errors=True)
  return exported


def _versions(openvino_version: str) -> dict[str, str]:
  from importlib.metadata import version  # noqa: PLC0415

  return {"vggsound_jax": version("vggsound-jax"), "openvino": openvino_version, "python": platform.python_version()}


def export_model(
  checkpoint: str | os.PathLike,
  output: str | os.PathLike,
  *,
  precision: str = "fp32",
  num_samples: int = CLIP_SAMPLES,
  overwrite: bool = False,
) -> dict[str, Any]:
  """Exports the model directory `checkpoint` (converted or trained) to `output` for clips of
  `num_samples` samples. Returns the export's metadata (export.json)."""
  import importlib.util  # noqa: PLC0415

  from vggsound_jax.model_dir import load_model  # noqa: PLC0415 - jax, only here

  if importlib.util.find_spec("openvino") is None:
    raise ExportError(output, "exporting needs openvino (pip install openvino)")
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
  check_num_samples(num_samples)
  output = check_target(output, overwrite=overwrite)
  model, metadata = load_model(checkpoint)
  if model.config.arch != "resnet":
    raise UnsupportedExportError(checkpoint, f"a {model.config.arch} model: only ResNets can be exported")
  metadata = dict(metadata, source_model_hash=model_hash(checkpoint))
  return write_export(model, metadata, output, precision=precision, num_samples=num_samples, overwrite=overwrite)


def check_num_samples(num_samples: int) -> None:
  from vggsound_jax.audio.spectrogram import NPERSEG  # noqa: PLC0415

  # The stem and four stride-2 stages need at least one output frame.
  if num_samples < NPERSEG:
    raise ValueError(f"--num_samples {num_samples}: clips must hold at least {NPERSEG} samples")


# --- The graph ------------------------------------------------------------------------------


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


def _block(x: Any, block: Any) -> Any:
  import openvino.opset13 as ops  # noqa: PLC0415

  strides = (block.conv2 if hasattr(block, "conv3") else block.conv1).strides
  stride = strides if isinstance(strides, int) else strides[0]
  if hasattr(block, "conv3"):  # Bottleneck: the stride is on the 3x3 conv
    y = ops.relu(_conv_bn(x, block.conv1, block.bn1, 1, 0))
    y = ops.relu(_conv_bn(y, block.conv2, block.bn2, stride, 1))
    y = _conv_bn(y, block.conv3, block.bn3, 1, 0)
  else:
    y = ops.relu(_conv_bn(x, block.conv1, block.bn1, stride, 1))
    y = _conv_bn(y, block.conv2, block.bn2, 1, 1)
  shortcut = x if block.downsample is None else _conv_bn(x, block.downsample.conv, block.downsample.bn, stride, 0)
  return ops.relu(ops.add(y, shortcut))


def _l2_normalize(x: Any, axis: int) -> Any:
  import openvino.opset13 as ops  # noqa: PLC0415

  from vggsound_jax.models.netvlad import NORM_EPS  # noqa: PLC0415

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

  from vggsound_jax.audio import spectrogram as sp  # noqa: PLC0415

  starts = np.arange(sp.num_frames(num_samples)) * sp.HOP
  x = ops.convert(audio, "f32")
  frames = ops.gather(x, _const(starts[:, None] + np.arange(sp.NPERSEG), np.int32), _const(1, np.int64))
  # In int16 units a frame's sum is an integer below 2^24 and 512 a power of two: the mean and
  # the detrended samples are exact in float32, in any order of summation.
  frames = ops.subtract(frames, ops.reduce_mean(frames, _const([2], np.int64), keep_dims=True))
  spectrum = ops.rdft(ops.multiply(frames, _const(sp.WINDOW)), _const([2], np.int64))  # (N, F, 257, 2)
  power = ops.reduce_sum(ops.multiply(spectrum, spectrum), _const([3], np.int64))
  log_power = _log1p(ops.multiply(power, _const(sp._POWER_TO_LOG_SCALE)))  # (N, F, 257)
  log_power = ops.unsqueeze(ops.transpose(log_power, _const([0, 2, 1], np.int64)), _const([1], np.int64))
  axes = _const([2, 3], np.int64)
  mean = ops.reduce_mean(log_power, axes, keep_dims=True)
  centred = ops.subtract(log_power, mean)
  std = ops.sqrt(ops.reduce_mean(ops.multiply(centred, centred), axes, keep_dims=True))
  return ops.divide(centred, ops.add(std, _const(sp.STD_EPS)))


def build_graph(model: Any, num_samples: int) -> Any:
  """The OpenVINO graph of a ResNet (eval mode) with its front end: int16 `audio` (N, num_samples)
  -> `probabilities` (N, C), `embeddings` (N, D), both float32; N is left dynamic."""
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
