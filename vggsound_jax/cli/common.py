"""What the train and evaluate commands share: start-up and the printed results."""

from __future__ import annotations

from pathlib import Path

import ml_collections
from absl import logging


def start(multiprocess: bool) -> None:
  """Joins a multi-process run if asked, caches compiled programs, quiets library logs."""
  from vggsound_jax import sharding  # noqa: PLC0415 - keeps --help fast
  from vggsound_jax.inference import enable_compilation_cache  # noqa: PLC0415

  sharding.initialize_distributed(force=multiprocess)
  enable_compilation_cache()
  logging.set_verbosity(logging.WARNING)


def print_results(results: dict[str, dict], config: ml_collections.ConfigDict, workdir: str) -> None:
  """Each split's metrics, beside the paper's for the config's row; process 0 only."""
  from vggsound_jax import evaluation, sharding  # noqa: PLC0415

  if not sharding.is_main_process():
    return
  for split, metrics in results.items():
    print(evaluation.format_results(split, metrics, config.reported))
    print(f"  written to {Path(workdir) / 'eval' / split}")
