"""One way to load a classifier, whichever backend runs it: JAX, or the exported ONNX graph run by OpenVINO.

  classifier, metadata = load_classifier("models/H")              # auto: the fastest here
  probs, embeddings = classifier(int16_clips)                      # (n, num_samples), n <= batch_size

`path` is a model directory (vggsound-convert, training) or an exported one (vggsound-export).
With backend='auto', a model directory on a CPU-only machine with openvino installed is
exported once into a cache (`export_cache_dir()`, keyed by the model's manifest hash, clip
length and versions) and run by OpenVINO, which is faster there than XLA:CPU; OpenVINO keeps
what it compiles in `compiled_cache_dir()`. On a GPU or TPU, or for a model the exporter cannot
handle (VGGish), JAX runs it. Invariants: a cached export runs only while its model directory
still matches its SHA256SUMS (re-hashed when a file's size or mtime changed), and loading and
running an exported directory imports neither jax nor tensorflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from vggsound_jax import manifest
from vggsound_jax.audio.decode import CLIP_SAMPLES
from vggsound_jax.errors import PathError, UserError
from vggsound_jax.serving import exported

BACKENDS = ("auto", "jax", "openvino")
# Environment variables: the JAX compilation cache's (compilation_cache.enable_compilation_cache), whose
# `exported` subdirectory then holds the exports too, and JAX's choice of platforms.
CACHE_ENV = "VGGSOUND_JAX_CACHE"
JAX_PLATFORMS_ENV = "JAX_PLATFORMS"
EXPORT_CACHE_SUBDIR = "exported"
# Beside the exports: OpenVINO's compiled blobs (its CACHE_DIR), and what each model directory
# looked like (file sizes and mtimes) when it was last checked against its manifest.
COMPILED_CACHE_SUBDIR = "openvino"
SOURCES_CACHE_SUBDIR = "sources"
# OpenVINO's INFERENCE_PRECISION_HINT for each precision.
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
# /proc/cpuinfo flags of bf16 arithmetic: x86 (AVX-512 BF16, AMX) and Arm ("Features": bf16).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")
# openvino-telemetry declines in CI jobs, recognised by this variable (see import_openvino).
_TELEMETRY_OFF_ENV = ("CI", "true")
_IMPORT_LOCK = threading.Lock()
# Distributions that give JAX a GPU or TPU: with none installed, JAX runs on the CPU (found
# without importing jax, which costs a second).
ACCELERATOR_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin", "jax-rocm7-plugin", "libtpu")


class BackendError(UserError, ValueError):
  """A backend that cannot run here or cannot run this model."""


class ModelDirectoryError(PathError):
  """A model directory that no longer matches its manifest (found before running its cached export)."""


class NotExportableError(BackendError):
  """A model the exporter has no graph for (VGGish); holds the model, loaded to find that out."""

  def __init__(self, message: str, model: Any, metadata: dict[str, Any]) -> None:
    super().__init__(message)
    self.model = model
    self.metadata = metadata


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
      import openvino

      return openvino
    finally:
      if saved is None:
        del os.environ[name]
      else:
        os.environ[name] = saved


def _cache_root() -> Path:
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV])
  return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vggsound_jax"


def export_cache_dir() -> Path:
  """Where backend='auto' keeps its exports: `$VGGSOUND_JAX_CACHE/exported`, or
  `~/.cache/vggsound_jax/exported` (under XDG_CACHE_HOME if set)."""
  return _cache_root() / EXPORT_CACHE_SUBDIR


def compiled_cache_dir() -> Path:
  """OpenVINO's cache of compiled graphs (its CACHE_DIR), beside export_cache_dir()."""
  return _cache_root() / COMPILED_CACHE_SUBDIR


def cpu_has_bf16() -> bool | None:
  """Whether this CPU does bf16 arithmetic (None where /proc/cpuinfo cannot tell)."""
  try:
    text = CPUINFO.read_text(encoding="utf-8", errors="replace")
  except OSError:
    return None
  flags = set()
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() in ("flags", "Features"):
      flags.update(value.split())
  if not flags:
    return None
  return bool(flags & set(BF16_CPU_FLAGS))


