"""The optimizer and learning-rate schedule of a config (fields `optimizer` and `schedule`)."""

from __future__ import annotations

import functools
import math

import jax
import ml_collections
import optax

from vggsound_jax.models.config import HEAD_MODULES

HEAD_GROUP, BACKBONE_GROUP = "head", "backbone"


def num_train_steps(config: ml_collections.ConfigDict, num_train_clips: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, math.ceil(config.num_epochs * num_train_clips / config.batch_size))


def make_schedule(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: float) -> optax.Schedule:
  """Linear warmup, then cosine decay; the peak follows the linear scaling rule if asked."""
  peak = config.optimizer.learning_rate
  if config.optimizer.reference_batch_size > 0:
    peak *= config.batch_size / config.optimizer.reference_batch_size
  warmup = min(int(round(config.schedule.warmup_epochs * steps_per_epoch)), total_steps - 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=max(warmup, 0),
    decay_steps=total_steps,
    end_value=peak * config.schedule.end_learning_rate_factor,
  )


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer`; with `config.finetune` asking for it, the classifier
  layer and the backbone as two groups (the backbone at a multiple of the rate, or frozen)."""
  opt = config.optimizer
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  finetune = config.get("finetune")
  factor = 1.0 if finetune is None else float(finetune.backbone_learning_rate_factor)
  frozen = backbone_frozen(config)
  if not frozen and factor == 1.0:
    return optax.chain(*parts, *_update(opt, schedule))  # the state's structure of runs before the groups
  head = HEAD_MODULES[config.model.arch]
  backbone = optax.set_to_zero() if frozen else optax.chain(*_update(opt, lambda step: factor * schedule(step)))
  groups = {HEAD_GROUP: optax.chain(*_update(opt, schedule)), BACKBONE_GROUP: backbone}
  parts.append(optax.multi_transform(groups, functools.partial(param_groups, head=head)))
  return optax.chain(*parts)


def backbone_frozen(config: ml_collections.ConfigDict) -> bool:
  """Whether only the classifier layer trains (`finetune.freeze_backbone`, or a backbone rate of 0)."""
  finetune = config.get("finetune")
  return finetune is not None and (bool(finetune.freeze_backbone) or finetune.backbone_learning_rate_factor == 0)


def param_groups(params: optax.Params, *, head: str) -> optax.Params:
  """HEAD_GROUP for the parameters of the classifier layer `head`, BACKBONE_GROUP for the others."""

  def group(path: tuple, _: jax.Array) -> str:
    first = path[0]
    name = getattr(first, "key", getattr(first, "name", None))
    return HEAD_GROUP if str(name) == head else BACKBONE_GROUP

  return jax.tree_util.tree_map_with_path(group, params)


def _update(opt: ml_collections.ConfigDict, schedule: optax.Schedule) -> list[optax.GradientTransformation]:
  """Weight decay and the update rule of `opt` at the rates of `schedule`, to chain."""

  def decay_mask(params: optax.Params) -> optax.Params:
    # Decay only kernels (ndim > 1): decaying BatchNorm scales and biases only hurts.
    return jax.tree.map(lambda p: p.ndim > 1, params)

  if opt.name == "sgd":
    sgd = optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov)
    return [optax.add_decayed_weights(opt.weight_decay, decay_mask), sgd] if opt.weight_decay > 0 else [sgd]
  if opt.name == "adamw":
    return [optax.adamw(schedule, b1=opt.momentum, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask)]
  raise ValueError(f"config.optimizer.name: unknown optimizer {opt.name!r} (expected sgd or adamw)")
