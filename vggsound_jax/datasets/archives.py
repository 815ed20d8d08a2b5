"""Clips read straight from `.tar.gz` archives (the Hugging Face mirror's `vggsound_NN.tar.gz`).

A gzip stream has no index: the only way to a member is to decompress everything before it. So
an archive is read in one front-to-back pass, as a stream (`tarfile` mode 'r|'), by one worker
process, and the members that are wanted are decoded from memory
(`vggsound_jax.audio.decode.decode_audio_bytes`); nothing is extracted to disk. Listing an archive
(member names only) is the same pass without decoding.

Damage costs only what it damages:
- gzip checks a CRC and the length at the end of its stream, and zlib refuses corrupt data, so a
  truncated or corrupt archive is noticed where reading reaches the damage. The member being read
  there is lost, with the reason; the members before it are unaffected; the rest of the archive
  cannot be reached (deflate has no point to resume from), which the archive's status says.
- A damaged tar header inside an intact gzip stream costs its member only: reading resumes at the
  next valid header (tarfile's `ignore_zeros`), and the skipped bytes are reported.
Nothing here raises on a bad archive: the problems are returned for the build report.
"""

from __future__ import annotations

import dataclasses
import gzip
import multiprocessing
import os
import queue
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vggsound_jax.audio import decode as audio_lib

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# tarfile's stream buffer; the default (10 KiB) costs a Python call per 10 KiB of a 17 GB archive.
_BUFFER_BYTES = 1 << 20
# A 10 s clip is a few MB; a member this large is not a clip, and is not read into memory.
MAX_MEMBER_BYTES = 1 << 30
_BLOCK = tarfile.BLOCKSIZE
# How long the main process waits for a result before it checks that the readers are alive.
_POLL_SECONDS = 1.0


def is_archive(name: str) -> bool:
  return name.lower().endswith(ARCHIVE_SUFFIXES)


def member_label(archive: str | os.PathLike, member: str) -> str:
  """How a member is named in reports and errors: `ARCHIVE:MEMBER`."""
  return f"{archive}:{member}"


@dataclasses.dataclass(frozen=True)
class ArchiveMember:
  """Where a clip is when it is a member of an archive."""

  archive: Path
  name: str

  def __str__(self) -> str:
    return member_label(self.archive, self.name)


@dataclasses.dataclass(frozen=True)
class Member:
  """One regular member of an archive: its bytes when they were asked for and could be read."""

  name: str
  data: bytes | None = None
  problem: str | None = None  # why the bytes that were asked for could not be read


@dataclasses.dataclass
class ArchiveStatus:
  """What one pass over an archive saw: how many regular members, and any damage (one line each)."""

  path: str
  members: int = 0
  problems: list[str] = dataclasses.field(default_factory=list)


