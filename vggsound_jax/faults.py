"""Ending every process of a multi-process run soon after one of them fails.

A process that raises reports its error in the coordination service's key-value store
(`fail`); a process that dies (SIGKILL, an OOM kill, a lost host) drops out of the service's
live processes, at once when its connection closes, or after `heartbeat_timeout_seconds`
without a heartbeat. A thread in every process (`watch`) looks for either every
`POLL_SECONDS` and ends its process with one line naming the failed one: nobody waits at a
collective or a barrier for a process that will never come. Checkpoints are written to a
temporary directory and renamed when complete, so the newest complete one stays usable.

JAX's client would abort the process with a fatal-error dump when the service reports a dead
peer; the run is therefore started "recoverable" (the service reports nothing, the watcher
decides), which also makes JAX's shutdown stop waiting for the others. A normal exit waits for
them here instead (`_exit_together`): process 0 hosts the service and leaves last.
The one case left to JAX: process 0 itself dying takes the service with it, and JAX's client
then aborts the others at once (exit 134, a few lines of JAX's own).
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import sys
import threading
import time

import jax

# How often each process looks for a failed one: the delay between a failure and every exit.
POLL_SECONDS = 1.0
# Keys in the coordination service's key-value store.
_FAILED = "vggsound_jax/failed/"  # + process index: its one-line error
_EXITED = "vggsound_jax/exited/"  # + process index: it is leaving normally
_EXIT_BARRIER = "vggsound_jax/exit"
# A normal exit waits this long for the slowest process to finish its work (writing the
# evaluation, say); a failure ends the wait sooner through the watcher.
EXIT_WAIT_SECONDS = 600
# Process 0 waits up to this long for the others to leave before its exit ends the service.
_LEAVE_SECONDS = 10 * POLL_SECONDS
EXIT_CODE = 1

_lock = threading.Lock()  # whoever holds it is ending the process: one line, one exit
_stop = threading.Event()
_state: dict = {}


def enable_recovery() -> None:
  """Before `jax.distributed.initialize`: a dead peer is the watcher's to report, not a fatal error."""
  jax.config.update("jax_enable_recoverability", True)


def _client():  # noqa: ANN202
  from jax._src import distributed as jax_distributed  # noqa: PLC0415 - private: JAX exposes no public handle

  return jax_distributed.global_state.client


def watching() -> bool:
  return bool(_state)


def watch() -> None:
  """Starts the watcher of a multi-process run (after `jax.distributed.initialize`)."""
  if jax.process_count() == 1 or _state:
    return
  _state.update(client=_client(), index=jax.process_index(), count=jax.process_count())
  # Python's fatal-error handler (absl turns it on) adds a dump of every thread and extension
  # module to any abort of JAX's; the one line here says what happened.
  faulthandler.disable()
  threading.Thread(target=_watch, daemon=True, name="vggsound-fault-watch").start()
  atexit.register(_exit_together)  # after JAX's own atexit (registered on import), so it runs before it


def _others() -> list[int]:
  return [i for i in range(_state["count"]) if i != _state["index"]]


def _indices(entries: list[tuple[str, str]]) -> dict[int, str]:
  return {int(key.rsplit("/", 1)[1]): value for key, value in entries}


def _failed_peer() -> tuple[int, str] | None:
  """(index, what happened) of another process that failed or died; None when all are well.

  Raises when the coordination service cannot be reached.
  """
  client = _state["client"]
  failed = _indices(client.key_value_dir_get(_FAILED))
  for index in _others():
    if index in failed:
      return index, f"failed: {failed[index]}"
  live = set(client.get_live_nodes(list(range(_state["count"]))))
  exited = set(_indices(client.key_value_dir_get(_EXITED)))
  for index in _others():
    if index not in live and index not in exited:
      return index, "stopped (killed, out of memory, or its host lost)"
  return None


def _watch() -> None:
  while not _stop.wait(POLL_SECONDS):
    try:
      peer = _failed_peer()
    except Exception:  # noqa: BLE001 - the service is gone, and with it process 0
      peer = 0, "stopped (its coordination service cannot be reached)"
    if peer is not None:
      _end(f"process {peer[0]} {peer[1]}")


def _end(message: str, *, blocking: bool = False) -> None:
  """Prints `error: MESSAGE (stopping process I)` and exits; returns if another thread already is."""
  if not _lock.acquire(blocking=blocking):
    return
  _stop.set()
  print(f"error: {message} (stopping process {_state['index']})", file=sys.stderr, flush=True)
  sys.stdout.flush()
  if _state["index"] == 0:
    _wait_for_others_to_leave(_LEAVE_SECONDS)

  os._exit(EXIT_CODE)  # the others will not join a barrier or JAX's shutdown: do not wait for them


def fail(message: str, details: str = "") -> None:
  """Ends this process after an error, telling the others: every process exits within seconds.

  If another process has died meanwhile (a collective that lost its peer raised here), that
  process is named instead; otherwise `details` (a traceback) is printed before the line.
  Never returns.
  """
  peer = None
  try:
    time.sleep(POLL_SECONDS)  # the service learns of a dead peer about when a collective does
    peer = _failed_peer()
    if peer is None or not peer[1].startswith("stopped"):
      peer = None
      _state["client"].key_value_set(_FAILED + str(_state["index"]), message, allow_overwrite=True)
  except Exception:  # noqa: BLE001 - the service is gone; the others find that out themselves
    pass
  if details and not peer:
    print(details, file=sys.stderr, end="")
  _end(f"process {peer[0]} {peer[1]}" if peer else message, blocking=True)


def _wait_for_others_to_leave(seconds: float) -> None:
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    try:
      if set(_state["client"].get_live_nodes(list(range(_state["count"])))) <= {0}:
        return
    except Exception:  # noqa: BLE001
      return
    time.sleep(0.05)


def _exit_together() -> None:
  """A normal exit: wait for the others at a barrier (still watched), then process 0 leaves last."""
  client = _state["client"]
  try:
    client.key_value_set(_EXITED + str(_state["index"]), "", allow_overwrite=True)
    client.wait_at_barrier(_EXIT_BARRIER, int(EXIT_WAIT_SECONDS * 1000))
  except Exception as e:  # noqa: BLE001 - a failing peer or a dead service: leave anyway
    print(f"warning: the other processes did not all finish ({str(e).strip().splitlines()[0]})", file=sys.stderr)
  if not _lock.acquire(blocking=False):  # the watcher is ending this process
    return
  _stop.set()
  if _state["index"] == 0:
    _wait_for_others_to_leave(EXIT_WAIT_SECONDS)
