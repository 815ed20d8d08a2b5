"""The on-disk format of a model, converted from PyTorch or exported by training.

A model directory is an Orbax checkpoint with two items:

- `state`: the model's `ModelState`, `{"params", "batch_stats"}`, as pure nested dicts;
- `metadata`: JSON with `format` (`MODEL_FORMAT`), `model_config` (the ModelConfig fields),
  `class_names` (model output order) and free-form `source` (e.g. the converted file and its
  sha256).

Loading needs neither torch nor the training code: the architecture is rebuilt from
`model_config`, and the state restored into it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from vggsound_jax.errors import PathError
from vggsound_jax.models import ModelConfig, ResNet, abstract_model_state, graphdefs, merge_model, split_model

MODEL_FORMAT = "vggsound_jax.model/2"  # /2: state split into params and batch_stats
STATE_ITEM = "state"
METADATA_ITEM = "metadata"


class ModelCheckpointError(PathError):
  """A directory that is not a (readable) model checkpoint."""


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


def save_model(
  directory: str | os.PathLike,
  model: ResNet,
  *,
  class_names: Sequence[str],
  source: dict[str, Any] | None = None,
  overwrite: bool = False,
) -> Path:
  """Writes `model` (its config, parameters and BatchNorm statistics) to a new directory.

  `class_names` must list the model's outputs in order. An existing directory is replaced only
  with `overwrite=True`. Returns the absolute directory.
  """
  directory = Path(directory).absolute()
  config = model.config
  if len(class_names) != config.num_classes:
    raise ValueError(f"{directory}: {len(class_names)} class names for a model with {config.num_classes} outputs")
  if directory.exists() and not overwrite:
    raise ModelCheckpointError(directory, "already exists (refusing to overwrite it)")
  metadata = {
    "format": MODEL_FORMAT,
    "model_config": dataclasses.asdict(config),
    "class_names": list(class_names),
    "source": dict(source or {}),
  }
  state = {k: nnx.to_pure_dict(v) for k, v in split_model(model)[1].items()}
  with _checkpointer() as checkpointer:
    checkpointer.save(
      directory,
      ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state), METADATA_ITEM: ocp.args.JsonSave(metadata)}),
      force=overwrite,
    )
  return directory


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON metadata of a model directory (cheap: reads no arrays)."""
  directory = Path(directory).absolute()
  if not directory.is_dir():
    raise ModelCheckpointError(directory, "no such model directory")
  if not (directory / METADATA_ITEM).is_dir() or not (directory / STATE_ITEM).is_dir():
    raise ModelCheckpointError(
      directory,
      f"not a model checkpoint (expected '{STATE_ITEM}' and '{METADATA_ITEM}' inside; "
      "make one with converters/pytorch_to_flax.py or training)",
    )
  try:
    with _checkpointer() as checkpointer:
      restored = checkpointer.restore(directory, ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
    metadata = restored[METADATA_ITEM]
  except Exception as e:  # Orbax raises many kinds; the caller needs one line
    raise ModelCheckpointError(directory, f"unreadable metadata ({_one_line(e)})") from None
  if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
    found = metadata.get("format") if isinstance(metadata, dict) else None
    raise ModelCheckpointError(directory, f"not a model checkpoint (format {found!r}, expected {MODEL_FORMAT!r})")
  return metadata


def load_model(directory: str | os.PathLike, *, dtype: str | None = None) -> tuple[ResNet, dict[str, Any]]:
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
