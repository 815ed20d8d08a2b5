"""A run's Orbax checkpoints in WORKDIR/checkpoints: train state and data-iterator position.

Each checkpoint holds three items, so that each reader takes only what it needs:
- `model`: the `ModelState` (parameters and BatchNorm statistics), all that evaluation restores;
- `train`: step, optimizer state and RNG, which resuming adds;
- `data`: the Grain iterator's position, so a resumed run sees exactly the batches it would
  have seen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from vggsound_jax import sharding as sharding_lib
from vggsound_jax.models import ModelConfig, ModelState, abstract_model_state
from vggsound_jax.train_state import TrainState

CHECKPOINT_DIR = "checkpoints"
_TRAIN_KEYS = ("step", "opt_state", "rng")


def checkpoint_manager(
  workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None, *, read_only: bool = False
) -> ocp.CheckpointManager:
  """The manager of WORKDIR/checkpoints; `config.checkpoint` sets how often and how many."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=config.checkpoint.max_to_keep if config else None,
    save_interval_steps=config.checkpoint.save_interval_steps if config else 1,
    read_only=read_only,
  )
  return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


def _replicated_like(tree: Any, mesh: Mesh) -> Any:
  replicated = sharding_lib.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree)


def save(
  manager: ocp.CheckpointManager, step: int, state: TrainState, data_iterator: Any, *, force: bool = False
) -> bool:
  """Saves `state` (at `step`, known on the host) if the interval says so, or with `force`.

  Asynchronous: the arrays are copied, then written in the background.
  """
  import grain.checkpoint  # noqa: PLC0415 - grain is only needed where there is data

  return manager.save(
    step,
    force=force,
    args=ocp.args.Composite(
      model=ocp.args.StandardSave(state["model"]),
      train=ocp.args.StandardSave({k: state[k] for k in _TRAIN_KEYS}),
      data=grain.checkpoint.CheckpointSave(data_iterator),
    ),
  )


def restore(manager: ocp.CheckpointManager, like: TrainState, mesh: Mesh, *, data_iterator: Any = None) -> TrainState:
  """The latest train state, shaped like `like`; sets `data_iterator` to its saved position."""
  items = {
    "model": ocp.args.StandardRestore(_replicated_like(like["model"], mesh)),
    "train": ocp.args.StandardRestore(_replicated_like({k: like[k] for k in _TRAIN_KEYS}, mesh)),
  }
  if data_iterator is not None:
    import grain.checkpoint  # noqa: PLC0415

    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(**items))
  return {"model": restored["model"], **restored["train"]}


def restore_model_state(
  manager: ocp.CheckpointManager, model_cfg: ModelConfig, mesh: Mesh, *, step: int | None = None
) -> ModelState:
  """Only the model of a checkpoint (latest, or `step`): no optimizer needed."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{manager.directory}: no checkpoint to evaluate")
  target = _replicated_like(abstract_model_state(model_cfg), mesh)
  restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
  return restored["model"]