def _runnable_precision(precision: str) -> str:
  """`precision` on this CPU: bf16 where the CPU has no bf16 arithmetic runs fp32, said in one line."""
  if precision == "bf16" and cpu_has_bf16() is False:
    print("note: this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX): running fp32", file=sys.stderr)
    return "fp32"
  return precision


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
  import jax

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
    ov = import_openvino()
    self.batch_size = batch_size
    self.num_samples = int(metadata["num_samples"])
    self.embedding_dim = int(metadata["embedding_dim"])
    self.precision = precision
    core = ov.Core()
    model = core.read_model(directory / exported.GRAPH_FILE)
    # A static shape: OpenVINO plans memory and picks kernels once for it.
    model.reshape({0: [batch_size, self.num_samples]})
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
    try:
      compiled_cache_dir().mkdir(parents=True, exist_ok=True)
      # OpenVINO keys its blobs by the graph, its shapes and this config: another graph compiles anew.
      config["CACHE_DIR"] = str(compiled_cache_dir())
    except OSError:
      pass  # an unwritable cache only costs compiling every time
    compiled = core.compile_model(model, "CPU", config)
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
    from vggsound_jax.serving.inference import Classifier

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
  precision: str | None = None,
) -> tuple[OpenVINOClassifier | JaxClassifier, dict[str, Any]]:
  """A classifier of int16 clips (n, num_samples), n <= batch_size, and the model's metadata
  (`class_names`, `model_config`, ...).

  Args:
    path: a model directory or an exported directory.
    backend: 'auto' (see the module doc), 'jax' (model directories only) or 'openvino'.
    batch_size: clips per call; smaller batches are padded.
    num_samples: samples per clip; an exported directory must have been exported for it.
    precision: 'fp32' or 'bf16'; default: the model's (or the export's). On a CPU without bf16
      arithmetic, bf16 runs as fp32 (with a one-line note on stderr).

  Raises BackendError for a backend that is not installed or cannot run the model, and the
  loaders' PathErrors (ModelCheckpointError, ExportError, ModelDirectoryError) for a bad
  directory; all one line.
  """
  if backend not in BACKENDS:
    raise BackendError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
  if batch_size < 1:
    raise ValueError(f"batch_size {batch_size}: at least 1")
  if precision is not None:
    exported.check_precision(precision)
  path = Path(path).absolute()
  if is_exported(path):
    if backend == "jax":
      raise BackendError(f"{path}: an exported model runs on openvino only (give the model directory for jax)")
    _require_openvino()
    return _load_exported(path, batch_size=batch_size, num_samples=num_samples, precision=precision)
  if backend == "jax":
    return _load_jax(path, batch_size=batch_size, num_samples=num_samples, precision=precision)
  if backend == "openvino":
    _require_openvino()
    return _load_cached_export(path, batch_size=batch_size, num_samples=num_samples, precision=precision)
  # auto
  if openvino_version() is None or not jax_on_cpu_only():
    return _load_jax(path, batch_size=batch_size, num_samples=num_samples, precision=precision)
  try:
    return _load_cached_export(path, batch_size=batch_size, num_samples=num_samples, precision=precision)
  except NotExportableError as e:
    print(f"note: running on JAX instead of OpenVINO: {e}", file=sys.stderr)
    wanted = _jax_precision(precision or exported.precision_of_dtype(e.model.config.dtype))
    if wanted == exported.precision_of_dtype(e.model.config.dtype):  # the model it loaded serves as it is
      return JaxClassifier(e.model, batch_size=batch_size, num_samples=num_samples), e.metadata
    return _load_jax(path, batch_size=batch_size, num_samples=num_samples, precision=wanted)


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
  runnable = _runnable_precision(precision or metadata["precision"])
  classifier = OpenVINOClassifier(path, metadata, batch_size=batch_size, precision=runnable)
  return classifier, metadata


def _jax_precision(precision: str) -> str:
  """bf16 falls back to fp32 only where JAX runs on a CPU (accelerators have bf16)."""
  return _runnable_precision(precision) if jax_on_cpu_only() else precision


