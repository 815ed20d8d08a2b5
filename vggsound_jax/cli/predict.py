"""vggsound-predict: classify audio or video files with a converted or trained model.

  vggsound-predict --checkpoint DIR [--top_k 5] [--batch_size 8] [--output preds.{npz,csv,jsonl}] FILE...

Prints the top-k classes of every file. A file that cannot be read (or whose outputs are not
finite) is reported with the reason and skipped; the others are still classified, and the exit
code is 1 if any failed. Any file name works, also one that is not valid UTF-8.

`--output` is checked before any work (known extension, a writable folder) and written as
results come: rows go to `OUTPUT.partial` (`.csv`, `.jsonl`: one row per file with its top-k
classes and probabilities), or arrays to the folder `OUTPUT.partial/` (`.npz`: `files.txt`,
`probs.npy`, `embeddings.npy`, each always loadable), flushed after every batch, and the
finished result is renamed to OUTPUT at the end. A run that is killed keeps every result
written so far in the `.partial`; a run never starts over one (move it away first). Memory
stays flat in the number of files: decoding runs a bounded window ahead of the model, and
nothing per file is kept once written.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import itertools
import json
import os
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from absl import app, flags

from vggsound_jax.cli import common
from vggsound_jax.errors import PathError

if TYPE_CHECKING:
  import numpy as np

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (converter or training output).")
_TOP_K = flags.DEFINE_integer(
  "top_k", 5, "How many classes to print (and write to .csv/.jsonl) per file.", lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Clips per forward pass.", lower_bound=1)
_OUTPUT = flags.DEFINE_string(
  "output",
  None,
  "Optional results file, written as it goes: .npz (files, probs, embeddings, class_names), "
  ".csv or .jsonl (file, top-k labels and probabilities).",
)
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the checkpoint's).")
_DECODE_THREADS = flags.DEFINE_integer(
  "decode_threads", min(8, os.cpu_count() or 1), "Files decoded in parallel.", lower_bound=1
)

PARTIAL_SUFFIX = ".partial"
# A fixed .npy header length, so that the row count can be rewritten in place after every batch.
_NPY_HEADER_BYTES = 256


def _batches(items: Iterable, size: int) -> Iterator[list]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _ahead(pool: concurrent.futures.Executor, function: Callable, items: Iterable, window: int) -> Iterator:
  """`pool.map(function, items)` holding at most `window` results at once (`map` submits all)."""
  items = iter(items)
  pending = collections.deque(pool.submit(function, item) for item in itertools.islice(items, window))
  while pending:
    result = pending.popleft().result()
    for item in itertools.islice(items, 1):
      pending.append(pool.submit(function, item))
    yield result


def _top(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
  import numpy as np  # noqa: PLC0415

  # str() of a float32 is its shortest exact decimal; float() of that is what JSON prints.
  return [(class_names[i], float(str(probs[i]))) for i in np.argsort(-probs, kind="stable")[:k]]


class _Rows:
  """A .csv or .jsonl results file: one row per file, its top-k classes and probabilities."""

  def __init__(self, output: Path, top_k: int) -> None:
    self.output, self.partial, self.top_k, self.count = output, _partial(output), top_k, 0
    self.jsonl = output.suffix.lower() == ".jsonl"
    # Names that are not UTF-8 come back as they were: the original bytes in csv, \udcXX
    # escapes (valid JSON) in jsonl.
    errors = "backslashreplace" if self.jsonl else "surrogateescape"
    self._file: TextIO = open(self.partial, "x", encoding="utf-8", errors=errors, newline="")  # noqa: SIM115
    self._csv = None if self.jsonl else csv.writer(self._file)

  def begin(self, class_names: Sequence[str], embedding_dim: int) -> None:
    del embedding_dim
    self.class_names, self.k = class_names, min(self.top_k, len(class_names))
    if self._csv is not None:
      self._csv.writerow(["file"] + [f"{field}{i}" for i in range(1, self.k + 1) for field in ("label", "prob")])

  def write(self, files: Sequence[str], probs: np.ndarray, embeddings: np.ndarray) -> None:
    del embeddings
    for name, p in zip(files, probs):
      top = _top(p, self.class_names, self.k)
      if self._csv is not None:
        self._csv.writerow([name, *itertools.chain.from_iterable(top)])
      else:
        row = {"file": name, "labels": [label for label, _ in top], "probs": [prob for _, prob in top]}
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
    self._file.flush()
    self.count += len(files)

  def finish(self) -> None:
    self._file.flush()
    os.fsync(self._file.fileno())
    self._file.close()
    os.replace(self.partial, self.output)

  def discard(self) -> None:
    self._file.close()
    os.unlink(self.partial)


class _GrowingNpy:
  """A .npy file of rows that is valid after every append: rows first, then the count."""

  def __init__(self, path: Path) -> None:
    self.path, self.rows, self.row_shape, self.dtype = path, 0, None, None
    self._file = open(path, "xb")  # noqa: SIM115

  def _header(self) -> bytes:
    import numpy as np  # noqa: PLC0415

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


class _Arrays:
  """A .npz results file, as the folder OUTPUT.partial/ while it grows (see the module doc)."""

  def __init__(self, output: Path, top_k: int) -> None:
    del top_k
    self.output, self.partial, self.count = output, _partial(output), 0
    self.partial.mkdir()
    self._names = open(self.partial / "files.txt", "x", encoding="ascii")  # noqa: SIM115
    self._probs = _GrowingNpy(self.partial / "probs.npy")
    self._embeddings = _GrowingNpy(self.partial / "embeddings.npy")

  def begin(self, class_names: Sequence[str], embedding_dim: int) -> None:
    import numpy as np  # noqa: PLC0415

    self.class_names = list(class_names)
    # The row shapes, also for a run in which no file can be read.
    self._empty = (np.zeros((0, len(class_names)), np.float32), np.zeros((0, embedding_dim), np.float32))

  def write(self, files: Sequence[str], probs: np.ndarray, embeddings: np.ndarray) -> None:
    self._probs.append(probs.astype("float32"))
    self._embeddings.append(embeddings.astype("float32"))
    # Names last, so that a killed run never lists a file whose arrays are missing. JSON
    # escapes make any name (also not UTF-8) one ASCII line.
    self._names.writelines(json.dumps(name) + "\n" for name in files)
    self._names.flush()
    self.count += len(files)

  def finish(self) -> None:
    import numpy as np  # noqa: PLC0415

    for grown, empty in zip((self._probs, self._embeddings), self._empty):
      if grown.dtype is None:
        grown.append(empty)
      grown.close()
    self._names.close()
    assembled = self.partial / "assembled.npz"
    # Streamed member by member, as np.savez lays them out (stored, not compressed).
    with zipfile.ZipFile(assembled, "x", zipfile.ZIP_STORED, allowZip64=True) as archive:
      with archive.open("files.npy", "w", force_zip64=True) as member:
        self._write_names(member)
      for name in ("probs", "embeddings"):
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
    import numpy as np  # noqa: PLC0415

    def names() -> Iterator[str]:
      with open(self.partial / "files.txt", encoding="ascii") as f:
        for line in f:
          yield json.loads(line)

    count = width = 0
    for name in names():
      count, width = count + 1, max(width, len(name))
    dtype = np.dtype(f"<U{max(width, 1)}")
    np.lib.format.write_array_header_2_0(member, {"descr": dtype.str, "fortran_order": False, "shape": (count,)})
    for chunk in _batches(names(), 4096):
      member.write(np.array(chunk, dtype=dtype).tobytes())

  def discard(self) -> None:
    for f in (self._names, self._probs, self._embeddings):
      f.close()
    for name in ("files.txt", "probs.npy", "embeddings.npy"):
      (self.partial / name).unlink(missing_ok=True)
    self.partial.rmdir()


_WRITERS = {".csv": _Rows, ".jsonl": _Rows, ".npz": _Arrays}


def _partial(output: Path) -> Path:
  return output.with_name(output.name + PARTIAL_SUFFIX)


def open_output(path: str) -> _Rows | _Arrays:
  """Checks an --output path and starts its `.partial`, before any work; one line if it cannot be."""
  output = Path(os.path.abspath(path))
  if output.is_dir():
    raise PathError(output, "is a directory")
  if output.suffix.lower() not in _WRITERS:
    raise PathError(output, f"unknown output format {output.suffix or '(no extension)'!r}: use .npz, .csv or .jsonl")
  if not output.parent.is_dir():
    raise PathError(output.parent, "no such directory" if not output.parent.exists() else "not a directory")
  partial = _partial(output)
  if partial.exists() or partial.is_symlink():
    raise PathError(partial, "holds the results of an interrupted run: move it away or delete it first")
  try:
    return _WRITERS[output.suffix.lower()](output, _TOP_K.value)
  except OSError as e:
    raise PathError(output.parent, f"cannot write here ({e.strerror or e})") from None


def _console_safe() -> None:
  """Names that are not valid UTF-8 (or not valid in the console's encoding) print escaped."""
  for stream in (sys.stdout, sys.stderr):
    if hasattr(stream, "reconfigure"):
      stream.reconfigure(errors="backslashreplace")


def main(argv: list[str]) -> None:
  files = argv[1:]
  if not files:
    raise app.UsageError("give at least one FILE to classify")
  _console_safe()
  writer = open_output(_OUTPUT.value) if _OUTPUT.value else None
  try:
    failed = _classify(files, writer)
  except BaseException:
    if writer is not None:
      if writer.count:
        print(f"stopped: the {writer.count} results so far are kept in {writer.partial}", file=sys.stderr)
      else:
        writer.discard()
    raise
  if writer is not None:
    writer.finish()
    print(f"wrote {writer.output}")
  if failed:
    print(f"{failed} of {len(files)} files could not be classified", file=sys.stderr)
    sys.exit(1)


def _classify(files: Sequence[str], writer: _Rows | _Arrays | None) -> int:
  """Classifies `files`, printing and writing as it goes; returns how many failed."""
  # Imported here so that --help stays fast.
  import numpy as np  # noqa: PLC0415

  from vggsound_jax.audio import AudioDecodeError, load_clip  # noqa: PLC0415
  from vggsound_jax.inference import Classifier, enable_compilation_cache  # noqa: PLC0415
  from vggsound_jax.model_dir import load_model  # noqa: PLC0415

  enable_compilation_cache()
  model, metadata = load_model(_CHECKPOINT.value, dtype=_DTYPE.value)
  class_names = list(metadata["class_names"])
  classifier = Classifier(model, _BATCH_SIZE.value)
  top_k = min(_TOP_K.value, len(class_names))
  if writer is not None:
    writer.begin(class_names, model.config.embedding_dim)

  def decode(path: str) -> tuple[str, np.ndarray | None, str | None]:
    try:
      return path, load_clip(path), None
    except AudioDecodeError as e:
      return path, None, e.problem
    except Exception as e:  # noqa: BLE001 - one bad file must not end the run; it is reported
      return path, None, f"cannot decode: {type(e).__name__}: {e}"

  failed = 0
  window = _DECODE_THREADS.value + 2 * _BATCH_SIZE.value
  # Decoding runs ahead in threads (PyAV and libsndfile release the GIL) while the model runs.
  with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS.value) as pool:
    for batch in _batches(_ahead(pool, decode, files, window), _BATCH_SIZE.value):
      for path, _, reason in batch:
        if reason is not None:
          failed += 1
          print(f"error: {path}: {reason}", file=sys.stderr)
      good = [(path, clip) for path, clip, reason in batch if reason is None]
      if not good:
        continue
      probs, embeddings = classifier(np.stack([clip for _, clip in good]))
      finite = np.isfinite(probs).all(axis=1) & np.isfinite(embeddings).all(axis=1)
      for (path, _), ok in zip(good, finite):
        if not ok:
          failed += 1
          print(f"error: {path}: the model's outputs are not finite (NaN or inf)", file=sys.stderr)
      names = [path for (path, _), ok in zip(good, finite) if ok]
      probs, embeddings = probs[finite], embeddings[finite]
      for path, p in zip(names, probs):
        print(path)
        for label, prob in _top(p, class_names, top_k):
          print(f"  {prob:.4f}  {label}")
      if writer is not None and names:
        writer.write(names, probs, embeddings)
  return failed


def run() -> None:
  flags.mark_flag_as_required("checkpoint")
  common.run_app(main)
