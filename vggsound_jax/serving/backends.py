"""One way to load a classifier, whichever backend runs it: JAX or an exported OpenVINO graph.

  classifier, metadata = load_classifier("models/H")              # auto: the fastest here
  probs, embeddings = classifier(int16_clips)                      # (n, num_samples), n <= batch_size

`path` is a model directory (vggsound-convert, training) or an exported one (vggsound-export).
With backend='auto', a model directory on a CPU-only machine with openvino installed is
exported once into a cache (`export_cache_dir()`, keyed by the model's manifest hash, clip
length, precision and versions) and run by OpenVINO, which is faster there than XLA:CPU
(docs/performance.md#cpu-backend); on a GPU or TPU, or for a model the exporter cannot
handle (VGGish), JAX runs it. Loading and running an exported directory imports neither jax
nor tensorflow.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vggsound_jax.audio.decode import CLIP_SAMPLES
from vggsound_jax.errors import UserError
from vggsound_jax.serving import exported

BACKENDS = ("auto", "jax", "openvino")
# Environment variables: the JAX compilation cache's (compilation_cache.enable_compilation_cache), whose
# `exported` subdirectory then holds the exports too, and JAX's choice of platforms.
CACHE_ENV = "VGGSOUND_JAX_CACHE"
JAX_PLATFORMS_ENV = "JAX_PLATFORMS"
EXPORT_CACHE_SUBDIR = "exported"
# Distributions that give JAX a GPU or TPU: with none installed, JAX runs on the CPU (found
# without importing jax, which costs a second).
ACCELERATOR_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin", "jax-rocm7-plugin", "libtpu")


class BackendError(UserError, ValueError):
  """A backend that cannot run here or cannot run this model."""


class NotExportableError(BackendError):
  """A model the exporter has no graph for (VGGish); holds the model, loaded to find that out."""

  def __init__(self, message: str, model: Any, metadata: dict[str, Any]) -> None:
    super().__init__(message)
    self.model = model
    self.metadata = metadata


def export_cache_dir() -> Path:
  """Where backend='auto' keeps its exports: `$VGGSOUND_JAX_CACHE/exported`, or
  `~/.cache/vggsound_jax/exported` (under XDG_CACHE_HOME if set)."""
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV]) / EXPORT_CACHE_SUBDIR
  return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vggsound_jax" / EXPORT_CACHE_SUBDIR


def openvino_version() -> str | None:
  """The installed openvino's version, or None (without importing it)."""
  if importlib.util.find_spec("openvino") is None:
    return None
  try:
    return importlib.metadata.version("openvino")
  except importlib.metadata.PackageNotFoundError:
    return None


