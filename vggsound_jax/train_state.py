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
from vggsound_jax.models import GraphDefs, ModelConfig, ResNet, build_model, merge_model, split_model
from vggsound_jax.spectrogram import log_spectrogram

TrainState = dict  # {"step", "model": {"params", "batch_stats"}, "opt_state", "rng"}
TrainStep = Callable[[TrainState, dict], tuple[TrainState, dict]]


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """A fresh train state; pure, so it can be jitted or shape-evaluated."""
  _, model_state = split_model(build_model(model_cfg, seed))
  return {
    "step": jnp.zeros((), jnp.int32),
    "model": model_state,
    "opt_state": tx.init(model_state["params"]),
    "rng": jax.random.key_data(jax.random.key(seed + 1)),
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
  """The jitted `train_step(state, batch) -> (state, metrics)`; the state is donated."""
  compute_dtype = jnp.dtype(config.model.dtype)
  augment_config = config.augment
  label_smoothing = config.label_smoothing

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    spectrogram = log_spectrogram(batch["audio"])
    labels = batch["label"]
    targets = jax.nn.one_hot(labels, num_classes)
    spectrogram, targets = augment_lib.augment(rng, spectrogram, targets, augment_config)
    if label_smoothing > 0:
      targets = optax.smooth_labels(targets, label_smoothing)
    inputs = spectrogram[..., None].astype(compute_dtype)

    model = merge_model(graphs.train, state["model"])

    def loss_fn(model: ResNet) -> tuple[jax.Array, jax.Array]:
      logits = model(inputs)
      return optax.softmax_cross_entropy(logits, targets).mean(), logits

    # The batch is sharded over the mesh: the mean loss, and so the gradients and the
    # BatchNorm statistics, are over the global batch; the compiler adds the all-reduces.
    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (loss, logits), grads = grad_fn(model)
    _, model_state = split_model(model)  # the batch statistics the forward pass updated
    params = state["model"]["params"]
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    model_state["params"] = optax.apply_updates(params, updates)
    new_state = dict(state, step=state["step"] + 1, model=model_state, opt_state=opt_state)
    metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels),
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": schedule(state["step"]),
    }
    return new_state, metrics

  replicated = sharding_lib.replicated(mesh)
  return jax.jit(
    train_step,
    in_shardings=(replicated, sharding_lib.batch_sharding(mesh)),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
