"""An exported model directory: writing it (atomically, with its SHA256SUMS), reading and
checking it, and the export cache's placement; the graph itself is built by `graph.py`.

An exported directory holds the graph (`model.xml`, `model.bin`), `export.json` (class names,
model config, precision, num_samples, the source model's manifest hash, versions) and a
`SHA256SUMS` manifest. Invariant: what is read was checked against its manifest, and nothing
here imports jax (running an export needs only openvino and numpy).
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
  from vggsound_jax.serving.graph import build_graph  # noqa: PLC0415 - jax, only when exporting

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