def _load_jax(path: Path, *, batch_size: int, num_samples: int, precision: str | None) -> tuple[JaxClassifier, dict]:
  from vggsound_jax.model_dir import load_model

  dtype = None if precision is None else exported.PRECISION_DTYPES[_jax_precision(precision)]
  model, metadata = load_model(path, dtype=dtype)
  if precision is None:  # the model's own: a bf16 model on a CPU without bf16 runs fp32 (loaded again, rare)
    runnable = exported.PRECISION_DTYPES[_jax_precision(exported.precision_of_dtype(model.config.dtype))]
    if runnable != model.config.dtype:
      model, metadata = load_model(path, dtype=runnable)
  return JaxClassifier(model, batch_size=batch_size, num_samples=num_samples), metadata


def cache_key(path: Path, *, num_samples: int) -> str:
  """The name of a model directory's export in the cache: its content, clip length, and the
  versions of the export format and of the packages that write the graph. (The precision is
  a compile-time hint: one export serves both.)"""
  versions = []
  for name in ("vggsound-jax", "onnx"):
    try:
      versions.append(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
      versions.append(None)
  parts = [exported.model_hash(path), str(num_samples), exported.EXPORT_FORMAT, *versions]
  return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:32]


def _file_stats(directory: Path) -> dict[str, list[int]]:
  """{name: [size, mtime_ns]} of every file under `directory`: what a change of content changes."""
  stats = {}
  for name in manifest.files(directory):
    st = (directory / name).stat()
    stats[name] = [st.st_size, st.st_mtime_ns]
  return stats


def check_model_directory(path: Path) -> None:
  """Raises ModelDirectoryError naming the first file of the model directory `path` that differs
  from its SHA256SUMS. Re-hashes only when a file's size or mtime differs from the last check
  that passed (recorded under the cache's `sources`), so an unchanged directory costs a stat
  per file. A directory without a manifest (an earlier format) is hashed whole by cache_key."""
  if not (path / manifest.MANIFEST).is_file():
    return
  record = _cache_root() / SOURCES_CACHE_SUBDIR / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
  try:
    stats = _file_stats(path)
  except OSError as e:
    raise ModelDirectoryError(path, f"unreadable ({e.strerror or e})") from None
  expected = {"path": str(path), "model_hash": exported.model_hash(path), "files": stats}
  try:
    if json.loads(record.read_text(encoding="utf-8")) == expected:
      return
  except (OSError, ValueError):
    pass  # no record yet, or a damaged one: check
  manifest.verify(path, ModelDirectoryError, "model directory")
  _write_record(record, expected)


def _write_record(record: Path, content: dict[str, Any]) -> None:
  """Atomically (scratch sibling, then rename); a cache that cannot be written only costs re-hashing."""
  scratch = record.with_name(f".{record.name}.{uuid.uuid4().hex[:12]}")
  try:
    record.parent.mkdir(parents=True, exist_ok=True)
    scratch.write_text(json.dumps(content), encoding="utf-8")
    os.replace(scratch, record)
  except OSError:
    with contextlib.suppress(OSError):
      scratch.unlink()


def _load_cached_export(
  path: Path, *, batch_size: int, num_samples: int, precision: str | None
) -> tuple[OpenVINOClassifier, dict[str, Any]]:
  """Runs the model directory's export from the cache, exporting it there first if missing or
  damaged; a model directory damaged since its export is an error. Concurrent runs may export
  at once: each writes its own scratch directory and the renames replace one complete export
  with another of the same content."""
  cached = export_cache_dir() / cache_key(path, num_samples=num_samples)
  if (cached / exported.METADATA_FILE).is_file():
    check_model_directory(path)
  try:
    return _load_exported(cached, batch_size=batch_size, num_samples=num_samples, precision=precision)
  except (exported.ExportError, BackendError):
    pass  # missing or damaged: export it (again)
  from vggsound_jax.model_dir import load_model

  model, metadata = load_model(path)  # checks the directory against its manifest
  if model.config.arch != "resnet":
    raise NotExportableError(
      f"{path}: a {model.config.arch} model cannot be exported (only ResNets); use --backend jax", model, metadata
    )
  exported.check_num_samples(num_samples)
  metadata = dict(metadata, source_model_hash=exported.model_hash(path))
  model_precision = exported.precision_of_dtype(model.config.dtype)
  exported.write_export(model, metadata, cached, precision=model_precision, num_samples=num_samples, cache=True)
  check_model_directory(path)  # records what the directory looks like now (hashed once more)
  return _load_exported(cached, batch_size=batch_size, num_samples=num_samples, precision=precision)
