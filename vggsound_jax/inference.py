"""Classifying waveforms with a trained or converted model: int16 clips -> probabilities."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vggsound_jax.models import ResNet, frontend, merge_model, split_model

CACHE_MAX_BYTES = 4 << 30  # least recently used programs are evicted beyond this
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vggsound_jax" / "jax"


def enable_compilation_cache(cache_dir: str | os.PathLike | None = None) -> None:
  """Keeps compiled programs on disk so that repeated runs skip XLA compilation."""
  cache_dir = Path(cache_dir or os.environ.get("VGGSOUND_JAX_CACHE", DEFAULT_CACHE_DIR))
  cache_dir.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  # A size limit turns on JAX's file lock around every read and write of the cache, so the
  # processes of one run, and runs side by side, never read an entry another is still writing.
  jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)


def forward(model: ResNet, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
  """int16 waveforms (N, T) -> probabilities (N, C) and embeddings (N, D), float32.

  Probabilities are the softmax of the logits, or their sigmoid for a multi-label model
  (`model.config.output`).
  """
  inputs = frontend(model.config)(audio).astype(model.config.dtype)
  logits, embedding = model(inputs, return_embedding=True)
  if model.config.output == "sigmoid":
    return jax.nn.sigmoid(logits), embedding
  return jax.nn.softmax(logits, axis=-1), embedding


class Classifier:
  """A model in eval mode behind one compiled function of a fixed batch size.

  Batches are padded to `batch_size`, so every call reuses the same compiled program.
  """

  def __init__(self, model: ResNet, batch_size: int) -> None:
    model.eval()
    self.batch_size = batch_size
    graphdef, self._state = split_model(model)
    self._forward = jax.jit(lambda state, audio: forward(merge_model(graphdef, state), audio))

  def __call__(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, T) int16 with n <= batch_size -> (probs (n, C), embeddings (n, D)) as numpy."""
    n = audio.shape[0]
    if n > self.batch_size:
      raise ValueError(f"batch of {n} clips exceeds batch_size {self.batch_size}")
    padded = np.zeros((self.batch_size,) + audio.shape[1:], audio.dtype)
    padded[:n] = audio
    probs, embeddings = self._forward(self._state, jnp.asarray(padded))
    return np.asarray(probs)[:n], np.asarray(embeddings)[:n]
