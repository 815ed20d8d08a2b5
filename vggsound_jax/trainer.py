"""Data-parallel training: one jitted train step over a device mesh, Orbax checkpoints, resume.

The model lives as pure pytrees (`nnx.split`): the train state is a dict of
`step`, `params`, `batch_stats`, `opt_state` and `rng`, and `train_step(state, batch)` is a
pure function of it, jitted with the state replicated and the batch sharded over the mesh's
data axis (see `sharding.py`). The log-spectrogram is computed inside the step from the int16
waveforms, so only 2 bytes per sample cross from host to device.

Checkpoints (`WORKDIR/checkpoints`) hold the train state and the Grain iterator's position,
so a restarted run continues with exactly the batches it would have seen: the per-step RNG
is `fold_in(rng, step)`, and XLA on one device kind is deterministic, so a run killed at any
point and restarted ends with the parameters of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from vggsound_jax import augment as augment_lib
from vggsound_jax import evaluation
from vggsound_jax import sharding as sharding_lib
from vggsound_jax.models import ModelConfig, build_model
from vggsound_jax.spectrogram import log_spectrogram

TrainState = dict  # {"step", "params", "batch_stats", "opt_state", "rng"}


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass
class Data:
  """What a run reads: the class names and random-access sources per split."""
  class_names: tuple[str, ...]
  train: Sequence[dict] | None
  eval: dict[str, Sequence[dict]]


def load_data(config: ml_collections.ConfigDict, *, train: bool = True) -> Data:
  """Opens the configured data set, building the synthetic one on first use."""
  from vggsound_jax import input_pipeline  # needs TFDS; imported only when data is read

  data_dir = os.path.expanduser(config.data.data_dir)
  if config.data.config == "synthetic":
    input_pipeline.ensure_synthetic(data_dir)
  names = tuple(input_pipeline.class_names(data_dir, config.data.config))
  train_source = (input_pipeline.data_source(data_dir, config.data.train_split, config.data.config)
                  if train else None)
  eval_sources = {split: input_pipeline.data_source(data_dir, split, config.data.config)
                  for split in config.eval.splits}
  return Data(names, train_source, eval_sources)


def make_train_iterator(config, source, *, process_index=None, process_count=None):
  from vggsound_jax import input_pipeline

  loader = input_pipeline.train_loader(
      source, global_batch_size=config.batch_size, seed=config.seed,
      num_samples=config.data.num_samples, crop_samples=config.data.crop_samples or None,
      worker_count=config.data.worker_count,
      shard_index=jax.process_index() if process_index is None else process_index,
      shard_count=jax.process_count() if process_count is None else process_count)
  return iter(loader)


def make_eval_batches(config, source):
  from vggsound_jax import input_pipeline

  loader = input_pipeline.eval_loader(
      source, global_batch_size=config.eval.batch_size, num_samples=config.eval.num_samples,
      worker_count=config.data.worker_count,
      shard_index=jax.process_index(), shard_count=jax.process_count())
  return iter(loader)


# ----------------------------------------------------------------------------- model and optimizer

def model_config(config: ml_collections.ConfigDict, num_classes: int) -> ModelConfig:
  m = config.model
  return ModelConfig(depth=m.depth, head=m.head, num_classes=num_classes, width=m.width,
                     num_clusters=m.num_clusters, dtype=m.dtype)


def num_train_steps(config: ml_collections.ConfigDict, num_train_clips: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, math.ceil(config.num_epochs * num_train_clips / config.batch_size))


def make_schedule(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: float):
  peak = config.optimizer.learning_rate
  if config.optimizer.reference_batch_size > 0:  # linear scaling rule
    peak *= config.batch_size / config.optimizer.reference_batch_size
  warmup = min(int(round(config.schedule.warmup_epochs * steps_per_epoch)), total_steps - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=max(warmup, 0), decay_steps=total_steps,
      end_value=peak * config.schedule.end_learning_rate_factor)


def make_optimizer(config: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  # Decay only kernels (ndim > 1): decaying BatchNorm scales and biases only hurts.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.name == "sgd":
    if opt.weight_decay > 0:
      parts.append(optax.add_decayed_weights(opt.weight_decay, decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
  elif opt.name == "adamw":
    parts.append(optax.adamw(schedule, b1=opt.momentum, b2=opt.b2, weight_decay=opt.weight_decay,
                             mask=decay_mask))
  else:
    raise ValueError(f"config.optimizer.name: unknown optimizer {opt.name!r} (expected sgd or adamw)")
  return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class Graphs:
  """The model's static structure in train mode (batch statistics) and eval mode (running)."""
  train: Any
  eval: Any


