"""A fine-tuning config made concrete: the network of `init_from` with the data's classes.

`configs/transfer.py` leaves the architecture open; `adopt_architecture` copies it from the
model directory that `init_from` names (a converted release model, a VGGSound run, VGGish), so
that its backbone loads, and refuses a clip length that architecture cannot carry.
"""

from __future__ import annotations

import os

import ml_collections

from vggsound_jax import default_config
from vggsound_jax.errors import ConfigError
from vggsound_jax.model_dir import load_metadata

# The fields of `config.model` a model directory's `model_config` decides.
ARCHITECTURE_FIELDS = (
  "arch",
  "depth",
  "head",
  "width",
  "num_clusters",
  "fc_width",
  "embedding_relu",
  "patch_aggregation",
)


def adopt_architecture(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with the architecture of `config.init_from` (unchanged without one).

  Raises ModelCheckpointError for a directory that is not a model, ConfigError for a clip length
  (`data.num_samples`, `data.crop_samples`, `eval.num_samples`) the architecture cannot take.
  """
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked, and the caller's stays as it was
  if config.init_from:
    model_config = load_metadata(_expand(config.init_from)).get("model_config") or {}
    for field in ARCHITECTURE_FIELDS:
      if field in model_config:
        config.model[field] = model_config[field]
    if config.model.arch == "vggish":
      # VGGish takes no SpecAugment (configs/paper.py, rows A-C).
      config.augment.freq_masks = config.augment.time_masks = 0
  try:
    default_config.validate(config)
  except ConfigError as e:
    if config.init_from and e.field in ("data.num_samples", "data.crop_samples"):
      raise ConfigError("init_from", f"{config.init_from} is a {config.model.arch}: {e}") from None
    raise
  return config


def _expand(path: str) -> str:

  return os.path.expanduser(path)
