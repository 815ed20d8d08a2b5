"""Your own labelled clips as they lie on disk: which clip, which class, which fold.

Four layouts (`read_clips`), told apart by what is there:
  esc50         ROOT/meta/esc50.csv (`filename,fold,target,category,...`), clips in ROOT/audio/
  urbansound8k  ROOT/metadata/UrbanSound8K.csv (`slice_file_name,...,fold,classID,class`),
                clips in ROOT/audio/fold1 .. fold10/
  csv           any csv with a header holding `path,label` and optionally `fold`; paths relative
                to the csv's folder (or absolute)
  folders       ROOT/<label>/<any subfolders>/<clip>

Class order (the model's outputs): by the table's class id (ESC-50 `target`, UrbanSound8K
`classID`), otherwise sorted by name. Folds come from the table; where it has none (csv without
`fold`, folders) they are assigned: within each class, clips sorted by path go to folds
1, 2, ..., ASSIGNED_FOLDS in turn. Everything wrong with the lists (unknown columns, a bad
line, a listed file that is missing, a single class) is a PathError naming the file, found
before anything is decoded.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

from vggsound_jax.datasets.clip_lists import ClipListError, read_text
from vggsound_jax.errors import PathError

ESC50, URBANSOUND8K, CSV, FOLDERS = "esc50", "urbansound8k", "csv", "folders"
LAYOUTS = (ESC50, URBANSOUND8K, CSV, FOLDERS)
ESC50_TABLE = Path("meta", "esc50.csv")
URBANSOUND8K_TABLE = Path("metadata", "UrbanSound8K.csv")
AUDIO_DIR = "audio"
# The columns each table layout needs: (file, label, class id or None, fold or None).
COLUMNS = {
  ESC50: ("filename", "category", "target", "fold"),
  URBANSOUND8K: ("slice_file_name", "class", "classID", "fold"),
  CSV: ("path", "label", None, None),
}
OPTIONAL_FOLD = "fold"  # of the plain csv
ASSIGNED_FOLDS = 5  # where the data has none, as ESC-50 has
# Files the folders layout takes as clips: what the decoder reads (soundfile or FFmpeg).
CLIP_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".mp4", ".mkv", ".webm")


@dataclasses.dataclass(frozen=True)
class Clip:
  clip_id: str  # the file's path under the data's root, with "/"
  path: Path
  label: str
  fold: int
  where: str  # "TABLE:LINE", or the file itself (folders)


@dataclasses.dataclass(frozen=True)
class ClipTable:
  layout: str
  root: Path  # clip ids are relative to it
  table: Path | None  # the list read (None: folders)
  clips: list[Clip]
  class_names: tuple[str, ...]  # in model order
  folds_assigned: bool  # the folds were assigned here (the data has none)

  @property
  def folds(self) -> list[int]:
    return sorted({c.fold for c in self.clips})


def read_clips(source: str | os.PathLike) -> ClipTable:
  """The labelled clips of `source`: a data set's root folder (esc50, urbansound8k, folders) or a table file."""
  source = Path(os.path.expanduser(os.fspath(source)))
  if source.is_file():
    table = read_table(source)
  elif (source / ESC50_TABLE).is_file():
    table = read_table(source / ESC50_TABLE)
  elif (source / URBANSOUND8K_TABLE).is_file():
    table = read_table(source / URBANSOUND8K_TABLE)
  elif source.is_dir():
    table = read_folders(source)
  else:
    raise PathError(source, "no such file or directory")
  _check_classes(table)
  return table


def _rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
  reader = csv.reader(io.StringIO(read_text(path), newline=""))
  header = next(reader, None)
  if not header:
    raise PathError(path, "empty table")
  header = [h.strip() for h in header]
  rows = []
  for fields in reader:
    if not fields or all(not f.strip() for f in fields):
      continue
    if len(fields) != len(header):
      raise ClipListError(path, reader.line_num, f"{len(fields)} fields, the header has {len(header)}")
    rows.append((reader.line_num, dict(zip(header, (f.strip() for f in fields)))))
  return header, rows


def detect_layout(header: list[str]) -> str | None:
  """The table layout whose columns `header` holds, or None."""
  for layout, columns in COLUMNS.items():
    if all(c is None or c in header for c in columns):
      return layout
  return None


def _known_layouts() -> str:
  return "; ".join(f"{layout} ({','.join(c for c in columns if c)})" for layout, columns in COLUMNS.items())


