"""What the directories this project writes share: a SHA256SUMS manifest, and the rule for what
may be replaced. Used by model directories (model_dir.py) and exported models (export.py); it
imports no JAX, so that running an exported model never does.

- `SHA256SUMS` lists the sha256 of every other file, in the format of `sha256sum`
  (`sha256sum -c SHA256SUMS` checks it by hand). Loading checks it first, so a changed,
  truncated, missing or added file is one error naming that file, never a silently wrong model.
- A directory is written to a scratch sibling and renamed into place (`fsync_directory` makes
  the rename durable). `check_target` says whether a path may be written: new, or with
  `overwrite` an empty directory or one this project wrote holding no file its manifest does
  not list; never the current directory or one of its parents, a file, or a symbolic link.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from vggsound_jax.errors import PathError

MANIFEST = "SHA256SUMS"


def files(directory: Path) -> list[str]:
  """Every file under `directory`, as sorted '/'-separated relative paths."""
  return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir())


def sha256(path: Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def manifest_lines(directory: Path) -> list[str]:
  """The manifest of `directory` as it is now, one `sha256  name` line per file."""
  return [f"{sha256(directory / name)}  {name}\n" for name in files(directory) if name != MANIFEST]


def write_manifest(directory: Path) -> None:
  lines = manifest_lines(directory)
  with open(directory / MANIFEST, "w", encoding="utf-8") as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())


def read_manifest(directory: Path, error: type[PathError], what: str) -> dict[str, str]:
  """{name: sha256} of `directory`'s manifest; `error` (naming it) if it is missing or malformed."""
  path = directory / MANIFEST
  entries = {}
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except FileNotFoundError:
    raise error(path, f"missing: the {what} is incomplete (write it again)") from None
  except (OSError, UnicodeDecodeError) as e:
    raise error(path, f"unreadable ({getattr(e, 'strerror', None) or e})") from None
  for number, line in enumerate(lines, 1):
    digest, sep, name = line.partition("  ")
    if not sep or len(digest) != 64 or not name or ".." in name.split("/") or name.startswith("/"):
      raise error(path, f"line {number} is malformed (damaged manifest)")
    entries[name] = digest
  return entries


def verify(directory: Path, error: type[PathError], what: str) -> None:
  """Checks every file against the manifest; raises `error` naming the first bad file."""
  expected = read_manifest(directory, error, what)
  present = set(files(directory)) - {MANIFEST}
  extra = sorted(present - set(expected))
  if extra:
    raise error(directory / extra[0], f"not part of the {what} (absent from {MANIFEST}); remove it")
  for name, digest in expected.items():
    path = directory / name
    if name not in present:
      raise error(path, f"missing (listed in {MANIFEST}): the {what} is damaged")
    try:
      actual = sha256(path)
    except OSError as e:
      raise error(path, f"unreadable ({e.strerror or e})") from None
    if actual != digest:
      raise error(path, f"damaged: its sha256 differs from {MANIFEST} (changed or truncated)")


def check_target(
  directory: str | os.PathLike,
  *,
  overwrite: bool,
  error: type[PathError],
  what: str,
  ours: Callable[[Path], bool],
) -> Path:
  """Raises `error` unless `directory` may be written (see the module doc); `ours(directory)`
  says whether an existing directory is a `what` this project wrote. Returns the absolute path."""
  directory = Path(os.path.abspath(directory))
  a_what = f"{'an' if what[0] in 'aeiou' else 'a'} {what}"
  cwd = Path.cwd().resolve()
  resolved = directory.resolve()
  if resolved == cwd or resolved in cwd.parents:
    raise error(directory, "is the current directory or one of its parents (refusing to replace it)")
  if directory.is_symlink():
    raise error(directory, "is a symbolic link (refusing to replace it; give a new directory)")
  if not directory.exists():
    return directory
  if not overwrite:
    raise error(directory, f"already exists (pass --overwrite to replace {a_what})")
  if not directory.is_dir():
    raise error(directory, f"is a file, not {a_what} (refusing to replace it)")
  if not any(directory.iterdir()):
    return directory
  if not ours(directory):
    raise error(directory, f"is not {a_what} written by vggsound-jax (refusing to replace it; give a new directory)")
  if (directory / MANIFEST).is_file():
    listed = set(read_manifest(directory, error, what)) | {MANIFEST}
    foreign = [name for name in files(directory) if name not in listed]
    if foreign:
      raise error(directory / foreign[0], f"was not written by vggsound-jax (refusing to replace its {what})")
  return directory


def place(saving: Path, directory: Path, replaced: Path) -> None:
  """Renames the finished scratch directory `saving` to `directory`. What is there (empty, or
  what `check_target` allowed) is first moved aside to `replaced` and removed once the new
  one is in place, so a crash between the renames leaves the old one at `replaced`."""
  if directory.exists():
    if any(directory.iterdir()):
      os.rename(directory, replaced)
      os.rename(saving, directory)
      shutil.rmtree(replaced)
    else:
      os.rmdir(directory)
      os.rename(saving, directory)
  else:
    os.rename(saving, directory)
  fsync_directory(directory.parent)


def fsync_directory(directory: Path) -> None:
  """Makes a rename inside `directory` durable."""
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