def _padded(size: int) -> int:
  return -(-size // _BLOCK) * _BLOCK


def _describe(error: BaseException) -> str:
  """One line for what stopped the reading of an archive."""
  if isinstance(error, EOFError) or (isinstance(error, tarfile.ReadError) and "unexpected end" in str(error)):
    return "truncated (the archive ends inside a member)"
  if isinstance(error, gzip.BadGzipFile) and "Not a gzipped file" in str(error):
    return "not a gzip file"
  if isinstance(error, gzip.BadGzipFile):
    # The CRC and length are checked at the end of the stream only.
    return f"corrupt compressed data ({error}); which member it damaged cannot be told"
  if isinstance(error, zlib.error) or (isinstance(error, tarfile.ReadError) and "zlib" in str(error)):
    return f"corrupt compressed data ({error})"
  return f"{type(error).__name__}: {error}"


class _Salvaging:
  """A gzip stream that hands over the data before a damaged spot before it raises the error.

  tarfile reads a megabyte at a time; `GzipFile.read` would drop the good data of the read that
  meets the damage, and with it the last members before it.
  """

  def __init__(self, stream: gzip.GzipFile) -> None:
    self._stream = stream
    self._error: BaseException | None = None

  def read(self, size: int) -> bytes:
    if self._error is not None:
      raise self._error
    parts, got = [], 0
    while got < size:
      try:
        chunk = self._stream.read1(size - got)
      except Exception as e:  # pylint: disable=broad-except
        if not parts:
          raise
        self._error = e
        break
      if not chunk:
        break
      parts.append(chunk)
      got += len(chunk)
    return b"".join(parts)


def scan(path: str | os.PathLike, want: Callable[[str], bool], status: ArchiveStatus) -> Iterator[Member]:
  """Reads an archive front to back; yields every regular member, with its bytes where `want(name)`.

  Damage goes to `status.problems`; a wanted member whose bytes the damage cuts is yielded with
  its `problem`. Never raises for a bad archive.
  """
  expected_offset = 0
  reading: str | None = None
  try:
    with (
      gzip.open(path, "rb") as stream,
      tarfile.open(fileobj=_Salvaging(stream), mode="r|", bufsize=_BUFFER_BYTES, ignore_zeros=True) as tar,
    ):
      for info in tar:
        tar.members = []  # stream mode would keep every header of a 10k-member archive
        if info.offset > expected_offset:
          status.problems.append(
            f"{info.offset - expected_offset} bytes of unreadable tar data skipped before member {info.name}"
          )
        expected_offset = info.offset_data + _padded(info.size)
        if not info.isfile():
          continue
        status.members += 1
        if not want(info.name):
          yield Member(info.name)
          continue
        if info.size > MAX_MEMBER_BYTES:
          yield Member(info.name, problem=f"member of {info.size} bytes, too large for a clip")
          continue
        reading = info.name
        data = tar.extractfile(info).read()
        reading = None
        yield Member(info.name, data)
  except Exception as e:  # pylint: disable=broad-except
    # Anything the archive's bytes can provoke ends this archive, not the build.
    reason = _describe(e)
    status.problems.append(f"reading stopped after {status.members} members: {reason}")
    if reading is not None:
      yield Member(reading, problem=f"damaged archive: {reason}")


# ---------------------------------------------------------------------------------------
# Worker processes: one archive each at a time, results streamed back.


def _worker(fn: Callable[..., Iterator[Any]], jobs: multiprocessing.Queue, results: multiprocessing.Queue) -> None:
  """Runs `fn(*args)` for each (index, args) job until None; sends back what it yields."""
  while (job := jobs.get()) is not None:
    index, args = job
    results.put(("start", index, os.getpid()))
    for item in fn(*args):
      results.put(("item", index, item))
    results.put(("end", index, None))


def _in_processes(
  fn: Callable[..., Iterator[Any]], jobs: Sequence[tuple], workers: int
) -> Iterator[tuple[int, Any, str | None]]:
  """`fn(*job)` for every job, `workers` spawned processes at a time (`fn` must be importable).

  Yields (job index, item, None) for each item, in the order they arrive, and
  (job index, None, why) once for each job that a process which died will not finish (a crash
  in a decoder, a process that cannot start): a dead worker never hangs the build.
  """
  # spawn, not fork: the parent may hold TensorFlow's threads, which fork does not copy.
  context = multiprocessing.get_context("spawn")
  job_queue = context.Queue()
  # Bounded, so that decoded clips wait in the workers, not in this process's memory.
  results = context.Queue(maxsize=4 * workers)
  for index, args in enumerate(jobs):
    job_queue.put((index, args))
  for _ in range(workers):
    job_queue.put(None)
  processes = [context.Process(target=_worker, args=(fn, job_queue, results), daemon=True) for _ in range(workers)]
  for p in processes:
    p.start()
  unfinished = set(range(len(jobs)))
  running: dict[int, int] = {}  # worker pid -> the job it took last
  try:
    while unfinished:
      try:
        kind, index, payload = results.get(timeout=_POLL_SECONDS)
      except queue.Empty:
        for index, why in _jobs_of_dead_workers(processes, running, unfinished):
          unfinished.discard(index)
          yield index, None, why
        continue
      if kind == "start":
        running[payload] = index
      elif kind == "item":
        yield index, payload, None
      else:
        unfinished.discard(index)
  finally:
    for p in processes:
      if p.is_alive():
        p.terminate()
    for p in processes:
      p.join(timeout=10)
    job_queue.cancel_join_thread()
    results.cancel_join_thread()


def _jobs_of_dead_workers(
  processes: Sequence[multiprocessing.Process], running: dict[int, int], unfinished: set[int]
) -> list[tuple[int, str]]:
  """The unfinished jobs that no live worker will finish, with why."""
  lost = []
  for p in processes:
    if p.exitcode not in (None, 0) and running.get(p.pid) in unfinished:
      lost.append((running.pop(p.pid), f"its reader process died (exit code {p.exitcode})"))
  if all(p.exitcode is not None for p in processes):
    # Jobs still queued, or taken by a worker that died before saying so.
    exit_codes = sorted({p.exitcode for p in processes})
    taken = {index for index, _ in lost}
    lost.extend((index, f"no reader process left (exit codes {exit_codes})") for index in sorted(unfinished - taken))
  return lost


# ---------------------------------------------------------------------------------------
# Listing: member names, one pass per archive, archives in parallel.


@dataclasses.dataclass
class Listing:
  """The regular members of an archive, in archive order, and the damage the pass met."""

  status: ArchiveStatus
  names: list[str]


def list_archive(path: str | os.PathLike) -> Listing:
  status = ArchiveStatus(str(path))
  return Listing(status, [m.name for m in scan(path, lambda name: False, status)])


def _list_job(path: str) -> Iterator[Listing]:
  yield list_archive(path)


def list_archives(paths: Sequence[Path], num_workers: int) -> list[Listing]:
  """`list_archive` of each path, in order; `num_workers` archives at a time."""
  workers = min(num_workers, len(paths))
  listings: list[Listing | None] = [None] * len(paths)
  with tqdm(total=len(paths), desc="listing archives", unit="archive") as progress:
    if workers <= 1:
      results = ((i, list_archive(path), None) for i, path in enumerate(paths))
    else:
      results = _in_processes(_list_job, [(str(path),) for path in paths], workers)
    for index, listing, why in results:
      listings[index] = listing or Listing(ArchiveStatus(str(paths[index]), problems=[f"not read: {why}"]), [])
      progress.update()
  return listings


# ---------------------------------------------------------------------------------------
# Decoding: the wanted members of each archive, one worker process per archive.

# (clip_id, where it was read from, samples or None, reason or None)
ClipResult = tuple[str, str, np.ndarray | None, str | None]


def decode_members(path: str | os.PathLike, wanted: Mapping[str, str]) -> Iterator[ClipResult]:
  """Decodes the members `wanted` names ({member name: clip id}) in one pass over the archive.

  Yields one result per clip id of `wanted`, exactly once: decoded samples, or the reason there
  are none (undecodable, or cut or left unreachable by damage). A member present twice counts
  once, at its first occurrence.
  """
  status = ArchiveStatus(str(path))
  pending = dict(wanted)
  for member in scan(path, lambda name: name in pending, status):
    clip_id = pending.pop(member.name, None)
    if clip_id is None:
      continue
    label = member_label(path, member.name)
    if member.data is None:
      yield clip_id, label, None, member.problem
      continue
    try:
      yield clip_id, label, audio_lib.decode_audio_bytes(member.data, label), None
    except audio_lib.AudioDecodeError as e:
      yield clip_id, label, None, e.problem
    except Exception as e:  # pylint: disable=broad-except
      # As for loose files: one odd member must not end the archive, let alone the build.
      yield clip_id, label, None, f"cannot decode: {type(e).__name__}: {e}"
  why = status.problems[-1] if status.problems else "not in the archive"
  for name, clip_id in pending.items():
    yield clip_id, member_label(path, name), None, f"damaged archive: {why}"


def decode_archives(
  jobs: Sequence[tuple[Path, Mapping[str, str]]], num_workers: int, *, desc: str = "archives"
) -> Iterator[ClipResult]:
  """`decode_members` of every (archive, wanted) job, archives read in parallel.

  One result per wanted clip id, in the order they complete. `num_workers` archives are read at
  a time, each by its own process; a process that dies costs the clips of its archive not yet
  sent, each reported with the reason.
  """
  total = sum(len(wanted) for _, wanted in jobs)
  workers = min(num_workers, len(jobs))
  with tqdm(total=total, desc=desc, unit="clip", mininterval=1.0) as progress:
    if workers <= 1:
      for path, wanted in jobs:
        for result in decode_members(path, wanted):
          yield result
          progress.update()
      return
    # Clips not yet received, per job: what a dead worker costs.
    remaining = [{clip_id: name for name, clip_id in wanted.items()} for _, wanted in jobs]
    for index, result, why in _in_processes(decode_members, [(str(p), dict(w)) for p, w in jobs], workers):
      if result is not None:
        remaining[index].pop(result[0], None)
        yield result
        progress.update()
        continue
      for clip_id, name in remaining[index].items():
        yield clip_id, member_label(jobs[index][0], name), None, f"damaged archive: {why}"
        progress.update()