def model_graphs(model_cfg: ModelConfig) -> Graphs:
  abstract_model = nnx.eval_shape(lambda: build_model(model_cfg))
  abstract_model.train()
  train_graph = nnx.graphdef(abstract_model)
  abstract_model.eval()
  return Graphs(train_graph, nnx.graphdef(abstract_model))


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """A fresh train state; pure, so it can be jitted or shape-evaluated."""
  model = build_model(model_cfg, seed)
  _, params, batch_stats = nnx.split(model, nnx.Param, ...)
  return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "batch_stats": batch_stats,
      "opt_state": tx.init(params),
      "rng": jax.random.key_data(jax.random.key(seed + 1)),
  }


def create_train_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int,
                       mesh=None) -> tuple[Graphs, TrainState]:
  """The graphs and a freshly initialised train state (replicated over `mesh` when given)."""
  out_shardings = sharding_lib.replicated(mesh) if mesh is not None else None
  # One compiled program instead of one per initializer shape: much faster to start.
  state = jax.jit(lambda: init_state(model_cfg, tx, seed), out_shardings=out_shardings)()
  return model_graphs(model_cfg), state


def _model_states(state: TrainState) -> tuple:
  """What `nnx.merge` takes after a graphdef to rebuild the model."""
  return state["params"], state["batch_stats"]


def model_from_state(graphs: Graphs, state: TrainState) -> nnx.Module:
  """The model in eval mode, holding the state's parameters and running statistics."""
  return nnx.merge(graphs.eval, *_model_states(state))


# ----------------------------------------------------------------------------- steps

