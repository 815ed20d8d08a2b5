"""Stopping for preemption: SIGTERM asks the training loop to save a checkpoint and exit."""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING

import jax

if TYPE_CHECKING:
  import orbax.checkpoint as ocp


class PreemptionFlag:
  """Set by SIGTERM in a single process; several processes ask Orbax, which syncs them."""

  def __init__(self) -> None:
    self._raised = False
    self._previous = None

  def __enter__(self) -> PreemptionFlag:
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: keep the default behaviour
      self._previous = None
    return self

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del signum, frame
    self._raised = True

  def __exit__(self, *exc: object) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether to stop after `step`; every process gets the same answer."""
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self._raised
