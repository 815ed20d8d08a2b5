"""Stopping for preemption: every process agrees on one step, saves it, and the run exits (143).

Several processes: JAX's coordination service owns SIGTERM (its preemption notifier); a notice
to any process reaches all, and Orbax's `reached_preemption(step)` answers True on every
process at the same step. This module installs no handler then, which would replace JAX's.
One process: there is no coordination service, so SIGTERM (a scheduler's notice) and SIGINT
(Ctrl-C) set a flag here instead; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING

import jax

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionFlag:
  """Use as a context manager around the training loop; ask `reached(manager, step)` each step."""

  def __init__(self) -> None:
    self._raised = False
    self._previous: dict[int, object] = {}

  def __enter__(self) -> PreemptionFlag:
    if jax.process_count() == 1:
      try:
        for sig in _SIGNALS:
          self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: keep the default behaviour
        self._previous.clear()
    return self

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self._raised and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self._raised = True

  def __exit__(self, *exc: object) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  def reached(self, manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether to save and stop after `step`; every process gets the same answer."""
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self._raised
