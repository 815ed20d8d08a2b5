"""A run's Orbax checkpoints in WORKDIR/checkpoints.

Each checkpoint holds two items, so that each reader takes only what it needs:
- `model`: the `ModelState` (parameters and BatchNorm statistics), all that evaluation restores;
- `train`: step, optimizer state, RNG and the non-finite marker, which resuming adds.
The data needs no item: the input pipeline is a function of the step (`input_pipeline.py`), so a
run resumes from the step alone, on any number of devices, processes or loader workers.
"""

from __future__ import annotations

import os
import sys
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
_TRAIN_KEYS = ("step", "opt_state", "rng", "first_nonfinite_step")


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


def save(manager: ocp.CheckpointManager, step: int, state: TrainState, *, force: bool = False) -> bool:
  """Saves `state` (at `step`, known on the host) if the interval says so, or with `force`.

  Asynchronous: the arrays are copied, then written in the background.
  """
  return manager.save(
    step,
    force=force,
    args=ocp.args.Composite(
      model=ocp.args.StandardSave(state["model"]), train=ocp.args.StandardSave({k: state[k] for k in _TRAIN_KEYS})
    ),
  )


def _one_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0] if lines else ''}"


def restore(manager: ocp.CheckpointManager, like: TrainState, mesh: Mesh) -> TrainState | None:
  """The newest checkpoint that can be restored, shaped like `like`; None when there is none.

  A checkpoint that cannot be read (a damaged file, a killed save) is passed over for the one
  before it, with a warning naming it; only when none is readable is it an error.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  target = {
    "model": _replicated_like(like["model"], mesh),
    "train": _replicated_like({k: like[k] for k in _TRAIN_KEYS}, mesh),
  }
  problems = []
  for step in steps:
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          model=ocp.args.StandardRestore(target["model"]), train=ocp.args.StandardRestore(target["train"])
        ),
      )
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds
      problems.append(f"step {step} ({_one_line(e)})")
      continue
    if problems and jax.process_index() == 0:
      print(
        f"warning: {manager.directory}: resuming from step {step}; newer checkpoints could not be "
        f"restored: {'; '.join(problems)}",
        file=sys.stderr,
      )
    return {"model": restored["model"], **restored["train"]}
  if problems:
    raise CheckpointError(f"{manager.directory}: no checkpoint can be restored: {'; '.join(problems)}")
  return None


class CheckpointError(OSError):
  """No checkpoint of a run can be restored."""


def restore_model_state(
  manager: ocp.CheckpointManager, model_cfg: ModelConfig, mesh: Mesh, *, step: int | None = None
) -> ModelState:
  """Only the model of a checkpoint (latest, or `step`): no optimizer needed."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{manager.directory}: no checkpoint to evaluate")
  target = _replicated_like(abstract_model_state(model_cfg), mesh)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{manager.directory}: checkpoint {step} cannot be restored ({_one_line(e)})") from None
  return restored["model"]
