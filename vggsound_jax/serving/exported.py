"""Exports on disk: the exported directory (writing it atomically with its SHA256SUMS, reading and
checking it, placing it in the export cache) and the standalone `.onnx` file; the graph itself
is built by `graph.py`.

An exported directory holds the ONNX graph (`model.onnx`), `export.json` (class names, model
config, precision, num_samples, the source model's manifest hash, versions) and `SHA256SUMS`; a
standalone `.onnx` carries the same metadata in its metadata_props. Invariant: what is read was
checked against its manifest, and reading imports no jax (running an export needs only a runtime
that reads ONNX, and numpy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any

from vggsound_jax import manifest
from vggsound_jax.audio.decode import CLIP_SAMPLES
from vggsound_jax.errors import PathError

# /1 held an OpenVINO IR (model.xml, model.bin); /2 holds the ONNX graph.
EXPORT_FORMAT = "vggsound_jax.export/2"
FORMAT_FAMILY = "vggsound_jax.export/"
GRAPH_FILE = "model.onnx"
METADATA_FILE = "export.json"
MANIFEST = manifest.MANIFEST
# What `vggsound-export --format` writes: an exported directory (vggsound-predict runs it) or one .onnx file.
FORMATS = ("directory", "onnx")
ONNX_SUFFIX = ".onnx"
# The metadata_props key of a standalone .onnx that holds export.json's content, as JSON.
ONNX_METADATA_KEY = "vggsound_jax.export"
# One name for the inference precision everywhere (vggsound-predict, vggsound-export, Tagger,
# load_classifier); the default is fp32.
PRECISIONS = ("fp32", "bf16")
DEFAULT_PRECISION = "fp32"
# The model config's compute dtype each precision stands for (load_model's `dtype`).
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
SAVING_SUFFIX = ".saving"
REPLACED_SUFFIX = ".replaced"


class ExportError(PathError):
  """A directory that is not a (readable) exported model, or cannot be written."""


class UnsupportedExportError(ExportError):
  """A model the exporter has no graph for (VGGish)."""


def check_precision(precision: str) -> None:
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


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
    raise ExportError(path, f"format {metadata['format']!r} of another version (export it again with vggsound-export)")
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


def export_metadata(model: Any, metadata: dict[str, Any], *, precision: str, num_samples: int) -> dict[str, Any]:
  """export.json of a loaded model with its model-directory `metadata` (plus `source_model_hash`)."""
  from vggsound_jax.serving.graph import OPSET  # jax, only when exporting

  check_precision(precision)
  return {
    "format": EXPORT_FORMAT,
    "class_names": list(metadata["class_names"]),
    "model_config": dict(metadata["model_config"]),
    "precision": precision,
    "num_samples": int(num_samples),
    "embedding_dim": int(model.config.embedding_dim),
    "source_model_hash": metadata.get("source_model_hash"),
    "source": metadata.get("source", {}),
    "onnx_opset": OPSET,
    "versions": _versions(),
  }


def _onnx_graph(model: Any, exported: dict[str, Any]) -> Any:
  from vggsound_jax.serving.graph import build_graph  # jax, only when exporting

  return build_graph(model, exported["num_samples"], {ONNX_METADATA_KEY: json.dumps(exported)})


def write_export(
  model: Any,
  metadata: dict[str, Any],
  output: str | os.PathLike,
  *,
  precision: str = DEFAULT_PRECISION,
  num_samples: int = CLIP_SAMPLES,
  overwrite: bool = False,
  cache: bool = False,
) -> dict[str, Any]:
  """Exports a loaded model (`model_dir.load_model`) with its model-directory `metadata` (plus
  `source_model_hash`) to the directory `output`. Returns the export's metadata.

  With `cache`, `output` is a cache entry the caller found missing or damaged: what is there is
  removed, and if a concurrent writer puts its (identical) export in place first, that one stays.
  """
  import onnx

  exported = export_metadata(model, metadata, precision=precision, num_samples=num_samples)
  output = Path(os.path.abspath(output)) if cache else check_target(output, overwrite=overwrite)
  graph = _onnx_graph(model, exported)
  try:
    output.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ExportError(output.parent, f"cannot create the directory ({e.strerror or e})") from None
  saving = _sibling(output, SAVING_SUFFIX)
  try:
    saving.mkdir()
    onnx.save_model(graph, saving / GRAPH_FILE)
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


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """export.json's content as a standalone .onnx written by vggsound-export carries it."""
  import onnx

  path = Path(path).absolute()
  try:
    model = onnx.load_model(path, load_external_data=False)
  except FileNotFoundError:
    raise ExportError(path, "no such file") from None
  except Exception as e:  # protobuf's DecodeError and friends: the caller needs one line
    raise ExportError(path, f"not a readable ONNX model ({type(e).__name__})") from None
  props = {p.key: p.value for p in model.metadata_props}
  try:
    metadata = json.loads(props[ONNX_METADATA_KEY])
  except (KeyError, ValueError):
    raise ExportError(path, "not an ONNX export written by vggsound-jax (no vggsound_jax metadata)") from None
  if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
    found = metadata.get("format") if isinstance(metadata, dict) else None
    raise ExportError(path, f"format {found!r} of another version (export it again with vggsound-export)")
  return metadata