def _number(path: Path, line: int, column: str, text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise ClipListError(path, line, f"{column} {text!r} is not a whole number") from None


def read_table(path: Path) -> ClipTable:
  """A table of clips in one of the layouts of COLUMNS (see the module doc)."""
  header, rows = _rows(path)
  layout = detect_layout(header)
  if layout is None:
    raise PathError(path, f"columns {','.join(header)} are those of no known layout: {_known_layouts()}")
  if not rows:
    raise PathError(path, "lists no clip")
  file_column, label_column, id_column, fold_column = COLUMNS[layout]
  if layout == CSV and OPTIONAL_FOLD in header:
    fold_column = OPTIONAL_FOLD
  # ESC-50 and UrbanSound8K tables sit one folder below the data set's root.
  root = path.parent.parent if layout in (ESC50, URBANSOUND8K) else path.parent
  clips, ids, seen, missing = [], {}, {}, []
  for line, row in rows:
    name, label = row[file_column], row[label_column]
    if not name or not label:
      raise ClipListError(path, line, f"empty {file_column if not name else label_column}")
    fold = _number(path, line, fold_column, row[fold_column]) if fold_column else 0
    if fold_column and fold < 1:
      raise ClipListError(path, line, f"fold {fold}: folds are numbered from 1")
    if id_column:
      class_id = _number(path, line, id_column, row[id_column])
      if ids.setdefault(label, class_id) != class_id:
        raise ClipListError(path, line, f"class {label!r} has {id_column} {class_id}, earlier {ids[label]}")
    if layout == ESC50:
      file = root / AUDIO_DIR / name
    elif layout == URBANSOUND8K:
      file = root / AUDIO_DIR / f"fold{fold}" / name
    else:
      file = Path(os.path.expanduser(name))
      file = file if file.is_absolute() else root / file
    clip_id = _clip_id(file, root)
    if clip_id in seen:
      raise ClipListError(path, line, f"{name} is listed again (first on line {seen[clip_id]})")
    seen[clip_id] = line
    if not file.is_file():
      missing.append((line, file))
    clips.append(Clip(clip_id, file, label, fold, f"{path}:{line}"))
  if missing:
    line, file = missing[0]
    more = f" (and {len(missing) - 1} more listed clips)" if len(missing) > 1 else ""
    raise ClipListError(path, line, f"{file}: no such file{more}")
  if id_column:
    by_id = {}
    for label, class_id in ids.items():
      if class_id in by_id:
        raise PathError(path, f"{id_column} {class_id} names two classes: {by_id[class_id]!r} and {label!r}")
      by_id[class_id] = label
    names = tuple(by_id[i] for i in sorted(by_id))
  else:
    names = tuple(sorted({c.label for c in clips}))
  if not fold_column:
    return ClipTable(layout, root, path, assign_folds(clips), names, folds_assigned=True)
  return ClipTable(layout, root, path, clips, names, folds_assigned=False)


def _clip_id(file: Path, root: Path) -> str:
  try:
    return file.relative_to(root).as_posix()
  except ValueError:
    return file.as_posix()  # an absolute path outside the table's folder


def read_folders(root: Path) -> ClipTable:
  """ROOT/<label>/<any subfolders>/<clip>: the label is the top folder's name; hidden files are skipped."""
  clips = []
  for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    for dirpath, dirnames, filenames in os.walk(label_dir, followlinks=True):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
      for name in sorted(filenames):
        if name.startswith(".") or os.path.splitext(name)[1].lower() not in CLIP_EXTENSIONS:
          continue
        file = Path(dirpath, name)
        clips.append(Clip(_clip_id(file, root), file, label_dir.name, 0, str(file)))
  if not clips:
    raise PathError(
      root, f"no clips: expected {ESC50_TABLE}, {URBANSOUND8K_TABLE}, or folders ROOT/<label>/.../<clip> of audio files"
    )
  return ClipTable(FOLDERS, root, None, assign_folds(clips), tuple(sorted({c.label for c in clips})), True)


def assign_folds(clips: list[Clip], num_folds: int = ASSIGNED_FOLDS) -> list[Clip]:
  """Folds for data without any: within each class, clips sorted by id go to folds 1..num_folds in turn."""
  rank = {}
  for label in sorted({c.label for c in clips}):
    for i, clip in enumerate(sorted((c for c in clips if c.label == label), key=lambda c: c.clip_id)):
      rank[clip.clip_id] = i
  return [dataclasses.replace(c, fold=rank[c.clip_id] % num_folds + 1) for c in clips]


def _check_classes(table: ClipTable) -> None:
  where = table.table or table.root
  if len(table.class_names) < 2:
    raise PathError(
      where, f"all {len(table.clips)} clips are of one class ({table.class_names[0]!r}): a classifier needs two or more"
    )
