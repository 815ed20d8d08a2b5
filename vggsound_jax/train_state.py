"""The train state and the one jitted step that advances it.

The train state is a pytree: `{"step", "model", "opt_state", "rng"}`, `model` being the
`ModelState` (`{"params", "batch_stats"}`) every part of the project uses. `train_step(state,
batch)` is a pure function of it, jitted with the state replicated and the batch sharded over
the mesh's data axis (`sharding.py`). The log-spectrogram is computed inside the step from the
int16 waveforms, so only 2 bytes per sample cross from host to device. The per-step RNG is
`fold_in(rng, step)`, so a resumed run draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from vggsound_jax import augment as augment_lib
from vggsound_jax import sharding as sharding_lib
from vggsound_jax.errors import ConfigError
from vggsound_jax.models import GraphDefs, ModelConfig, Network, build_model, frontend, merge_model, split_model

TrainState = dict  # {"step", "model": {"params", "batch_stats"}, "opt_state", "rng", "first_nonfinite_step"}
NONFINITE_POLICIES = ("stop", "skip")
TrainStep = Callable[[TrainState, dict], tuple[TrainState, dict]]


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """A fresh train state; pure, so it can be jitted or shape-evaluated."""
  _, model_state = split_model(build_model(model_cfg, seed))
  return {
    "step": jnp.zeros((), jnp.int32),
    "model": model_state,
    "opt_state": tx.init(model_state["params"]),
    "rng": jax.random.key_data(jax.random.key(seed + 1)),
    # The first step whose loss or gradients were not finite, -1 while there is none. Kept on
    # the device, so the loop checks it only where it must (before saving), not every step.
    "first_nonfinite_step": jnp.full((), -1, jnp.int32),
  }


def create_train_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int, mesh: Mesh) -> TrainState:
  """A freshly initialised train state, replicated over `mesh`."""
  # One compiled program instead of one per initializer shape: much faster to start.
  return jax.jit(lambda: init_state(model_cfg, tx, seed), out_shardings=sharding_lib.replicated(mesh))()


def make_train_step(
  config: ml_collections.ConfigDict,
  graphs: GraphDefs,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  num_classes: int,
  mesh: Mesh,
) -> TrainStep:
  """The jitted `train_step(state, batch) -> (state, metrics)`; the state is donated.

  A step whose loss, gradients or update are not finite is recorded in `first_nonfinite_step`; with
  `config.nonfinite = "skip"` its update is dropped instead (the step still counts).
  """
  if config.nonfinite not in NONFINITE_POLICIES:
    raise ConfigError("nonfinite", f"{config.nonfinite!r} is not one of {', '.join(NONFINITE_POLICIES)}")
  skip_nonfinite = config.nonfinite == "skip"
  compute_dtype = jnp.dtype(config.model.dtype)
  augment_config = config.augment
  label_smoothing = config.label_smoothing
  model_cfg = ModelConfig.from_config(config.model, num_classes)
  model_input = frontend(model_cfg)
  # sigmoid: binary cross-entropy per class, summed over classes (on the scale of the softmax
  # loss, so the same learning rates apply), for multi-label data (AudioSet, row A).
  sigmoid_loss = model_cfg.output == "sigmoid"
  if model_cfg.arch == "vggish" and (augment_config.freq_masks or augment_config.time_masks):
    raise ConfigError(
      "augment.freq_masks",
      "SpecAugment masks the ResNet's (frequency, time) spectrogram, not VGGish's log-mel patches:"
      " set augment.freq_masks=0 and augment.time_masks=0 (rows A-C do)",
    )

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    inputs = model_input(batch["audio"])
    labels = batch["label"]
    # Multi-label data comes as multi-hot rows (N, C), single-label data as class indices (N,).
    multi_hot = labels.ndim == 2
    targets = labels.astype(jnp.float32) if multi_hot else jax.nn.one_hot(labels, num_classes)
    # Augmentation sees the input without its channel axis: (N, 257, frames) for a ResNet.
    features, targets = augment_lib.augment(rng, inputs[..., 0], targets, augment_config)
    if label_smoothing > 0:
      targets = optax.smooth_labels(targets, label_smoothing)
    inputs = features[..., None].astype(compute_dtype)

    model = merge_model(graphs.train, state["model"])

    def loss_fn(model: Network) -> tuple[jax.Array, jax.Array]:
      logits = model(inputs)
      if sigmoid_loss:
        return optax.sigmoid_binary_cross_entropy(logits, targets).sum(axis=-1).mean(), logits
      return optax.softmax_cross_entropy(logits, targets).mean(), logits

    # The batch is sharded over the mesh: the mean loss, and so the gradients and the
    # BatchNorm statistics, are over the global batch; the compiler adds the all-reduces.
    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (loss, logits), grads = grad_fn(model)
    _, model_state = split_model(model)  # the batch statistics the forward pass updated
    params = state["model"]["params"]
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    model_state["params"] = optax.apply_updates(params, updates)
    grad_norm = optax.tree.norm(grads)
    # The update too: a finite gradient can still make a non-finite step (a bad learning rate).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
    if skip_nonfinite:
      keep_old = lambda new, old: jnp.where(finite, new, old)
      model_state = jax.tree.map(keep_old, model_state, state["model"])
      opt_state = jax.tree.map(keep_old, opt_state, state["opt_state"])
      first_nonfinite = state["first_nonfinite_step"]
    else:
      first_nonfinite = jnp.where(
        (state["first_nonfinite_step"] < 0) & ~finite, state["step"] + 1, state["first_nonfinite_step"]
      )
    new_state = dict(
      state, step=state["step"] + 1, model=model_state, opt_state=opt_state, first_nonfinite_step=first_nonfinite
    )
    metrics = {
      "loss": loss,
      # Multi-label: the top class is one of the clip's.
      "accuracy": jnp.mean(
        jnp.take_along_axis(labels, jnp.argmax(logits, axis=-1)[:, None], axis=-1)[:, 0] > 0
        if multi_hot
        else jnp.argmax(logits, axis=-1) == labels
      ),
      "grad_norm": grad_norm,
      "learning_rate": schedule(state["step"]),
      "nonfinite": (~finite).astype(jnp.int32),
    }
    return new_state, metrics

  replicated = sharding_lib.replicated(mesh)
  return jax.jit(
    train_step,
    in_shardings=(replicated, sharding_lib.batch_sharding(mesh)),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
