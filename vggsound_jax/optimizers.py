"""The optimizer and learning-rate schedule of a config (fields `optimizer` and `schedule`)."""

from __future__ import annotations

import math

import jax
import ml_collections
import optax


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
  opt = config.optimizer

  def decay_mask(params: optax.Params) -> optax.Params:
    # Decay only kernels (ndim > 1): decaying BatchNorm scales and biases only hurts.
    return jax.tree.map(lambda p: p.ndim > 1, params)

  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.name == "sgd":
    if opt.weight_decay > 0:
      parts.append(optax.add_decayed_weights(opt.weight_decay, decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
  elif opt.name == "adamw":
    parts.append(optax.adamw(schedule, b1=opt.momentum, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask))
  else:
    raise ValueError(f"config.optimizer.name: unknown optimizer {opt.name!r} (expected sgd or adamw)")
  return optax.chain(*parts)