def jax_on_cpu_only() -> bool:
  """Whether JAX would run on the CPU, decided without importing jax where possible."""
  platforms = os.environ.get(JAX_PLATFORMS_ENV, "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if "jax" not in sys.modules:
    installed = set()
    for name in ACCELERATOR_PLUGINS:
      try:
        importlib.metadata.version(name)
        installed.add(name)
      except importlib.metadata.PackageNotFoundError:
        pass
    if not installed:
      return True
  import jax  # noqa: PLC0415

  return jax.default_backend() == "cpu"


def _check_batch(audio: np.ndarray, batch_size: int, num_samples: int) -> None:
  if audio.ndim != 2 or audio.shape[1] != num_samples:
    raise ValueError(f"clips of shape {audio.shape}: expected (n, {num_samples})")
  if audio.shape[0] > batch_size:
    raise ValueError(f"batch of {audio.shape[0]} clips exceeds batch_size {batch_size}")


class OpenVINOClassifier:
  """An exported graph compiled for the CPU at a fixed batch size (batches are padded to it)."""

  backend = "openvino"

  def __init__(self, directory: Path, metadata: dict[str, Any], *, batch_size: int, precision: str) -> None:
    ov = exported.import_openvino()
    self.batch_size = batch_size
    self.num_samples = int(metadata["num_samples"])
    self.embedding_dim = int(metadata["embedding_dim"])
    self.precision = precision
    core = ov.Core()
    model = core.read_model(directory / exported.GRAPH_FILE)
    # A static shape: OpenVINO plans memory and picks kernels once for it.
    model.reshape({0: [batch_size, self.num_samples]})
    compiled = core.compile_model(
      model,
      "CPU",
      {"INFERENCE_PRECISION_HINT": exported.OPENVINO_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"},
    )
    self._request = compiled.create_infer_request()
    self._padded = np.zeros((batch_size, self.num_samples), np.int16)

  def __call__(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, num_samples) int16 with n <= batch_size -> (probs (n, C), embeddings (n, D)), float32."""
    audio = np.asarray(audio)
    _check_batch(audio, self.batch_size, self.num_samples)
    n = audio.shape[0]
    self._padded[:n] = audio
    self._padded[n:] = 0
    outputs = self._request.infer([self._padded])
    return np.array(outputs[0][:n], np.float32), np.array(outputs[1][:n], np.float32)


class JaxClassifier:
  """`inference.Classifier` with the attributes every backend has."""

  backend = "jax"

  def __init__(self, model: Any, *, batch_size: int, num_samples: int) -> None:
    from vggsound_jax.serving.inference import Classifier  # noqa: PLC0415

    self.batch_size = batch_size
    self.num_samples = num_samples
    self.embedding_dim = int(model.config.embedding_dim)
    self.precision = exported.precision_of_dtype(model.config.dtype)
    self._classifier = Classifier(model, batch_size)

  def __call__(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, num_samples) int16 with n <= batch_size -> (probs (n, C), embeddings (n, D)), float32."""
    audio = np.asarray(audio)
    _check_batch(audio, self.batch_size, self.num_samples)
    probs, embeddings = self._classifier(audio)
    return probs.astype(np.float32, copy=False), embeddings.astype(np.float32, copy=False)


def is_exported(path: str | os.PathLike) -> bool:
  return (Path(path) / exported.METADATA_FILE).is_file()


def load_classifier(
  path: str | os.PathLike,
  *,
  backend: str = "auto",
  batch_size: int = 8,
  num_samples: int = CLIP_SAMPLES,
  dtype: str | None = None,
) -> tuple[OpenVINOClassifier | JaxClassifier, dict[str, Any]]:
  """A classifier of int16 clips (n, num_samples), n <= batch_size, and the model's metadata
  (`class_names`, `model_config`, ...).

  Args:
    path: a model directory or an exported directory.
    backend: 'auto' (see the module doc), 'jax' (model directories only) or 'openvino'.
    batch_size: clips per call; smaller batches are padded.
    num_samples: samples per clip; an exported directory must have been exported for it.
    dtype: compute dtype, 'float32' or 'bfloat16'; default: the model's (or the export's).

  Raises BackendError for a backend that is not installed or cannot run the model, and the
  loaders' PathErrors (ModelCheckpointError, ExportError) for a bad directory; all one line.
  """
  if backend not in BACKENDS:
    raise BackendError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
  if batch_size < 1:
    raise ValueError(f"batch_size {batch_size}: at least 1")
  precision = None if dtype is None else exported.precision_of_dtype(dtype)
  path = Path(path).absolute()
  if is_exported(path):
    if backend == "jax":
      raise BackendError(f"{path}: an exported model runs on openvino only (give the model directory for jax)")
    _require_openvino()
    return _load_exported(path, batch_size=batch_size, num_samples=num_samples, precision=precision)
  if backend == "jax":
    return _load_jax(path, batch_size=batch_size, num_samples=num_samples, dtype=dtype)
  if backend == "openvino":
    _require_openvino()
    return _load_cached_export(path, batch_size=batch_size, num_samples=num_samples, precision=precision)
  # auto
  if openvino_version() is None or not jax_on_cpu_only():
    return _load_jax(path, batch_size=batch_size, num_samples=num_samples, dtype=dtype)
  try:
    return _load_cached_export(path, batch_size=batch_size, num_samples=num_samples, precision=precision)
  except NotExportableError as e:
    print(f"note: running on JAX instead of OpenVINO: {e}", file=sys.stderr)
    if dtype is None:  # the model it loaded serves as it is
      return JaxClassifier(e.model, batch_size=batch_size, num_samples=num_samples), e.metadata
    return _load_jax(path, batch_size=batch_size, num_samples=num_samples, dtype=dtype)


def _require_openvino() -> None:
  if openvino_version() is None:
    raise BackendError("backend 'openvino' is not installed (pip install openvino)")


def _load_exported(
  path: Path, *, batch_size: int, num_samples: int, precision: str | None
) -> tuple[OpenVINOClassifier, dict[str, Any]]:
  metadata = exported.read_metadata(path)
  if int(metadata["num_samples"]) != num_samples:
    raise BackendError(
      f"{path}: exported for clips of {metadata['num_samples']} samples, not {num_samples} "
      "(export again with --num_samples)"
    )
  classifier = OpenVINOClassifier(path, metadata, batch_size=batch_size, precision=precision or metadata["precision"])
  return classifier, metadata


def _load_jax(path: Path, *, batch_size: int, num_samples: int, dtype: str | None) -> tuple[JaxClassifier, dict]:
  from vggsound_jax.model_dir import load_model  # noqa: PLC0415

  model, metadata = load_model(path, dtype=dtype)
  return JaxClassifier(model, batch_size=batch_size, num_samples=num_samples), metadata


def cache_key(path: Path, *, num_samples: int, precision: str | None) -> str:
  """The name of a model directory's export in the cache: its content, clip length, precision,
  and the versions of the export format and of openvino."""
  import hashlib  # noqa: PLC0415

  parts = [
    exported.model_hash(path),
    str(num_samples),
    precision or "model",
    exported.EXPORT_FORMAT,
    openvino_version(),
  ]
  return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:32]


def _load_cached_export(
  path: Path, *, batch_size: int, num_samples: int, precision: str | None
) -> tuple[OpenVINOClassifier, dict[str, Any]]:
  """Runs the model directory's export from the cache, exporting it there first if missing or
  damaged. Concurrent runs may export at once: each writes its own scratch directory and the
  renames replace one complete export with another of the same content."""
  cached = export_cache_dir() / cache_key(path, num_samples=num_samples, precision=precision)
  try:
    return _load_exported(cached, batch_size=batch_size, num_samples=num_samples, precision=precision)
  except (exported.ExportError, BackendError):
    pass  # missing or damaged: export it (again)
  from vggsound_jax.model_dir import load_model  # noqa: PLC0415

  model, metadata = load_model(path)
  if model.config.arch != "resnet":
    raise NotExportableError(
      f"{path}: a {model.config.arch} model cannot be exported (only ResNets); use --backend jax", model, metadata
    )
  exported.check_num_samples(num_samples)
  metadata = dict(metadata, source_model_hash=exported.model_hash(path))
  model_precision = precision or exported.precision_of_dtype(model.config.dtype)
  exported.write_export(model, metadata, cached, precision=model_precision, num_samples=num_samples, cache=True)
  return _load_exported(cached, batch_size=batch_size, num_samples=num_samples, precision=precision)
