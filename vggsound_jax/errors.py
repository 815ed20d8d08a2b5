"""The one shape of error for bad input: a single line naming the file and the problem."""

from __future__ import annotations

import os


class PathError(ValueError):
  """A problem with one file or directory; the message is "PATH: problem"."""

  def __init__(self, path: str | os.PathLike, problem: str) -> None:
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{path}: {problem}")