def make_train_step(config: ml_collections.ConfigDict, graphs: Graphs, tx, schedule,
                    num_classes: int, mesh) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The jitted `train_step(state, batch) -> (state, metrics)`; the state is donated."""
  compute_dtype = jnp.dtype(config.model.dtype)
  augment_config = config.augment
  label_smoothing = config.label_smoothing

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    spectrogram = log_spectrogram(batch["audio"])
    labels = batch["label"]
    targets = jax.nn.one_hot(labels, num_classes)
    spectrogram, targets = augment_lib.augment(rng, spectrogram, targets, augment_config)
    if label_smoothing > 0:
      targets = optax.smooth_labels(targets, label_smoothing)
    inputs = spectrogram[..., None].astype(compute_dtype)

    model = nnx.merge(graphs.train, *_model_states(state))

    def loss_fn(model):
      logits = model(inputs)
      return optax.softmax_cross_entropy(logits, targets).mean(), logits

    # The batch is sharded over the mesh: the mean loss, and so the gradients and the
    # BatchNorm statistics, are over the global batch; the compiler adds the all-reduces.
    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (loss, logits), grads = grad_fn(model)
    _, _, batch_stats = nnx.split(model, nnx.Param, ...)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = dict(state, step=state["step"] + 1, params=params, batch_stats=batch_stats,
                     opt_state=opt_state)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels),
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state["step"]),
    }
    return new_state, metrics

  replicated = sharding_lib.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_manager(workdir: str | os.PathLike, config=None, *, read_only=False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpoint.max_to_keep if config else None,
      save_interval_steps=config.checkpoint.save_interval_steps if config else 1,
      read_only=read_only)
  return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def abstract_state(state: TrainState, mesh) -> TrainState:
  replicated = sharding_lib.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)


def restore_state(manager: ocp.CheckpointManager, state: TrainState, mesh, *, step=None,
                  data_iterator=None) -> TrainState:
  """The checkpointed train state (and, if given, sets the iterator to its saved position)."""
  step = manager.latest_step() if step is None else step
  items = {"state": ocp.args.StandardRestore(abstract_state(state, mesh))}
  if data_iterator is not None:
    import grain.checkpoint
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def _save(manager, step, state, data_iterator, *, force=False) -> bool:
  import grain.checkpoint
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)),
      force=force)


class _PreemptionFlag:
  """Set by SIGTERM; single-process runs poll it (multi-process ones ask Orbax instead)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: rely on the default behaviour
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------------------- the loop

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       data: Data | None = None) -> dict:
  """Trains (resuming from WORKDIR/checkpoints), exports WORKDIR/model, evaluates every split.

  Returns {split: metrics} of the final evaluation, or {"preempted": step} when SIGTERM
  stopped the run after saving a checkpoint.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = sharding_lib.is_main_process()
  data = data or load_data(config)
  mesh = sharding_lib.make_mesh()
  sharding_lib.local_batch_size(config.batch_size)  # fails early on a bad batch size

  num_classes = len(data.class_names)
  total_steps = num_train_steps(config, len(data.train))
  steps_per_epoch = len(data.train) / config.batch_size
  schedule = make_schedule(config, total_steps, steps_per_epoch)
  tx = make_optimizer(config, schedule)
  model_cfg = model_config(config, num_classes)
  graphs, state = create_train_state(model_cfg, tx, config.seed, mesh)
  train_step = make_train_step(config, graphs, tx, schedule, num_classes, mesh)

  data_iterator = make_train_iterator(config, data.train)
  manager = checkpoint_manager(workdir, config)
  start_step = 0
  if manager.latest_step() is not None:
    state = restore_state(manager, state, mesh, data_iterator=data_iterator)
    start_step = int(state["step"])
    logging.info("Resumed from %s at step %d", manager.directory, start_step)

  writer = _summary_writer(workdir) if is_main else None
  progress = _progress_bar(total_steps, start_step, disable=not is_main)
  pending, clips_seen, interval_start = [], 0, time.perf_counter()
  step = start_step
  with _PreemptionFlag() as preemption:
    while step < total_steps:
      batch = sharding_lib.shard_batch(next(data_iterator), mesh)
      state, metrics = train_step(state, {"audio": batch["audio"], "label": batch["label"]})
      step += 1
      pending.append(metrics)
      clips_seen += config.batch_size
      progress.update(1)

      saved = _save(manager, step, state, data_iterator, force=step == total_steps)

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
        _evaluate_all(config, data, graphs.eval, _model_states(state), mesh, workdir,
                      writer=writer, step=step, write_files=False)

      preempted = (manager.reached_preemption(step) if jax.process_count() > 1
                   else preemption.raised)
      if preempted and step < total_steps:
        if not saved:
          _save(manager, step, state, data_iterator, force=True)
        manager.wait_until_finished()
        progress.close()
        logging.warning("Preempted: saved step %d to %s", step, manager.directory)
        return {"preempted": step}
  progress.close()
  manager.wait_until_finished()

  _export_model(graphs, state, data.class_names, workdir / "model", config)
  results = _evaluate_all(config, data, graphs.eval, _model_states(state), mesh, workdir,
                          writer=writer, step=step, write_files=True)
  if writer:
    writer.close()
  manager.close()
  return results


def _evaluate_all(config, data, graphdef, model_states, mesh, workdir, *, writer=None, step=0,
                  write_files):
  """Evaluates every configured split; with `write_files`, writes WORKDIR/eval/<split>/."""
  eval_step = evaluation.make_eval_step(graphdef, mesh)
  results = {}
  for split, source in data.eval.items():
    predictions = evaluation.predict(
        eval_step, model_states, make_eval_batches(config, source), mesh, description=f"eval {split}")
    if write_files and sharding_lib.is_main_process():
      metrics = evaluation.write_results(
          workdir / "eval" / split, predictions, data.class_names, source=source,
          export_clip_npy=config.eval.export_clip_npy)
    else:
      metrics = evaluation.compute_split_metrics(predictions)
    results[split] = metrics
    if writer:
      for key, value in metrics.items():
        if np.isfinite(value):
          writer.add_scalar(f"eval_{split}/{key}", value, step)
      writer.flush()
  return results


def _export_model(graphs, state, class_names, directory, config):
  """The final model in the converter's format, for predict.py and evaluate.py --checkpoint.

  Every process calls it: Orbax writes replicated arrays from the primary host.
  """
  from vggsound_jax.checkpoint import save_model

  save_model(directory, model_from_state(graphs, state), class_names=list(class_names),
             source={"trained_by": "vggsound_jax.trainer", "step": int(state["step"]),
                     "config": json.loads(config.to_json_best_effort())},
             overwrite=True)


def _summary_writer(workdir: Path):
  from tensorboardX import SummaryWriter
  return SummaryWriter(str(workdir))


def _progress_bar(total: int, initial: int, disable: bool):
  import tqdm
  return tqdm.tqdm(total=total, initial=initial, desc="train", unit="step", disable=disable,
                   dynamic_ncols=True, smoothing=0.1)


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
             checkpoint: str | os.PathLike | None = None, step: int | None = None,
             data: Data | None = None) -> dict:
  """Evaluates a run's checkpoint (latest, or `step`) or a converted model directory.

  Writes WORKDIR/eval/<split>/ and returns {split: scalar metrics}.
  """
  workdir = Path(workdir)
  data = data or load_data(config, train=False)
  mesh = sharding_lib.make_mesh()
  if checkpoint is not None:
    from vggsound_jax.checkpoint import load_model

    model, metadata = load_model(checkpoint, dtype=config.model.dtype)
    if tuple(metadata["class_names"]) != tuple(data.class_names):
      raise ValueError(
          f"{checkpoint}: the model's {len(metadata['class_names'])} classes are not the data's "
          f"{len(data.class_names)} classes (data config {config.data.config!r})")
    graphdef, model_state = nnx.split(model)  # load_model returns it in eval mode
    model_states = (jax.device_put(model_state, sharding_lib.replicated(mesh)),)
  else:
    manager = checkpoint_manager(workdir, read_only=True)
    if manager.latest_step() is None:
      raise FileNotFoundError(f"{manager.directory}: no checkpoint to evaluate")
    schedule = make_schedule(config, 1, 1.0)  # the schedule does not shape the state
    tx = make_optimizer(config, schedule)
    graphs, state = create_train_state(model_config(config, len(data.class_names)), tx, config.seed)
    state = restore_state(manager, state, mesh, step=step)
    graphdef, model_states = graphs.eval, _model_states(state)
  return _evaluate_all(config, data, graphdef, model_states, mesh, workdir, write_files=True)
