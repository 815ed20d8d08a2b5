"""Classifying waveforms with a trained or converted model: int16 clips -> probabilities."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vggsound_jax.models import Network, forward, merge_model, split_model


class Classifier:
  """A model in eval mode behind one compiled function of a fixed batch size.

  Batches are padded to `batch_size`, so every call reuses the same compiled program.
  """

  def __init__(self, model: Network, batch_size: int) -> None:
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
