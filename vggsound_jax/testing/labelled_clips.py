"""Generated labelled clips in the layouts users have on disk (ESC-50, UrbanSound8K, a plain csv,
a folder per class), for tests and the probe benchmark: class k is a tone of its own pitch with
a band of noise around it, at a random level and phase, in light noise."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import soundfile as sf

# UrbanSound8K's files keep their uploads' formats: these rates, channel counts, subtypes and
# headers (WAVEX: WAVE_FORMAT_EXTENSIBLE, tag 65534) cycle.
URBANSOUND8K_FORMATS = (
  (44100, 2, "PCM_24", "WAVEX"),
  (48000, 1, "PCM_16", "WAV"),
  (22050, 1, "FLOAT", "WAV"),
  (96000, 2, "PCM_32", "WAV"),
)


def class_names(num_classes: int) -> list[str]:
  return [f"sound_{k}" for k in range(num_classes)]


def clip(label: int, seconds: float, rate: int, seed: int) -> np.ndarray:
  """One float32 clip of class `label` in [-1, 1]."""
  rng = np.random.default_rng([label, seed])
  t = np.arange(int(seconds * rate)) / rate
  pitch = 220.0 * 2 ** (label * 0.75)  # classes most of an octave apart
  tone = np.sin(2 * np.pi * pitch * t + rng.uniform(0, 2 * np.pi))
  band = np.convolve(rng.standard_normal(t.size), np.cos(2 * np.pi * pitch * np.arange(64) / rate), "same") / 8
  x = rng.uniform(0.2, 0.6) * (tone + 0.5 * band) + rng.normal(0, 0.01, t.size)
  return np.clip(x, -1, 1).astype(np.float32)


def write_esc50(
  root: str | os.PathLike, *, num_classes: int, clips_per_class: int, seconds: float = 5.0, rate: int = 44100
) -> Path:
  """ROOT/meta/esc50.csv and ROOT/audio/{fold}-{src}-{take}-{target}.wav, 5 folds, mono 16-bit."""
  root = Path(root)
  (root / "meta").mkdir(parents=True)
  (root / "audio").mkdir()
  rows = []
  for k, name in enumerate(class_names(num_classes)):
    for i in range(clips_per_class):
      fold, src = i % 5 + 1, 1000 * k + i
      filename = f"{fold}-{src}-A-{k}.wav"
      sf.write(root / "audio" / filename, clip(k, seconds, rate, i), rate, subtype="PCM_16")
      rows.append([filename, fold, k, name, "False", src, "A"])
  with open(root / "meta" / "esc50.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    writer.writerows(rows)
  return root


def write_urbansound8k(
  root: str | os.PathLike, *, num_classes: int, clips_per_class: int, num_folds: int = 10, seconds: float = 2.0
) -> Path:
  """ROOT/metadata/UrbanSound8K.csv and ROOT/audio/fold{n}/..., files in URBANSOUND8K_FORMATS in turn."""
  root = Path(root)
  (root / "metadata").mkdir(parents=True)
  rows = []
  for k, name in enumerate(class_names(num_classes)):
    for i in range(clips_per_class):
      fold = i % num_folds + 1
      rate, channels, subtype, header = URBANSOUND8K_FORMATS[(k + i) % len(URBANSOUND8K_FORMATS)]
      filename = f"{100 * k + i}-{k}-0-{i}.wav"
      folder = root / "audio" / f"fold{fold}"
      folder.mkdir(parents=True, exist_ok=True)
      samples = clip(k, seconds, rate, i)
      audio = np.stack([samples] * channels, axis=1) if channels > 1 else samples
      sf.write(folder / filename, audio, rate, subtype, format=header)
      rows.append([filename, 100 * k + i, 0.0, seconds, 1, fold, k, name])
  with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
    writer.writerows(rows)
  return root


def write_folders(
  root: str | os.PathLike, *, num_classes: int, clips_per_class: int, seconds: float = 1.0, rate: int = 16000
) -> Path:
  """ROOT/<label>/<take>/<clip>.flac: a folder per class, clips one folder further down."""
  root = Path(root)
  for k, name in enumerate(class_names(num_classes)):
    for i in range(clips_per_class):
      folder = root / name / f"take{i % 2}"
      folder.mkdir(parents=True, exist_ok=True)
      sf.write(folder / f"clip{i:03d}.flac", clip(k, seconds, rate, i), rate)
  return root


def write_plain_csv(root: str | os.PathLike, *, num_classes: int, clips_per_class: int, folds: int = 0) -> Path:
  """ROOT/clips.csv (`path,label[,fold]`) over a folder layout written under ROOT/files."""
  root = Path(root)
  files = write_folders(root / "files", num_classes=num_classes, clips_per_class=clips_per_class)
  table = root / "clips.csv"
  with open(table, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label"] + (["fold"] if folds else []))
    for i, path in enumerate(sorted(files.rglob("*.flac"))):
      label = path.relative_to(files).parts[0]
      writer.writerow([path.relative_to(root).as_posix(), label] + ([i % folds + 1] if folds else []))
  return table
