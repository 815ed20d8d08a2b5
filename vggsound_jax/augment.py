"""On-device training augmentation: SpecAugment masks and mixup, pure functions of (rng, batch).

Both run inside the jitted train step on the standardised log-spectrogram, so they cost no
host time. The spectrogram has zero mean per clip, hence masks fill with 0 (the clip mean).
Evaluation never calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  import ml_collections


def _masks(rng: jax.Array, batch: int, length: int, num_masks: int, max_width: int) -> jax.Array:
  """(batch, length) bool, True inside any of `num_masks` random spans of width < max_width."""
  if num_masks == 0 or max_width == 0:
    return jnp.zeros((batch, length), bool)
  width_rng, start_rng = jax.random.split(rng)
  widths = jax.random.randint(width_rng, (batch, num_masks, 1), 0, max_width + 1)
  starts = jax.random.randint(start_rng, (batch, num_masks, 1), 0, length)
  starts = jnp.minimum(starts, length - widths)
  positions = jnp.arange(length)
  inside = (positions >= starts) & (positions < starts + widths)
  return jnp.any(inside, axis=1)


def spec_augment(
  rng: jax.Array,
  spectrogram: jax.Array,
  *,
  freq_masks: int,
  freq_mask_width: int,
  time_masks: int,
  time_mask_width: int,
) -> jax.Array:
  """SpecAugment (Park et al. 2019) without time warping on (N, F, T) spectrograms."""
  n, f, t = spectrogram.shape
  freq_rng, time_rng = jax.random.split(rng)
  masked = (
    _masks(freq_rng, n, f, freq_masks, freq_mask_width)[:, :, None]
    | _masks(time_rng, n, t, time_masks, time_mask_width)[:, None, :]
  )
  return jnp.where(masked, jnp.zeros((), spectrogram.dtype), spectrogram)


def mixup(rng: jax.Array, spectrogram: jax.Array, targets: jax.Array, *, alpha: float) -> tuple[jax.Array, jax.Array]:
  """Mixes every clip with another of the batch, one Beta(alpha, alpha) weight per batch."""
  lam_rng, perm_rng = jax.random.split(rng)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  # max(lam, 1 - lam): the first clip dominates, so its label stays the majority one.
  lam = jnp.maximum(lam, 1.0 - lam)
  perm = jax.random.permutation(perm_rng, spectrogram.shape[0])
  mixed = lam * spectrogram + (1.0 - lam) * spectrogram[perm]
  return mixed.astype(spectrogram.dtype), lam * targets + (1.0 - lam) * targets[perm]


def augment(
  rng: jax.Array, spectrogram: jax.Array, targets: jax.Array, config: ml_collections.ConfigDict
) -> tuple[jax.Array, jax.Array]:
  """Applies what `config` (the config's `augment` block) turns on; a no-op when all is off."""
  spec_rng, mix_rng = jax.random.split(rng)
  if config.freq_masks or config.time_masks:
    spectrogram = spec_augment(
      spec_rng,
      spectrogram,
      freq_masks=config.freq_masks,
      freq_mask_width=config.freq_mask_width,
      time_masks=config.time_masks,
      time_mask_width=config.time_mask_width,
    )
  if config.mixup_alpha > 0:
    spectrogram, targets = mixup(mix_rng, spectrogram, targets, alpha=config.mixup_alpha)
  return spectrogram, targets
