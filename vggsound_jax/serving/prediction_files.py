"""Results files of `vggsound-predict`, written as results come: `.npz`, `.csv` or `.jsonl`.

Every file is one recording's `tagger.Tags`: its windows, and its summaries over windows
(`mean`, `max`). By extension:

- `.csv`: one row per window, then a `mean` and a `max` row per file:
  `file,window,start,end,label1,prob1,...` (window = index, `mean` or `max`; seconds);
- `.jsonl`: one line per file: `file`, `duration`, `labels`/`probs` (top-k of the mean),
  `max_labels`/`max_probs`, and `windows` (each `start`, `end`, `labels`, `probs`);
- `.npz`: per file `files`, `durations`, `probs` (mean), `max_probs`, `embeddings` (mean);
  per window `window_file` (index into `files`), `window_start`, `window_end`,
  `window_probs`, `window_embeddings`; and `class_names`.

Writing goes to `OUTPUT.partial` (rows), or to the folder `OUTPUT.partial/` (one `.npy` per
array, each loadable at any time, and `files.txt`), flushed after every batch of files; the
finished result is renamed to OUTPUT. A killed run keeps every result written so far in the
`.partial`, and a run never starts over one. Names that are not UTF-8 come back as they were:
their bytes in csv, `\\udcXX` escapes (valid JSON) in jsonl and npz.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import struct
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from vggsound_jax.errors import PathError
from vggsound_jax.serving.tagger import Tags, top_classes

PARTIAL_SUFFIX = ".partial"
# A fixed .npy header length, so that the row count can be rewritten in place after every batch.
_NPY_HEADER_BYTES = 256
SUMMARIES = ("mean", "max")


def _summaries(tags: Tags) -> dict[str, np.ndarray]:
  return {"mean": tags.probs, "max": tags.max_probs}


def _seconds(x: float) -> float:
  return round(float(x), 6)  # sample positions at 16 kHz are exact to the microsecond


class _Rows:
  """A .csv or .jsonl results file (see the module doc)."""

  def __init__(self, output: Path, top_k: int) -> None:
    self.output, self.partial, self.top_k, self.count = output, partial_path(output), top_k, 0
    self.jsonl = output.suffix.lower() == ".jsonl"
    errors = "backslashreplace" if self.jsonl else "surrogateescape"
    self._file: TextIO = open(self.partial, "x", encoding="utf-8", errors=errors, newline="")  # noqa: SIM115
    self._csv = None if self.jsonl else csv.writer(self._file)

  def begin(self, class_names: Sequence[str], embedding_dim: int | None) -> None:
    del embedding_dim
    self.class_names, self.k = class_names, min(self.top_k, len(class_names))
    if self._csv is not None:
      labels = [f"{field}{i}" for i in range(1, self.k + 1) for field in ("label", "prob")]
      self._csv.writerow(["file", "window", "start", "end", *labels])

  def write(self, results: Sequence[Tags]) -> None:
    for tags in results:
      if self._csv is not None:
        self._write_csv(tags)
      else:
        self._file.write(json.dumps(self._json(tags), ensure_ascii=False) + "\n")
    self._file.flush()
    self.count += len(results)

  def _top(self, probs: np.ndarray) -> list[tuple[str, float]]:
    return top_classes(probs, self.class_names, self.k)

  def _write_csv(self, tags: Tags) -> None:
    rows = [(i, s, e, p) for i, (s, e, p) in enumerate(zip(tags.starts, tags.ends, tags.window_probs))]
    rows += [(name, 0.0, tags.duration, p) for name, p in _summaries(tags).items()]
    for window, start, end, probs in rows:
      top = itertools.chain.from_iterable(self._top(probs))
      self._csv.writerow([tags.source, window, _seconds(start), _seconds(end), *top])

  def _json(self, tags: Tags) -> dict[str, Any]:
    mean, top_max = self._top(tags.probs), self._top(tags.max_probs)
    windows = [
      {"start": _seconds(s), "end": _seconds(e), **_labels_probs(self._top(p))}
      for s, e, p in zip(tags.starts, tags.ends, tags.window_probs)
    ]
    row = {"file": tags.source, "duration": _seconds(tags.duration), **_labels_probs(mean)}
    return {
      **row,
      "max_labels": [label for label, _ in top_max],
      "max_probs": [p for _, p in top_max],
      "windows": windows,
    }

  def finish(self) -> None:
    self._file.flush()
    os.fsync(self._file.fileno())
    self._file.close()
    os.replace(self.partial, self.output)

  def discard(self) -> None:
    self._file.close()
    os.unlink(self.partial)


def _labels_probs(top: list[tuple[str, float]]) -> dict[str, list]:
  return {"labels": [label for label, _ in top], "probs": [p for _, p in top]}


class _GrowingNpy:
  """A .npy file of rows that is valid after every append: rows first, then the count."""

  def __init__(self, path: Path) -> None:
    self.path, self.rows, self.row_shape, self.dtype = path, 0, None, None
    self._file = open(path, "xb")  # noqa: SIM115

  def _header(self) -> bytes:
    header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
    text = repr({**header, "shape": (self.rows, *self.row_shape)}).encode("latin1")
    length = _NPY_HEADER_BYTES - 10  # after magic, version and the length itself
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + text.ljust(length - 1) + b"\n"

  def append(self, rows: np.ndarray) -> None:
    if self.dtype is None:
      self.dtype, self.row_shape = rows.dtype, rows.shape[1:]
      self._file.write(self._header())
    self._file.seek(0, os.SEEK_END)
    self._file.write(rows.tobytes())
    self.rows += rows.shape[0]
    self._file.seek(0)
    self._file.write(self._header())
    self._file.flush()

  def close(self) -> None:
    self._file.close()


# The arrays of a .npz, each with the function of a batch of files that gives its rows.
_PER_FILE = {
  "durations": lambda ts: np.array([t.duration for t in ts], np.float64),
  "probs": lambda ts: np.stack([t.probs for t in ts]).astype(np.float32),
  "max_probs": lambda ts: np.stack([t.max_probs for t in ts]).astype(np.float32),
  "embeddings": lambda ts: np.stack([t.embedding for t in ts]).astype(np.float32),
}
_PER_WINDOW = {
  "window_start": lambda ts: np.concatenate([t.starts for t in ts]).astype(np.float64),
  "window_end": lambda ts: np.concatenate([t.ends for t in ts]).astype(np.float64),
  "window_probs": lambda ts: np.concatenate([t.window_probs for t in ts]).astype(np.float32),
  "window_embeddings": lambda ts: np.concatenate([t.window_embeddings for t in ts]).astype(np.float32),
}


class _Arrays:
  """A .npz results file, as the folder OUTPUT.partial/ while it grows (see the module doc)."""

  def __init__(self, output: Path, top_k: int) -> None:
    del top_k
    self.output, self.partial, self.count = output, partial_path(output), 0
    self.partial.mkdir()
    self._names = open(self.partial / "files.txt", "x", encoding="ascii")  # noqa: SIM115
    self._arrays = {
      name: _GrowingNpy(self.partial / f"{name}.npy") for name in ("window_file", *_PER_FILE, *_PER_WINDOW)
    }

  def begin(self, class_names: Sequence[str], embedding_dim: int | None) -> None:
    self.class_names = list(class_names)
    # Row shapes for arrays no file reached (a run in which no file could be read).
    c, d = len(class_names), embedding_dim or 0
    self._empty = {
      "window_file": np.zeros(0, np.int64),
      **{name: np.zeros(0) for name in ("durations", "window_start", "window_end")},
      **{name: np.zeros((0, c), np.float32) for name in ("probs", "max_probs", "window_probs")},
      **{name: np.zeros((0, d), np.float32) for name in ("embeddings", "window_embeddings")},
    }

  def write(self, results: Sequence[Tags]) -> None:
    first = self.count
    self._arrays["window_file"].append(
      np.concatenate([np.full(len(t.starts), first + i, np.int64) for i, t in enumerate(results)])
    )
    for name, rows in (_PER_FILE | _PER_WINDOW).items():
      self._arrays[name].append(rows(results))
    # Names last, so that a killed run never lists a file whose arrays are missing. JSON
    # escapes make any name (also not UTF-8) one ASCII line.
    self._names.writelines(json.dumps(t.source) + "\n" for t in results)
    self._names.flush()
    self.count += len(results)

  def finish(self) -> None:
    for name, grown in self._arrays.items():
      if grown.dtype is None:
        grown.append(self._empty[name])
      grown.close()
    self._names.close()
    assembled = self.partial / "assembled.npz"
    # Streamed member by member, as np.savez lays them out (stored, not compressed).
    with zipfile.ZipFile(assembled, "x", zipfile.ZIP_STORED, allowZip64=True) as archive:
      with archive.open("files.npy", "w", force_zip64=True) as member:
        self._write_names(member)
      for name in self._arrays:
        with (
          archive.open(f"{name}.npy", "w", force_zip64=True) as member,
          open(self.partial / f"{name}.npy", "rb") as f,
        ):
          shutil.copyfileobj(f, member)
      with archive.open("class_names.npy", "w") as member:
        np.lib.format.write_array(member, np.array(self.class_names, dtype=str))
    with open(assembled, "rb") as f:
      os.fsync(f.fileno())
    os.replace(assembled, self.output)
    self.discard()

  def _write_names(self, member: Any) -> None:
    def names() -> Iterator[str]:
      with open(self.partial / "files.txt", encoding="ascii") as f:
        for line in f:
          yield json.loads(line)

    count = width = 0
    for name in names():
      count, width = count + 1, max(width, len(name))
    dtype = np.dtype(f"<U{max(width, 1)}")
    np.lib.format.write_array_header_2_0(member, {"descr": dtype.str, "fortran_order": False, "shape": (count,)})
    names_left = names()
    while chunk := list(itertools.islice(names_left, 4096)):
      member.write(np.array(chunk, dtype=dtype).tobytes())

  def discard(self) -> None:
    self._names.close()
    for grown in self._arrays.values():
      grown.close()
    for name in ("files.txt", *(f"{name}.npy" for name in self._arrays)):
      (self.partial / name).unlink(missing_ok=True)
    self.partial.rmdir()


_WRITERS = {".csv": _Rows, ".jsonl": _Rows, ".npz": _Arrays}
FORMATS = tuple(_WRITERS)


def partial_path(output: Path) -> Path:
  return output.with_name(output.name + PARTIAL_SUFFIX)


def open_output(path: str, top_k: int) -> _Rows | _Arrays:
  """Checks an output path and starts its `.partial`, before any work; one line if it cannot be."""
  output = Path(os.path.abspath(path))
  if output.is_dir():
    raise PathError(output, "is a directory")
  if output.suffix.lower() not in _WRITERS:
    raise PathError(output, f"unknown output format {output.suffix or '(no extension)'!r}: use .npz, .csv or .jsonl")
  if not output.parent.is_dir():
    raise PathError(output.parent, "no such directory" if not output.parent.exists() else "not a directory")
  partial = partial_path(output)
  if partial.exists() or partial.is_symlink():
    raise PathError(partial, "holds the results of an interrupted run: move it away or delete it first")
  try:
    return _WRITERS[output.suffix.lower()](output, top_k)
  except OSError as e:
    raise PathError(output.parent, f"cannot write here ({e.strerror or e})") from None
