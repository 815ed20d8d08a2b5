"""The training loop: train (resuming from WORKDIR/checkpoints), export, evaluate.

The pieces it strings together each live in their own module: the train state and its jitted
step (`train_state.py`), the optimizer (`optimizers.py`), the data (`input_pipeline.py`), the
run's checkpoints (`checkpoints.py`), preemption (`preemption.py`), the processes of a
multi-process run (`distributed.py`), the exported model directory (`model_dir.py`) and
evaluation (`evaluation.py`). Batches are a function of the step and XLA on one device kind is
deterministic, so a run killed at any point and restarted ends with the parameters of an
uninterrupted one.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import Mesh

from vggsound_jax import checkpoints, default_config, distributed, evaluation, input_pipeline, optimizers
from vggsound_jax import sharding as sharding_lib
from vggsound_jax import train_state as train_state_lib
from vggsound_jax.errors import UserError
from vggsound_jax.model_dir import save_model
from vggsound_jax.models import GraphDefs, ModelConfig, graphdefs, merge_model
from vggsound_jax.models.config import HEAD_MODULES
from vggsound_jax.preemption import PreemptionFlag
from vggsound_jax.warm_start import init_from_model_dir


class DivergedError(UserError):
  """The loss or gradients stopped being finite; nothing after the last good checkpoint is kept."""


def check_before_work(config: ml_collections.ConfigDict, workdir: str | os.PathLike, mesh: Mesh) -> None:
  """What must hold before anything is built, compiled or read: one clear line otherwise."""
  default_config.validate(config)
  distributed.check_same_config(config.to_json_best_effort(sort_keys=True))
  sharding_lib.check_batch_size("batch_size", config.batch_size, mesh)
  sharding_lib.check_batch_size("eval.batch_size", config.eval.batch_size, mesh)
  distributed.check_shared_directory(workdir)


def _check_finite(state: train_state_lib.TrainState, manager: ocp.CheckpointManager, step: int) -> None:
  """Stops the run if a step was not finite; a host sync, so only where something is kept."""
  bad = int(state["first_nonfinite_step"])
  if bad >= 0:
    last_good = manager.latest_step()
    kept = f"the last good checkpoint is step {last_good} in {manager.directory}" if last_good else "no checkpoint"
    raise DivergedError(
      f"the loss or gradients were not finite at step {bad} (noticed at step {step}; {kept}): lower "
      "optimizer.learning_rate, or pass --config.nonfinite=skip to drop such steps"
    )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, data: input_pipeline.Data | None = None
) -> dict:
  """Trains (resuming from WORKDIR/checkpoints), exports WORKDIR/model, evaluates every split.

  Returns {split: metrics} of the final evaluation, or {"preempted": step} when SIGTERM
  stopped the run after saving a checkpoint.
  """
  workdir = Path(workdir)
  mesh = sharding_lib.make_mesh()
  check_before_work(config, workdir, mesh)
  is_main = sharding_lib.is_main_process()
  data = data or input_pipeline.load_data(config)

  num_classes = len(data.class_names)
  total_steps = optimizers.num_train_steps(config, len(data.train))
  schedule = optimizers.make_schedule(config, total_steps, len(data.train) / config.batch_size)
  tx = optimizers.make_optimizer(config, schedule)
  model_cfg = ModelConfig.from_config(config.model, num_classes)
  graphs = graphdefs(model_cfg)
  if optimizers.backbone_frozen(config):
    # The backbone in eval mode while training: its BatchNorm statistics stay as loaded too.
    graphs = GraphDefs(train=graphs.eval, eval=graphs.eval)
  state = train_state_lib.create_train_state(model_cfg, tx, config.seed, mesh)
  train_step = train_state_lib.make_train_step(config, graphs, tx, schedule, num_classes, mesh)

  manager = checkpoints.checkpoint_manager(workdir, config)
  restored = checkpoints.restore(manager, state, mesh)
  # init_from starts a fresh run only: once the run has a checkpoint of its own, the warm-start
  # directory is neither read nor needed (it may have been deleted since).
  if restored is not None:
    state = restored
  else:
    new_head = HEAD_MODULES[model_cfg.arch] if config.get("finetune", {}).get("new_head") else None
    state = init_from_model_dir(state, config.init_from, new_head=new_head)
  start_step = int(state["step"])
  if start_step and is_main:
    print(f"resuming from step {start_step} of {total_steps} ({manager.directory})", file=sys.stderr)

  rows = sharding_lib.process_rows(mesh, config.batch_size)
  batches = input_pipeline.train_iterator(config, data.train, rows, start_step=start_step, num_steps=total_steps)
  writer = _summary_writer(workdir) if is_main else None
  progress = _progress_bar(total_steps, start_step, disable=not is_main)
  pending, clips_seen, interval_start = [], 0, time.perf_counter()
  step = start_step
  try:
    with PreemptionFlag() as preemption:
      while step < total_steps:
        batch = sharding_lib.shard_batch(next(batches), mesh)
        state, metrics = train_step(state, {"audio": batch["audio"], "label": batch["label"]})
        step += 1
        pending.append(metrics)
        clips_seen += config.batch_size
        progress.update(1)

        preempted = preemption.reached(manager, step)  # the same answer on every process
        last = step == total_steps
        logging_now = step % config.log_every_steps == 0 or last
        if logging_now or preempted or manager.should_save(step):  # logging_now includes the last step
          _check_finite(state, manager, step)
        saved = checkpoints.save(manager, step, state, force=last or preempted)

        if logging_now:
          elapsed = time.perf_counter() - interval_start
          summary = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
          summary["clips_per_second"] = clips_seen / max(elapsed, 1e-9)
          progress.set_postfix(loss=f"{summary['loss']:.3f}", acc=f"{summary['accuracy']:.3f}")
          if writer:
            for key, value in summary.items():
              writer.add_scalar(f"train/{key}", value, step)
            writer.flush()
          pending, clips_seen, interval_start = [], 0, time.perf_counter()

        if config.eval_every_steps > 0 and step % config.eval_every_steps == 0 and not last:
          evaluation.evaluate_splits(
            config, data, graphs.eval, state["model"], mesh, workdir, write_files=False, writer=writer, step=step
          )

        if preempted and not last:
          if not saved:
            checkpoints.save(manager, step, state, force=True)
          manager.wait_until_finished()
          return {"preempted": step}
  finally:
    progress.close()
    getattr(batches, "close", lambda: None)()  # stops loader worker processes now
    manager.wait_until_finished()

  _check_finite(state, manager, step)
  # Every process calls it: Orbax writes replicated arrays from the primary host.
  save_model(
    workdir / "model",
    merge_model(graphs.eval, state["model"]),
    class_names=list(data.class_names),
    source={"trained_by": "vggsound-train", "step": step, "config": json.loads(config.to_json_best_effort())},
    overwrite=True,
  )
  results = evaluation.evaluate_splits(
    config, data, graphs.eval, state["model"], mesh, workdir, write_files=True, writer=writer, step=step
  )
  if writer:
    writer.close()
  manager.close()
  return results


class _NoTorch(importlib.abc.MetaPathFinder):
  """Makes `import torch` fail, as where PyTorch is not installed."""

  def find_spec(self, name: str, path: object, target: object = None) -> None:
    del path, target
    if name == "torch" or name.startswith("torch."):
      raise ImportError(f"{name} is not imported by training")


def _summary_writer(workdir: Path):  # noqa: ANN202
  """tensorboardX's SummaryWriter, without PyTorch in the process.

  tensorboardX's writer module tries `import torch` on import, only to accept torch tensors too
  (it goes on without it). That would bring all of PyTorch (a second, and its threads and
  memory) into every training process; the values written here are Python floats. So
  tensorboardX is imported with `import torch` failing, as where PyTorch is not installed.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    hide = _NoTorch()
    sys.meta_path.insert(0, hide)
    try:
      import tensorboardX  # noqa: F401, PLC0415
    finally:
      sys.meta_path.remove(hide)
  from tensorboardX import SummaryWriter  # noqa: PLC0415 - after hiding torch from it; process 0 only

  return SummaryWriter(str(workdir))


def _progress_bar(total: int, initial: int, disable: bool):  # noqa: ANN202

  return tqdm.tqdm(
    total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True, smoothing=0.1
  )
