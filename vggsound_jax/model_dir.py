"""The on-disk format of a model (converted or trained): an Orbax checkpoint with the items
`state` (the `ModelState`) and `metadata` (`format`, `model_config`, `class_names`, `source`),
and a `SHA256SUMS` manifest checked before loading.

Invariants: `save_model` refuses a non-finite state, writes to a scratch sibling and renames it
into place; it replaces only an empty directory or a model directory written here, never the
current directory, a parent, a file or a symbolic link. Loading needs neither torch nor the
training code. User-facing rules: docs/troubleshooting.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from vggsound_jax import manifest
from vggsound_jax.errors import PathError
from vggsound_jax.models import ModelConfig, Network, abstract_model_state, graphdefs, merge_model, split_model

# /3: with the SHA256SUMS manifest; /2: state split into params and batch_stats.
MODEL_FORMAT = "vggsound_jax.model/3"
# Written before manifests existed: still loaded, without the check (write them again to get it).
UNCHECKED_FORMATS = ("vggsound_jax.model/2",)
# Every format this project ever wrote starts so: what `overwrite` may replace.
FORMAT_FAMILY = "vggsound_jax.model/"
STATE_ITEM = "state"
METADATA_ITEM = "metadata"
MANIFEST = manifest.MANIFEST
# Where Orbax's JsonSave puts the metadata item's JSON (read directly to recognise our directories).
_METADATA_JSON = Path(METADATA_ITEM) / "metadata"
# Scratch siblings of a model directory NAME while it is written or replaced.
SAVING_SUFFIX = ".saving"
REPLACED_SUFFIX = ".replaced"


class ModelCheckpointError(PathError):
  """A directory that is not a (readable) model checkpoint, or a file of one that is damaged."""


class NonFiniteModelError(ModelCheckpointError):
  """A model whose parameters or statistics hold NaN or inf: never written."""


@contextlib.contextmanager
def _checkpointer() -> Iterator[ocp.Checkpointer]:
  # Closed explicitly: Orbax's background threads otherwise outlive the call.
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    yield checkpointer
  finally:
    checkpointer.close()


def _one_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


def _scratch(directory: Path, suffix: str) -> Path:
  return directory.with_name(f".{directory.name}{suffix}")


def _read_format(directory: Path) -> str | None:
  """The metadata `format` of a directory, read without Orbax; None when there is none."""
  try:
    metadata = json.loads((directory / _METADATA_JSON).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  value = metadata.get("format") if isinstance(metadata, dict) else None
  return value if isinstance(value, str) else None


def verify_manifest(directory: str | os.PathLike) -> None:
  """Checks every file of a model directory against its SHA256SUMS; raises naming the first bad file."""
  manifest.verify(Path(directory).absolute(), ModelCheckpointError, "model directory")


def _non_finite_paths(state: dict[str, Any]) -> list[str]:
  """'/'-joined paths of the leaves holding NaN or inf (each distinct shard checked once).

  Only this process's shards are read: the model state is replicated (or local), so every
  process reaches the same answer without talking to the others.
  """
  bad = []
  for path, leaf in traverse_util.flatten_dict(state).items():
    if isinstance(leaf, jax.Array):
      seen, pieces = set(), []
      for shard in leaf.addressable_shards:
        key = str(shard.index)
        if key not in seen:
          seen.add(key)
          pieces.append(np.asarray(shard.data))
    else:
      pieces = [np.asarray(leaf)]
    if any(np.issubdtype(p.dtype, np.inexact) and not np.isfinite(p).all() for p in pieces):
      bad.append("/".join(map(str, path)))
  return bad


def check_target(directory: str | os.PathLike, *, overwrite: bool) -> Path:
  """Raises ModelCheckpointError unless `save_model(directory, overwrite=overwrite)` may write there
  (manifest.check_target). Cheap (reads no arrays): the commands call it before any work.
  Returns the absolute path."""
  return manifest.check_target(
    directory,
    overwrite=overwrite,
    error=ModelCheckpointError,
    what="model directory",
    ours=lambda d: (_read_format(d) or "").startswith(FORMAT_FAMILY),
  )


def _recover_interrupted_replace(directory: Path) -> None:
  """A save killed between its two renames left the previous model at `.NAME.replaced`."""
  replaced = _scratch(directory, REPLACED_SUFFIX)
  if not replaced.is_dir() or not (_read_format(replaced) or "").startswith(FORMAT_FAMILY):
    return
  if directory.exists():
    shutil.rmtree(replaced)  # the newer model made it into place
  else:
    os.rename(replaced, directory)


def _remove_scratch(saving: Path) -> None:
  """Removes what a killed save left at `.NAME.saving` (and Orbax's own temporaries of it)."""
  for path in [saving, *saving.parent.glob(f"{saving.name}.orbax-checkpoint-tmp*")]:
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def save_model(
  directory: str | os.PathLike,
  model: Network,
  *,
  class_names: Sequence[str],
  source: dict[str, Any] | None = None,
  overwrite: bool = False,
) -> Path:
  """Writes `model` (its config, parameters and BatchNorm statistics) as a model directory.

  `class_names` must list the model's outputs in order. The directory appears complete or not
  at all. An existing one is replaced only with `overwrite=True` and only if it is a model
  directory (see `check_target`). Raises NonFiniteModelError, naming the parameter, for a state
  with NaN or inf. In a multi-process run every process calls it. Returns the absolute directory.
  """
  directory = Path(os.path.abspath(directory))
  config = model.config
  if len(class_names) != config.num_classes:
    raise ValueError(f"{directory}: {len(class_names)} class names for a model with {config.num_classes} outputs")
  state = {k: nnx.to_pure_dict(v) for k, v in split_model(model)[1].items()}
  bad = _non_finite_paths(state)
  if bad:
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise NonFiniteModelError(directory, f"refusing to write a model with NaN or inf in {bad[0]}{more}")
  primary = jax.process_index() == 0
  if primary:
    _recover_interrupted_replace(directory)
  _sync("vggsound_jax.save_model.recover")
  check_target(directory, overwrite=overwrite)
  metadata = {
    "format": MODEL_FORMAT,
    "model_config": dataclasses.asdict(config),
    "class_names": list(class_names),
    "source": dict(source or {}),
  }
  saving = _scratch(directory, SAVING_SUFFIX)
  if primary:
    try:
      directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise ModelCheckpointError(directory.parent, f"cannot create the directory ({e.strerror or e})") from None
    _remove_scratch(saving)
  _sync("vggsound_jax.save_model.start")
  try:
    with _checkpointer() as checkpointer:
      checkpointer.save(
        saving,
        ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state), METADATA_ITEM: ocp.args.JsonSave(metadata)}),
      )
    if primary:
      manifest.write_manifest(saving)
  except BaseException:
    if primary:
      _remove_scratch(saving)
    raise
  if primary:
    # The fixed `.NAME.replaced` is where _recover_interrupted_replace looks after a crash.
    manifest.place(saving, directory, _scratch(directory, REPLACED_SUFFIX))
  _sync("vggsound_jax.save_model.done")
  return directory


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON metadata of a model directory, after checking every file against its manifest."""
  directory = Path(directory).absolute()
  if not directory.is_dir():
    replaced = _scratch(directory, REPLACED_SUFFIX)
    if replaced.is_dir():
      raise ModelCheckpointError(
        directory, f"no such model directory (a save was interrupted: the previous model is {replaced}; rename it back)"
      )
    raise ModelCheckpointError(directory, "no such model directory")
  if not (directory / METADATA_ITEM).is_dir() or not (directory / STATE_ITEM).is_dir():
    raise ModelCheckpointError(
      directory,
      f"not a model checkpoint (expected '{STATE_ITEM}' and '{METADATA_ITEM}' inside; "
      "make one with vggsound-convert or training)",
    )
  if _read_format(directory) not in UNCHECKED_FORMATS:
    verify_manifest(directory)  # also when the metadata itself is damaged
  try:
    with _checkpointer() as checkpointer:
      restored = checkpointer.restore(directory, ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
    metadata = restored[METADATA_ITEM]
  except Exception as e:  # Orbax raises many kinds; the caller needs one line
    raise ModelCheckpointError(directory, f"unreadable metadata ({_one_line(e)})") from None
  if not isinstance(metadata, dict) or metadata.get("format") not in (MODEL_FORMAT, *UNCHECKED_FORMATS):
    found = metadata.get("format") if isinstance(metadata, dict) else None
    raise ModelCheckpointError(directory, f"not a model checkpoint (format {found!r}, expected {MODEL_FORMAT!r})")
  return metadata


def load_model(directory: str | os.PathLike, *, dtype: str | None = None) -> tuple[Network, dict[str, Any]]:
  """Loads a model directory written by `save_model`: (model in eval mode, metadata).

  `dtype` overrides the compute dtype ('float32', 'bfloat16'); parameters stay float32.
  """
  directory = Path(directory).absolute()
  metadata = load_metadata(directory)
  fields = dict(metadata.get("model_config") or {})
  if dtype is not None:
    fields["dtype"] = dtype
  try:
    config = ModelConfig(**fields)
    # Only shapes: the real values come from the checkpoint, so skip the random init.
    graphdef = graphdefs(config).eval
    state = abstract_model_state(config)
  except Exception as e:
    raise ModelCheckpointError(directory, f"bad model_config {fields!r} ({_one_line(e)})") from None
  # Onto one local device, whatever the topology of the run that wrote it.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
    {k: nnx.to_pure_dict(v) for k, v in state.items()},
  )
  try:
    with _checkpointer() as checkpointer:
      restored = checkpointer.restore(directory, ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)}))[
        STATE_ITEM
      ]
    _check_same_shapes(target, restored)
    for key, value in state.items():
      nnx.replace_by_pure_dict(value, restored[key])
  except ModelCheckpointError:
    raise
  except Exception as e:
    raise ModelCheckpointError(directory, f"state does not match model_config ({_one_line(e)})") from None
  return merge_model(graphdef, state), metadata


def _check_same_shapes(target: Any, restored: Any) -> None:
  expected = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), target)
  found = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), restored)
  if expected != found:
    raise ValueError("restored arrays differ in shape or dtype from the model's")
