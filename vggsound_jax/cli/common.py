"""What the commands share: quiet library logs, one line per user error, start-up, results.

Every absl command runs through `run_app`: library INFO logs (Orbax, JAX, TFDS) are hidden
unless `--verbosity` is given (absl's own flag: `--verbosity=0` shows INFO), and an error the
user can fix (a bad file, a bad config value, a missing data set) is printed as one line,
`error: ...`, with exit code 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import ml_collections
from absl import app, flags, logging

from vggsound_jax.errors import UserError

_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error instead of one line.")

# Errors whose message is all the user needs: "PATH: problem", "config.FIELD: problem".
USER_ERRORS = (UserError, ValueError, OSError)
_NOISY_LOGGERS = ("jax", "orbax", "absl", "tensorflow", "tensorflow_datasets", "grain")


def quiet_library_logs(verbose: bool = False) -> None:
  """Hides the INFO lines of the libraries; `verbose` keeps them."""
  if verbose:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.set_verbosity(logging.WARNING)
  for name in _NOISY_LOGGERS:
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def run_app(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, with quiet logs and one line per user error."""

  def wrapped(argv: list[str]) -> None:
    quiet_library_logs(verbose=flags.FLAGS["verbosity"].present)
    try:
      main(argv)
    except USER_ERRORS as e:
      if _DEBUG.value:
        raise
      message = " ".join(str(e).split()) or type(e).__name__
      print(f"error: {message}", file=sys.stderr)
      sys.exit(1)

  app.run(wrapped)


def start(multiprocess: bool) -> None:
  """Joins a multi-process run if asked, and caches compiled programs on disk."""
  from vggsound_jax import sharding  # noqa: PLC0415 - keeps --help fast
  from vggsound_jax.inference import enable_compilation_cache  # noqa: PLC0415

  sharding.initialize_distributed(force=multiprocess)
  enable_compilation_cache()


def print_results(results: dict[str, dict], config: ml_collections.ConfigDict, workdir: str) -> None:
  """Each split's metrics, beside the paper's for the config's row; process 0 only."""
  from vggsound_jax import evaluation, sharding  # noqa: PLC0415

  if not sharding.is_main_process():
    return
  for split, metrics in results.items():
    print(evaluation.format_results(split, metrics, config.reported))
    print(f"  written to {Path(workdir) / 'eval' / split}")