def check_onnx_target(path: str | os.PathLike, *, overwrite: bool) -> Path:
  """Raises ExportError unless a standalone export may write the file `path`: a new *.onnx, or
  with `overwrite` one that vggsound-export wrote. Returns the absolute path."""
  path = Path(os.path.abspath(path))
  if path.suffix != ONNX_SUFFIX:
    raise ExportError(path, f"an ONNX export is one file named *{ONNX_SUFFIX}")
  if path.is_symlink():
    raise ExportError(path, "is a symbolic link (refusing to replace it; give a new file)")
  if not path.exists():
    return path
  if not overwrite:
    raise ExportError(path, "already exists (pass --overwrite to replace an ONNX export)")
  if not path.is_file():
    raise ExportError(path, "is not a file (refusing to replace it)")
  try:
    read_onnx_metadata(path)
  except ExportError:
    raise ExportError(path, "is not an ONNX export written by vggsound-jax (refusing to replace it)") from None
  return path


def write_onnx(
  model: Any,
  metadata: dict[str, Any],
  output: str | os.PathLike,
  *,
  precision: str = DEFAULT_PRECISION,
  num_samples: int = CLIP_SAMPLES,
  overwrite: bool = False,
) -> dict[str, Any]:
  """Exports a loaded model to one .onnx file, the export's metadata in its metadata_props
  (written to a scratch sibling, then renamed over `output`). Returns the metadata."""
  import onnx

  exported = export_metadata(model, metadata, precision=precision, num_samples=num_samples)
  output = check_onnx_target(output, overwrite=overwrite)
  graph = _onnx_graph(model, exported)
  saving = _sibling(output, SAVING_SUFFIX)
  try:
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(graph, saving)
    with open(saving, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(saving, output)
    manifest.fsync_directory(output.parent)
  except OSError as e:
    raise ExportError(output, f"cannot write the ONNX export ({e.strerror or e})") from None
  finally:
    with contextlib.suppress(FileNotFoundError):
      saving.unlink()
  return exported


def _versions() -> dict[str, str]:
  from importlib.metadata import version

  return {"vggsound_jax": version("vggsound-jax"), "onnx": version("onnx"), "python": platform.python_version()}


def export_model(
  checkpoint: str | os.PathLike,
  output: str | os.PathLike,
  *,
  precision: str = DEFAULT_PRECISION,
  num_samples: int = CLIP_SAMPLES,
  overwrite: bool = False,
  format: str = "directory",  # noqa: A002 - the flag's name
) -> dict[str, Any]:
  """Exports the model directory `checkpoint` (converted or trained) to `output` for clips of
  `num_samples` samples: an exported directory (`format='directory'`) or one .onnx file
  (`format='onnx'`). Returns the export's metadata (export.json)."""
  from vggsound_jax.model_dir import load_model  # jax, only here

  if format not in FORMATS:
    raise ValueError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
  check_precision(precision)
  check_num_samples(num_samples)
  if format == "onnx":
    check_onnx_target(output, overwrite=overwrite)
  else:
    check_target(output, overwrite=overwrite)
  model, metadata = load_model(checkpoint)
  if model.config.arch != "resnet":
    raise UnsupportedExportError(checkpoint, f"a {model.config.arch} model: only ResNets can be exported")
  metadata = dict(metadata, source_model_hash=model_hash(checkpoint))
  write = write_onnx if format == "onnx" else write_export
  return write(model, metadata, output, precision=precision, num_samples=num_samples, overwrite=overwrite)


def check_num_samples(num_samples: int) -> None:
  from vggsound_jax.audio.stft import NPERSEG

  # The stem and four stride-2 stages need at least one output frame.
  if num_samples < NPERSEG:
    raise ValueError(f"--num_samples {num_samples}: clips must hold at least {NPERSEG} samples")
