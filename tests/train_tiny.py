"""Trains the tiny config in a process of its own, which sends itself a signal when asked.

  python tests/train_tiny.py WORKDIR [KILL_AT_BATCH SIGNAL]

Used by test_trainer.py's kill-and-resume test: the process must really die, so it cannot run
inside pytest. Prints `RESULT <what train_and_evaluate returned>`.
"""

import os
import sys

from tiny import tiny_config, tiny_data

from vggsound_jax import input_pipeline, trainer
from vggsound_jax.compilation_cache import enable_compilation_cache


class KillAtBatch:
  """Forwards to the Grain iterator; sends `signal` to this process when batch `at` is asked."""

  def __init__(self, iterator, at: int, signal: int):
    self.iterator, self.at, self.signal, self.count = iterator, at, signal, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.count += 1
    if self.count == self.at:
      os.kill(os.getpid(), self.signal)
    return next(self.iterator)

  def __getattr__(self, name):  # get_state / set_state, for the checkpoints
    return getattr(self.iterator, name)


def main(workdir: str, kill_at: int = 0, signal: int = 0) -> None:
  enable_compilation_cache()  # VGGSOUND_JAX_CACHE: shared by the test's processes
  if kill_at:
    make_iterator = input_pipeline.train_iterator
    input_pipeline.train_iterator = lambda *a, **k: KillAtBatch(make_iterator(*a, **k), kill_at, signal)
  result = trainer.train_and_evaluate(tiny_config(10), workdir, data=tiny_data())
  print("RESULT", result)


if __name__ == "__main__":
  main(sys.argv[1], *map(int, sys.argv[2:]))
