"""What the commands share: quiet library logs, one line per user error, start-up, results.

Every absl command runs through `run_app`: library logs (Orbax, JAX, TFDS) below ERROR are
hidden unless `--verbosity` is given (absl's own flag: `--verbosity=0` shows INFO), and an error the
user can fix (a bad file, a bad config value, a missing data set) is printed as one line,
`error: ...`, with exit code 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import sys
import traceback
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
  logging.set_verbosity(logging.ERROR)
  for name in _NOISY_LOGGERS:
    py_logging.getLogger(name).setLevel(py_logging.ERROR)


def run_app(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, with quiet logs and one line per user error."""

  def wrapped(argv: list[str]) -> None:
    quiet_library_logs(verbose=flags.FLAGS["verbosity"].present)
    try:
      main(argv)
    except USER_ERRORS as e:
      if _DEBUG.value:
        _end_run_if_shared(f"{type(e).__name__}: {_one_line(e)}", traceback_first=True)
        raise
      _end_run_if_shared(_one_line(e))
      print(f"error: {_one_line(e)}", file=sys.stderr)
      sys.exit(1)
    except KeyboardInterrupt:
      if _DEBUG.value:
        raise
      _end_run_if_shared("interrupted")
      print("interrupted", file=sys.stderr)  # what was kept, the command has said
      sys.exit(130)  # the shell's code for Ctrl-C
    except Exception as e:
      _end_run_if_shared(f"{type(e).__name__}: {_one_line(e)}", traceback_first=True)
      raise

  app.run(wrapped, flags_parser=_parse_flags)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _end_run_if_shared(message: str, *, traceback_first: bool = False) -> None:
  """In a multi-process run, tells the other processes and exits (faults.fail): they would
  otherwise wait for this one at their next collective."""
  faults = sys.modules.get("vggsound_jax.faults")  # only a joined run has imported it (and jax)
  if faults is not None and faults.watching():
    faults.fail(message, traceback.format_exc() if traceback_first else "")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad config (a misspelt field, a wrong value type, an error in
  the config file) reported as one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:
    if "--debug" in argv:
      raise
    print(f"error: {_flag_problem(e)}", file=sys.stderr)
    print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
    sys.exit(2)


def _flag_problem(e: Exception) -> str:
  """The last line of what went wrong: config_flags puts a whole traceback in its messages."""
  text = str(e).replace("\\n", "\n").replace("\\'", "'")  # config_flags quotes its messages
  misspelt = re.search(r"'(\w+)'\s*Did you mean \"(\w+)\"", text)
  if misspelt:
    return f"no config field {misspelt.group(1)!r} (did you mean {misspelt.group(2)!r}?)"
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else type(e).__name__


def print_build(report: object, data_path: str | os.PathLike, *, name: str, already_built: bool) -> None:
  """What a data-set build command prints at its end: the build's summary (the stored one when
  the build was already there) and where the data set and its report are."""
  from vggsound_jax.datasets.build import REPORT_NAME  # TFDS: only once a build ran

  if already_built:
    print(f"{name} is already built: nothing done (--overwrite rebuilds it). Its build:")
  print(report.summary())
  print(f"dataset: {data_path}")
  print(f"report: {Path(data_path, REPORT_NAME)}")


def print_results(results: dict[str, dict], config: ml_collections.ConfigDict, workdir: str) -> None:
  """Each split's metrics, beside the paper's for the config's row; process 0 only."""
  from vggsound_jax import evaluation, sharding  # keeps --help fast

  if not sharding.is_main_process():
    return
  for split, metrics in results.items():
    print(evaluation.format_results(split, metrics, config.reported))
    print(f"  written to {Path(workdir) / 'eval' / split}")
