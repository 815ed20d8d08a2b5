"""Joining a multi-process run, and what its processes must agree on before any work.

Several processes (a TPU pod slice, a multi-node GPU job, or a few processes on one machine)
run the same command; `initialize` connects them through JAX's coordination service, either
from explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`) or by
detecting the cluster (TPU pod slices, SLURM, Open MPI), as `jax.distributed.initialize()`
does. Each check below fails on every process with the same one-line error, never a hang.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from vggsound_jax import faults
from vggsound_jax.errors import UserError


class LaunchError(UserError):
  """The processes of a run cannot start together (flags, coordinator, config, workdir)."""


def initialize(
  *,
  multiprocess: bool,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int] | None = None,
  timeout_seconds: int = 300,
  heartbeat_timeout_seconds: int = 20,
) -> None:
  """Joins the run's other processes; a no-op for a single process.

  With none of the explicit arguments, `multiprocess` asks JAX to detect the cluster. A
  coordinator that cannot be reached within `timeout_seconds` is one error naming it. Once
  joined, a process that fails or dies ends every process (`faults.py`); one that stops
  sending heartbeats counts as dead after `heartbeat_timeout_seconds`.
  """
  explicit = {
    "--coordinator_address": coordinator_address,
    "--num_processes": num_processes,
    "--process_id": process_id,
  }
  missing = [name for name, value in explicit.items() if value is None]
  if len(missing) not in (0, len(explicit)):
    given = [name for name in explicit if name not in missing]
    raise LaunchError(
      f"{', '.join(given)} given without {', '.join(missing)}: give all three, or none "
      "with --multiprocess to detect the cluster (TPU pod slice, SLURM, Open MPI)"
    )
  if not multiprocess and missing:
    return
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise LaunchError(f"--process_id {process_id} is not in [0, --num_processes={num_processes})")
  where = coordinator_address or "the detected cluster's coordinator"
  # JAX's client aborts the whole process (a C++ fatal error, no exception) when the
  # coordination service cannot be joined in time. So a watchdog of our own gives up first,
  # with one line, and JAX is given a little longer.
  watchdog = threading.Timer(timeout_seconds, _give_up, args=(where, timeout_seconds))
  watchdog.daemon = True
  watchdog.start()
  faults.enable_recovery()
  try:
    jax.distributed.initialize(
      coordinator_address,
      num_processes,
      process_id,
      local_device_ids,
      initialization_timeout=timeout_seconds + _JAX_GRACE_SECONDS,
      heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
  except Exception as e:  # noqa: BLE001 - JAX raises several kinds; the user needs one line
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise LaunchError(f"cannot join the run through {where} ({first_line})") from None
  finally:
    watchdog.cancel()
  faults.watch()


_JAX_GRACE_SECONDS = 30


def _give_up(where: str, timeout_seconds: int) -> None:
  print(
    f"error: cannot join the run through {where} within {timeout_seconds} s: is every process started, "
    "with the same --coordinator_address and --num_processes, and is the address reachable?",
    file=sys.stderr,
    flush=True,
  )
  os._exit(1)  # the main thread is blocked inside JAX's client; nothing else can stop it


def barrier(name: str) -> None:
  """Waits until every process gets here."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _all_processes(value: np.ndarray) -> np.ndarray:
  """Every process's `value`, stacked in process order."""
  if jax.process_count() == 1:
    return value[None]
  return np.asarray(multihost_utils.process_allgather(value))


def _digest(text: str) -> np.ndarray:
  return np.frombuffer(hashlib.sha256(text.encode()).digest()[:16], np.uint32).copy()


def check_same_config(config_json: str) -> None:
  """All processes were started with the same config."""
  digests = _all_processes(_digest(config_json))
  differing = [i for i, d in enumerate(digests) if not np.array_equal(d, digests[0])]
  if differing:
    raise LaunchError(
      f"processes {differing} were started with a config that differs from process 0's: "
      "start every process with the same --config and overrides"
    )


def check_shared_directory(directory: str | os.PathLike) -> None:
  """`directory` is writable and the same directory for every process (a shared file system)."""
  directory = Path(directory)
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise LaunchError(f"{directory}: cannot create the work directory ({e.strerror})") from None
  if not os.access(directory, os.W_OK):
    raise LaunchError(f"{directory}: the work directory is not writable")
  if jax.process_count() == 1:
    return
  token = uuid.uuid4().hex if jax.process_index() == 0 else ""
  token = multihost_utils.broadcast_one_to_all(np.frombuffer(token.encode().ljust(32), np.uint8)).tobytes().decode()
  path = directory / f".shared-check-{token}"
  if jax.process_index() == 0:
    path.write_text(token)
  barrier("shared directory: written")
  seen = np.array([path.is_file() and path.read_text() == token], np.int32)
  everyone = _all_processes(seen)[:, 0]
  barrier("shared directory: read")
  if jax.process_index() == 0:
    path.unlink(missing_ok=True)
  blind = [i for i, ok in enumerate(everyone) if not ok]
  if blind:
    raise LaunchError(
      f"{directory}: processes {blind} do not see what process 0 writes there: the work "
      "directory must be one directory shared by every process (a shared file system)"
    )
