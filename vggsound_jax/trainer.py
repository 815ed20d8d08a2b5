"""The training loop: train (resuming from WORKDIR/checkpoints), export, evaluate.

The pieces it strings together each live in their own module: the train state and its jitted
step (`train_state.py`), the optimizer (`optimizers.py`), the data (`input_pipeline.py`),
the run's checkpoints (`checkpoints.py`), preemption (`preemption.py`), the exported model
directory (`model_dir.py`) and evaluation (`evaluation.py`). XLA on one device kind is
deterministic and the checkpoints hold the data iterator's position, so a run killed at any
point and restarted ends with the parameters of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from vggsound_jax import checkpoints, evaluation, input_pipeline, optimizers
from vggsound_jax import sharding as sharding_lib
from vggsound_jax import train_state as train_state_lib
from vggsound_jax.model_dir import save_model
from vggsound_jax.models import ModelConfig, graphdefs, merge_model
from vggsound_jax.preemption import PreemptionFlag


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, data: input_pipeline.Data | None = None
) -> dict:
  """Trains (resuming from WORKDIR/checkpoints), exports WORKDIR/model, evaluates every split.

  Returns {split: metrics} of the final evaluation, or {"preempted": step} when SIGTERM
  stopped the run after saving a checkpoint.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = sharding_lib.is_main_process()
  data = data or input_pipeline.load_data(config)
  mesh = sharding_lib.make_mesh()
  sharding_lib.local_batch_size(config.batch_size)  # fails early on a bad batch size

  num_classes = len(data.class_names)
  total_steps = optimizers.num_train_steps(config, len(data.train))
  schedule = optimizers.make_schedule(config, total_steps, len(data.train) / config.batch_size)
  tx = optimizers.make_optimizer(config, schedule)
  model_cfg = ModelConfig.from_config(config.model, num_classes)
  graphs = graphdefs(model_cfg)
  state = train_state_lib.create_train_state(model_cfg, tx, config.seed, mesh)
  train_step = train_state_lib.make_train_step(config, graphs, tx, schedule, num_classes, mesh)

  data_iterator = input_pipeline.train_iterator(config, data.train)
  manager = checkpoints.checkpoint_manager(workdir, config)
  if manager.latest_step() is not None:
    state = checkpoints.restore(manager, state, mesh, data_iterator=data_iterator)
    logging.info("Resumed from %s at step %d", manager.directory, int(state["step"]))
  start_step = int(state["step"])

  writer = _summary_writer(workdir) if is_main else None
  progress = _progress_bar(total_steps, start_step, disable=not is_main)
  pending, clips_seen, interval_start = [], 0, time.perf_counter()
  step = start_step
  with PreemptionFlag() as preemption:
    while step < total_steps:
      batch = sharding_lib.shard_batch(next(data_iterator), mesh)
      state, metrics = train_step(state, {"audio": batch["audio"], "label": batch["label"]})
      step += 1
      pending.append(metrics)
      clips_seen += config.batch_size
      progress.update(1)

      saved = checkpoints.save(manager, step, state, data_iterator, force=step == total_steps)

      if step % config.log_every_steps == 0 or step == total_steps:
        elapsed = time.perf_counter() - interval_start
        summary = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
        summary["clips_per_second"] = clips_seen / max(elapsed, 1e-9)
        progress.set_postfix(loss=f"{summary['loss']:.3f}", acc=f"{summary['accuracy']:.3f}")
        if writer:
          for key, value in summary.items():
            writer.add_scalar(f"train/{key}", value, step)
          writer.flush()
        pending, clips_seen, interval_start = [], 0, time.perf_counter()

      if config.eval_every_steps > 0 and step % config.eval_every_steps == 0 and step < total_steps:
        evaluation.evaluate_splits(
          config, data, graphs.eval, state["model"], mesh, workdir, write_files=False, writer=writer, step=step
        )

      if preemption.reached(manager, step) and step < total_steps:
        if not saved:
          checkpoints.save(manager, step, state, data_iterator, force=True)
        manager.wait_until_finished()
        progress.close()
        logging.warning("Preempted: saved step %d to %s", step, manager.directory)
        return {"preempted": step}
  progress.close()
  manager.wait_until_finished()

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


def _summary_writer(workdir: Path):
  from tensorboardX import SummaryWriter  # noqa: PLC0415 - only process 0 writes events

  return SummaryWriter(str(workdir))


def _progress_bar(total: int, initial: int, disable: bool):
  import tqdm  # noqa: PLC0415

  return tqdm.tqdm(
    total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True, smoothing=0.1
  )
