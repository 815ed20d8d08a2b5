"""The shapes of error for what a user can fix: one line naming the file or field and the problem.

The commands print these as `error: MESSAGE` without a traceback (`vggsound_jax/cli/common.py`).
"""

from __future__ import annotations

import os


class UserError(Exception):
  """Something the user can fix; the message says what and where, in one line."""


class PathError(UserError, ValueError):
  """A problem with one file or directory; the message is "PATH: problem"."""

  def __init__(self, path: str | os.PathLike, problem: str) -> None:
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{path}: {problem}")


class ConfigError(UserError, ValueError):
  """An invalid config value; the message is "config.FIELD: problem"."""

  def __init__(self, field: str, problem: str) -> None:
    self.field = field
    super().__init__(f"config.{field}: {problem}")


class ConversionError(PathError):
  """A checkpoint that cannot be converted (either converter: ResNet or VGGish)."""
